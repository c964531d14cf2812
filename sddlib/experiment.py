"""Run one experiment from its configuration (a papermill parameters cell or a params/ file):
check everything -> data -> teacher -> student -> fastai Learner with `DistillationCallback` ->
outputs/<dataset>/<run>/.

The training protocol is the authors' (mdistiller trainer): SGD with momentum 0.9, no dampening,
no Nesterov, L2 weight decay on every parameter (BN and biases included), the LR multiplied by
rate^k from epoch stage_k + 1 on (epochs counted from 1), gradient-norm clipping at 40, test top-1 and
top-5 after every epoch; both the best epoch (what papers report) and the last are recorded
(`sddlib.training`).

A run is never lost or faked: every epoch ends with an atomic resume checkpoint (weights, optimizer,
epoch, every RNG, the callbacks' history, best-so-far) and a rerun of the same configuration continues
from it with the numbers an uninterrupted run gives; a checkpoint of another configuration is never
continued silently; a non-finite loss stops the run and records it as failed; `metrics.json` says
"complete" only when the run is; one process at a time trains a run folder.
"""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from fastai.torch_core import set_seed

from . import distributed, tracking
from .checkpoints import (CheckpointError, cifar100_teacher_path, fetch_cifar100_teachers, load_checkpoint,
                          read_checkpoint, run_lock, save_checkpoint, shipped_teacher_path, teacher_cache_path,
                          write_checkpoint, write_json)
from .config import DEFAULTS, TEACHER_SEED, ConfigError, RunConfig, file_name, teacher_file_in
from .data import get_dataloaders
from .departures import PARAMS_DIR, departures, describe, vanilla_departures
from .models import create_model
from .runs import load_metrics
from .training import (RESUME_FILE, EpochLogger, RunFailedError, StepLR, build_learner, differences,
                       distillation_callback, fit_resumable, top5_accuracy)

__all__ = ["DEFAULTS", "RESUME_FILE", "RunConfig", "ConfigError", "RunFailedError",
           "resolve_params", "notebook_params", "run_name", "run_dir", "vanilla_dir", "teacher_run_dir", "load_metrics",
           "run",
           "run_vanilla",
           "train_teacher", "get_teacher", "build_learner", "evaluate", "StepLR", "EpochLogger", "top5_accuracy"]


# --- the configuration, as the notebooks see it -----------------------------------------------------
def resolve_params(params) -> dict:
    """The checked, filled-in parameters as a flat dict (what metrics.json records)."""
    return RunConfig.from_params(params).to_params()


def notebook_params(namespace: dict, **fixed) -> RunConfig:
    """The run configuration from a notebook's variables (its `parameters` cell), checked."""
    return RunConfig.from_params({**{k: namespace[k] for k in DEFAULTS if k in namespace}, **fixed})


def run_name(params) -> str:
    """e.g. `resnet32x4-ShuffleV1-sd_dkd-M124-seed0`; M=[1] runs are the plain baselines (`dkd`)."""
    return RunConfig.from_params(params).name


def run_dir(params) -> Path:
    return RunConfig.from_params(params).directory


def vanilla_dir(params, arch: str) -> Path:
    """Where `arch` trained alone (no teacher) under the run's own solver is recorded: the paper's "student" rows."""
    cfg = RunConfig.from_params(params)
    return Path(cfg.output_dir) / cfg.data_name / f"{file_name(arch)}-alone-seed{cfg.seed}"


def teacher_run_dir(params) -> Path:
    """Where the configuration's teacher trained here (its dataset's teacher protocol) is recorded: a folder of its
    own, never the student-alone row of the same architecture (`vanilla_dir`), whose solver is the student's."""
    cfg = RunConfig.from_params(params)
    return Path(cfg.output_dir) / cfg.data_name / f"{file_name(cfg.teacher)}-teacher-seed{TEACHER_SEED}"


def evaluate(model: nn.Module, dl, device) -> tuple[float, float]:
    """Top-1 and top-5 (percent) of `model` on a DataLoader."""
    model.eval().to(device)
    correct1 = correct5 = total = 0
    with torch.inference_mode():
        for x, y in dl:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top5[:, 0] == y).sum().item()
            correct5 += (top5 == y[:, None]).any(1).sum().item()
            total += y.numel()
    correct1, correct5, total = distributed.sum_over_shards(dl, correct1, correct5, total)
    return 100 * correct1 / max(total, 1), 100 * correct5 / max(total, 1)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dataloaders(cfg: RunConfig, device, whole_batch: bool = True):
    """The run's loaders; on several processes each holds its share of every batch (`sddlib.distributed`).
    A batch larger than the training set is refused here, once the data is known and before a teacher trains
    (`whole_batch=False`, for a teacher trained under its dataset's batch on a small subset: only when an epoch
    would have no batch at all)."""
    dls = get_dataloaders(cfg.dataset, cfg.data_dir, bs=cfg.batch_size, subset=cfg.subset,
                          num_workers=cfg.num_workers, seed=cfg.seed, device=device, pipeline=cfg.data_pipeline,
                          **cfg.data_options, **cfg.memory_options)
    if cfg.batch_size > dls.train.n and (whole_batch or not len(dls.train)):
        images = f"{dls.train.n} images{f' with subset={cfg.subset}' if cfg.subset else ''}"
        if not whole_batch:
            raise ConfigError(f"the teacher trained here takes the {cfg.dataset} protocol's batch_size="
                              f"{cfg.batch_size}, larger than its training set ({images}), so its epochs would have "
                              "no batch at all; give a teacher (teacher_ckpt or teachers_dir) or a larger subset.")
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the training set of {cfg.dataset} ({images}); "
                          f"use a batch_size of at most {dls.train.n}" + (", or a larger subset." if cfg.subset else "."))
    return distributed.shard_dataloaders(dls)


@contextlib.contextmanager
def _run_folder(out: Path):
    """The run folder's lock (rank 0). A run refused inside it before writing anything (e.g. a batch larger than
    the data) leaves no folder behind."""
    created = not out.exists()
    try:
        with distributed.main_only(run_lock(out)):
            yield
    except ConfigError:
        if created and distributed.is_main() and [p.name for p in out.iterdir()] == [".lock"]:
            shutil.rmtree(out)
        raise


def _starting(cfg: RunConfig) -> RunConfig:
    """The configuration on this process group, after its warnings are said (once, in the run's first lines)."""
    cfg = cfg.on_processes(distributed.world_size())
    if distributed.is_main():
        for warning in cfg.warnings:
            print(f"warning: {warning}", flush=True)
    return cfg


def _new_model(cfg: RunConfig, arch: str, num_classes: int) -> nn.Module:
    """`arch` to train; the run's student from its ImageNet weights when `student_pretrained` says so."""
    if not (arch == cfg.student and cfg.student_pretrained):
        return create_model(arch, num_classes=num_classes, stem=cfg.stem)
    role = "teacher" if cfg.teacher == cfg.student else "student"  # a teacher is fine-tuned as its own student
    try:
        return create_model(arch, num_classes=num_classes, stem=cfg.stem, pretrained=True,
                            weights_file=cfg.student_weights_file, weights_param=f"{role}_weights_file")
    except ValueError as err:  # ImageNet weights neither downloadable nor given: which file to put where
        raise ConfigError(str(err)) from None


def _data_record(dls) -> dict:
    """What a folder's loader decided (split, class counts, normalisation, skipped images), for metrics.json."""
    dls = distributed.whole(dls)  # on several processes: the loaders before sharding
    return {"data": dls.folder} if hasattr(dls, "folder") else {}


def _complete(out: Path, fingerprint: dict, force: bool) -> dict | None:
    """The run folder's complete metrics when they are of this configuration (and not forced)."""
    done = load_metrics(out / "metrics.json")
    if done is None or force:
        return None
    if done.get("fingerprint") not in (None, fingerprint):
        raise ConfigError(f"{out} holds a complete run of another configuration "
                          f"({differences(done['fingerprint'], fingerprint)}); run with force=True to replace "
                          "it, or give this configuration another run_name.")
    return done


# --- runs ------------------------------------------------------------------------------------------
def _vanilla_fingerprint(cfg: RunConfig, arch: str) -> dict:
    # the data pipeline draws its own augmentation and bf16 rounds otherwise: either makes another run
    pretrained = {"pretrained": True} if arch == cfg.student and cfg.student_pretrained else {}
    return {"arch": arch, "dataset": cfg.dataset, **cfg.solver, "pipeline": cfg.data_pipeline, **cfg.data_options,
            **pretrained,
            **({"precision": cfg.precision} if cfg.precision != "fp32" else {})}


def run_vanilla(params, arch: str | None = None, force: bool = False) -> dict:
    """Train `arch` (default: the student) alone with cross-entropy under the configuration's solver and
    record it like any run (`<arch>-alone-seed<s>`): the paper's "student" rows, and how missing
    teachers are made."""
    cfg = RunConfig.from_params(params)
    return _train_alone(cfg, arch or cfg.student, force)


def _train_alone(cfg: RunConfig, arch: str, force: bool, whole_batch: bool = True, out: Path | None = None,
                 variant: str = "alone") -> dict:
    """`run_vanilla`; a teacher trained for a run takes `whole_batch=False` (see `_dataloaders`), its own folder
    `out` and variant "teacher"."""
    out = out or vanilla_dir(cfg, arch)
    cfg.check_environment(teacher_needed=False)
    tracking.check(cfg.tracker)
    distributed.check(cfg, _device(cfg.device))
    cfg = _starting(cfg)
    fingerprint = _vanilla_fingerprint(cfg, arch)
    with _run_folder(out):
        done = distributed.run_on_main(_complete, out, fingerprint, force)
        if done is not None:
            return done
        set_seed(cfg.seed, reproducible=True)
        device = _device(cfg.device)
        dls = _dataloaders(cfg, device, whole_batch)
        model = _new_model(cfg, arch, dls.info.num_classes)
        with tracking.tracked(cfg.tracker, out, cfg.to_params()) as tracker:
            learn = build_learner(dls, model, cfg, cbs=[tracker] if tracker else [])
            recorder = fit_resumable(learn, cfg, out, fingerprint, force, "model_best.pth")
            metrics = _summary(cfg, recorder.rows, name=out.name, variant=variant, arch=arch, fingerprint=fingerprint)
            metrics["protocol"] = cfg.solver
            metrics.update(_data_record(dls))
            _record_departures(metrics, *vanilla_departures(cfg, arch))
            metrics["wall_time_s"] = recorder.elapsed_s
            distributed.run_on_main(_write_vanilla, model, out, cfg.epochs, metrics)  # the others wait for the files
            if tracker:
                tracker.finish(metrics)
    print(f"{arch} alone: best top-1 {metrics['best_top1']:.2f}, last {metrics['last_top1']:.2f}; "
          f"{describe(metrics.get('departures'))}", flush=True)
    return metrics


def train_teacher(params) -> Path:
    """Train the configuration's teacher alone under the dataset's teacher protocol
    (`RunConfig.teacher_protocol`: the same for every student) and cache it with that protocol."""
    cfg = RunConfig.from_params(params)
    protocol = cfg.teacher_protocol
    cached = teacher_cache_path(cfg.output_dir, cfg.data_name, file_name(cfg.teacher))
    print(f"no checkpoint for teacher {cfg.teacher} on {cfg.data_name}: training it for {protocol['epochs']} epochs "
          f"(lr {protocol['lr']}, stages {protocol['lr_decay_stages']})", flush=True)
    teacher_cfg = cfg.teacher_training_config()
    # on several processes all train it and rank 0 caches it; its batch is the protocol's, whatever the subset
    out = teacher_run_dir(cfg)
    metrics = _train_alone(teacher_cfg, cfg.teacher, force=False, whole_batch=False, out=out, variant="teacher")
    distributed.run_on_main(_cache_teacher, out / "model.pth", cached, protocol, metrics["last_top1"])
    print(f"teacher cached at {cached} (top-1 {metrics['last_top1']:.2f})", flush=True)
    return cached


def _write_vanilla(model: nn.Module, out: Path, epochs: int, metrics: dict) -> None:
    save_checkpoint(model, out / "model.pth", epoch=epochs)
    write_json(out / "metrics.json", metrics)
    (out / RESUME_FILE).unlink(missing_ok=True)


def _cache_teacher(trained: Path, cached: Path, protocol: dict, top1: float) -> None:
    state = read_checkpoint(trained, "teacher")
    write_checkpoint(cached, {"model": state["model"], "protocol": protocol, "top1": top1})


def _cached_teacher(cfg: RunConfig, model: nn.Module):
    """The cached teacher when it was trained under this configuration's teacher protocol."""
    cached = teacher_cache_path(cfg.output_dir, cfg.data_name, file_name(cfg.teacher))
    if not cached.is_file():
        return None
    saved = read_checkpoint(cached, "teacher")
    protocol = saved.get("protocol") if isinstance(saved, dict) else None
    if protocol != cfg.teacher_protocol:
        how = (f"another protocol ({differences(protocol, cfg.teacher_protocol)})" if isinstance(protocol, dict)
               else "no recorded protocol")
        raise CheckpointError(f"cached teacher {cached} was trained under {how}; delete it to train the teacher "
                              f"under this one, or set teacher_ckpt={str(cached)!r} to use it anyway.")
    return load_checkpoint(model, cached, arch=cfg.teacher), {"source": "trained here", "path": str(cached),
                                                              "protocol": protocol}


def _shipped_teacher(cfg: RunConfig, model: nn.Module):
    """The teacher shipped with sddlib for this dataset and architecture, when it was trained under this
    configuration's teacher protocol (any other protocol: None, and the teacher is trained here)."""
    path = shipped_teacher_path(cfg.dataset, cfg.teacher)
    if not path.is_file():
        return None
    saved = read_checkpoint(path, "teacher")
    if not isinstance(saved, dict) or saved.get("protocol") != cfg.teacher_protocol:
        return None
    return load_checkpoint(model, path, arch=cfg.teacher), {"source": "shipped", "path": str(path),
                                                            "protocol": saved["protocol"]}


def _published_cifar100_teacher(cfg: RunConfig, model: nn.Module):
    fetch_cifar100_teachers(cfg.data_dir)
    path = cifar100_teacher_path(cfg.data_dir, cfg.teacher)
    return load_checkpoint(model, path, arch=cfg.teacher), {"source": "published", "path": str(path)}


def get_teacher(params, dls) -> tuple[nn.Module, dict]:
    """The teacher for a run and where it came from: torchvision weights > given checkpoint > published
    folder (`teachers_dir`) > cache (same teacher protocol only) > shipped with sddlib (same protocol only) >
    published CIFAR-100 release > trained here (and cached)."""
    cfg = RunConfig.from_params(params)
    if cfg.teacher_weights:
        model = create_model(cfg.teacher, num_classes=dls.info.num_classes, stem=cfg.stem, weights=cfg.teacher_weights)
        return model, {"source": "torchvision weights", "weights": cfg.teacher_weights}
    teacher = create_model(cfg.teacher, num_classes=dls.info.num_classes, stem=cfg.stem)
    if cfg.teacher_ckpt:
        return load_checkpoint(teacher, cfg.teacher_ckpt, arch=cfg.teacher), {"source": "checkpoint",
                                                                               "path": cfg.teacher_ckpt}
    if cfg.teachers_dir:
        path = teacher_file_in(cfg.teachers_dir, cfg.teacher)
        return load_checkpoint(teacher, path, arch=cfg.teacher), {"source": "published", "path": str(path)}
    cache_dir = teacher_cache_path(cfg.output_dir, cfg.data_name, file_name(cfg.teacher)).parent
    # one run trains it, the others wait; the processes of one run read it on rank 0, which hands it to the others
    with distributed.main_only(run_lock(cache_dir, wait=True, name=f".{cfg.teacher}.lock")):
        found = distributed.run_on_main(_cached_teacher, cfg, teacher)
        if found is None:
            found = distributed.run_on_main(_shipped_teacher, cfg, teacher)
        if found is not None:
            return found
        if cfg.dataset == "cifar100" and not cfg.subset:
            try:
                return distributed.run_on_main(_published_cifar100_teacher, cfg, teacher)
            except CheckpointError as err:
                print(f"published teacher unavailable ({err}); training one instead", flush=True)
        train_teacher(cfg)
        return distributed.run_on_main(_cached_teacher, cfg, teacher)


def _environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    from importlib.metadata import version

    import fastai

    from . import __version__
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "gpu": gpu},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": version("torchvision"), "fastai": fastai.__version__,
                         "numpy": np.__version__, "sddlib": __version__},
            "git_commit": commit}


def _summary(cfg: RunConfig, rows: list[dict], name: str, variant: str, fingerprint: dict,
             arch: str | None = None) -> dict:
    """The metrics.json body shared by distillation and vanilla runs."""
    best = max(rows, key=lambda r: r["top1"])
    alone = variant in ("alone", "teacher")
    return {
        "status": "complete", "run_name": name,
        "dataset": cfg.data_name, "teacher": None if alone else cfg.teacher,
        "student": arch if alone else cfg.student, "method": None if alone else cfg.method,
        "scales": None if alone else list(cfg.scales), "sd": False if alone else cfg.decoupled,
        "variant": variant, "seed": cfg.seed,
        "best_top1": best["top1"], "best_top5": best["top5"], "best_epoch": best["epoch"],
        "last_top1": rows[-1]["top1"], "last_top5": rows[-1]["top5"],
        "teacher_top1": None, "teacher_top5": None,
        "params": cfg.to_params(), "fingerprint": fingerprint, "warnings": cfg.warnings, "history": rows,
        "wall_time_s": None,
        "distributed": distributed.describe(cfg), **_environment(),
    }


def run(params, force: bool = False) -> dict:
    """Train one student as `params` say and write outputs/<dataset>/<run>/; return its metrics.

    Everything is checked first (`RunConfig`, then the dataset folder, the output folder and a given
    teacher checkpoint). A run whose metrics.json is complete is returned as it is, and an interrupted
    run continues from its last completed epoch; `force=True` starts it over.
    """
    cfg = RunConfig.from_params(params)
    cfg.check_environment()
    tracking.check(cfg.tracker)
    distributed.check(cfg, _device(cfg.device))
    cfg = _starting(cfg)
    out, fingerprint = cfg.directory, cfg.fingerprint
    with _run_folder(out):
        done = distributed.run_on_main(_complete, out, fingerprint, force)
        if done is not None:
            print(f"{out} is complete; returning its metrics (force=True re-runs it); "
                  f"{describe(done.get('departures'))}", flush=True)
            return done
        set_seed(cfg.seed, reproducible=True)
        device = _device(cfg.device)
        dls = _dataloaders(cfg, device)
        teacher, teacher_source = get_teacher(cfg, dls)
        teacher_top1, teacher_top5 = evaluate(teacher, dls.valid, device)
        set_seed(cfg.seed, reproducible=True)
        student = _new_model(cfg, cfg.student, dls.info.num_classes)
        distill = distillation_callback(teacher, cfg)
        with tracking.tracked(cfg.tracker, out, cfg.to_params()) as tracker:
            learn = build_learner(dls, student, cfg, cbs=[distill, *([tracker] if tracker else [])])
            recorder = fit_resumable(learn, cfg, out, fingerprint, force, "student_best.pth", distill)
            metrics = _summary(cfg, recorder.rows, name=cfg.name, variant=cfg.variant, fingerprint=fingerprint)
            metrics.update(teacher_top1=teacher_top1, teacher_top5=teacher_top5, teacher_source=teacher_source,
                           **_data_record(dls))
            _record_departures(metrics, *departures(cfg, teacher_source))
            if not distributed.is_main():
                return metrics  # the same numbers; rank 0 writes them (and draws the figures alone)
            save_checkpoint(student, out / "student.pth", epoch=cfg.epochs)
            if cfg.figures:
                from .viz import save_run_figures
                baseline = _baseline_student(cfg, dls.info.num_classes)
                metrics["figures"] = [str(f.relative_to(out)) for f in
                                      save_run_figures(teacher, student, distributed.whole(dls), cfg.scales, distill,
                                                       out / "figures", baseline_student=baseline,
                                                       feature_figures=cfg.feature_figures)]
            metrics["wall_time_s"] = recorder.elapsed_s
            write_json(out / "metrics.json", metrics)
            (out / RESUME_FILE).unlink(missing_ok=True)
            if tracker:
                tracker.finish(metrics, [out / f for f in metrics.get("figures", [])])
    print(f"{metrics['run_name']}: best top-1 {metrics['best_top1']:.2f} (epoch {metrics['best_epoch']}), "
          f"last {metrics['last_top1']:.2f}, teacher {metrics['teacher_top1']:.2f}; "
          f"{describe(metrics.get('departures'))}", flush=True)
    return metrics


def _record_departures(metrics: dict, published: Path | None, found: dict) -> None:
    """metrics.json says which published experiment the run is and how it departs from it (`sddlib.departures`)."""
    metrics["published_params"] = str(published.relative_to(PARAMS_DIR.parent)) if published else None
    metrics["departures"] = found


def _baseline_student(cfg: RunConfig, num_classes: int):
    """The plain-method (M=[1]) student of the same configuration, if that run is complete."""
    if not cfg.decoupled:
        return None
    base_dir = cfg.replace(M="[1]", run_name="").directory
    if load_metrics(base_dir / "metrics.json") is None:
        return None
    model = create_model(cfg.student, num_classes=num_classes, stem=cfg.stem)
    return load_checkpoint(model, base_dir / "student.pth", arch=cfg.student, role="baseline student")
