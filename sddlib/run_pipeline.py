"""The one path every training run takes: prepare -> train -> record (`train_and_record`).

Its three entry points: a model trained alone under the run's solver (`experiment.run_vanilla`), a teacher trained
here under its dataset's teacher protocol (`teacher_source.train_teacher`) and a distillation run
(`experiment.run`). Each goes through the same steps: the configuration's checks of the world
(`preflight.check_environment`), the trackers and the process group, the run folder's lock, an already complete
run returned as it is, the seed, the device, the loaders, (distillation: the teacher, evaluated), the model,
the resumable fit, and the record: rank 0 alone writes the weights, the figures and `metrics.json`; every process
returns the same numbers.
"""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from fastai.torch_core import set_seed

from . import console, distributed, tracking
from .checkpoints import DiskFullError, save_checkpoint, write_json
from .config import ConfigError, RunConfig
from .data import get_dataloaders
from .departures import PARAMS_DIR, YOUR_DATA, departures, describe, vanilla_departures
from .locks import run_lock
from .models import create_model
from .preflight import check_environment, run_warnings
from .run_models import load_run_models, loader_options, model_for
from .runs import load_metrics
from .training import RESUME_FILE, RunFailedError, build_learner, differences, distillation_callback, fit_resumable

__all__ = ["train_and_record", "evaluate", "alone_fingerprint"]

# The trained model's weights files, last and best epoch: a distillation run's student, a model trained alone.
_WEIGHTS = {True: ("student.pth", "student_best.pth"), False: ("model.pth", "model_best.pth")}


def train_and_record(cfg: RunConfig, out: Path, *, arch: str, variant: str, force: bool = False,
                     get_teacher: Callable | None = None, whole_batch: bool = True, callbacks=()) -> dict:
    """Train `arch` under `cfg` into the run folder `out` and return its metrics (those of the folder when it
    already holds this complete run, unless `force`). `get_teacher(cfg, dls) -> (teacher, source)` makes it a
    distillation run (`variant`: cfg.variant) of the student; without it `arch` trains alone with cross-entropy
    (`variant` "alone" or "teacher"). `whole_batch=False`: a batch larger than a small subset is accepted while an
    epoch still has one (`_dataloaders`). `callbacks`: more fastai callbacks of the fit (a tuner's pruning); one that
    cancels the fit leaves the run "stopped", never "complete" (`fit_resumable`)."""
    distilling = get_teacher is not None
    check_environment(cfg, teacher_needed=distilling)
    tracking.check(cfg.tracker)
    distributed.check(cfg, _device(cfg.device))
    cfg = _starting(cfg)
    fingerprint = cfg.fingerprint if distilling else alone_fingerprint(cfg, arch)
    with _run_folder(out):
        done = distributed.run_on_main(_complete, out, fingerprint, force)
        if done is not None:
            if distributed.is_main():
                console.say(f"{out} is complete; returning its metrics (force=True re-runs it); "
                            f"{describe(done.get('departures'))}")
            return done
        set_seed(cfg.seed, reproducible=True)
        device = _device(cfg.device)
        dls = _dataloaders(cfg, device, whole_batch)
        teacher = distill = None
        if distilling:
            teacher, teacher_source = get_teacher(cfg, dls)
            teacher_top1, teacher_top5 = evaluate(teacher, dls.valid, device)
            set_seed(cfg.seed, reproducible=True)
        model = _new_model(cfg, arch, dls.info.num_classes)
        if distilling:
            distill = distillation_callback(teacher, cfg)
        weights, best_weights = _WEIGHTS[distilling]
        with tracking.tracked(cfg.tracker, out, cfg.to_params()) as tracker:
            cbs = [cb for cb in (distill, tracker, *callbacks) if cb]
            learn = build_learner(dls, model, cfg, cbs=cbs)
            recorder = fit_resumable(learn, cfg, out, fingerprint, force, best_weights, distill)
            metrics = _summary(cfg, recorder.rows, name=out.name, variant=variant, arch=arch, fingerprint=fingerprint,
                               device=device)
            if distilling:
                metrics.update(teacher_top1=teacher_top1, teacher_top5=teacher_top5, teacher_source=teacher_source)
            else:
                metrics["protocol"] = cfg.solver
            metrics.update(_data_record(dls))
            _record_departures(metrics, *(departures(cfg, teacher_source) if distilling else
                                          vanilla_departures(cfg, arch)))
            metrics["wall_time_s"] = recorder.elapsed_s
            if not distributed.is_main():
                return metrics  # the same numbers; rank 0 writes them (and draws the figures alone)
            try:
                save_checkpoint(model, out / weights, epoch=cfg.epochs)
                if distilling and cfg.figures:
                    metrics["figures"] = _figures(cfg, out, teacher, model, dls, distill)
                write_json(out / "metrics.json", metrics)
            except DiskFullError as err:  # the resume checkpoint stays: the rerun records the run
                raise RunFailedError(f"{out.name}: {err.sentence}") from None
            (out / RESUME_FILE).unlink(missing_ok=True)
            if tracker:
                tracker.finish(metrics, [out / f for f in metrics.get("figures", [])])
    if distributed.is_main():   # shown even inside another run's quiet log (a teacher trained for a student)
        console.say(_summary_line(metrics, arch, out))
    return metrics


def _summary_line(metrics: dict, arch: str, out: Path) -> str:
    """The one line a notebook shows per run: what it is, last and best top-1, how its settings compare with the
    published protocol (settings, not numbers), and where its epoch lines are."""
    what = (f"{metrics['run_name']}" if metrics.get("teacher_top1") is not None else f"{arch} {metrics['variant']}")
    teacher = f", teacher {metrics['teacher_top1']:.2f}" if metrics.get("teacher_top1") is not None else ""
    found = metrics.get("departures")
    settings = ("settings as published" if found == {} else "no published settings to compare with (your data)"
                if found == YOUR_DATA else f"departs from the published settings: {describe(found)}")
    return (f"{what}: last top-1 {metrics['last_top1']:.2f}, best {metrics['best_top1']:.2f} (epoch "
            f"{metrics['best_epoch']}){teacher}; {settings}; log {out / console.LOG_FILE}")


def alone_fingerprint(cfg: RunConfig, arch: str) -> dict:
    """What decides the weights of `arch` trained alone under `cfg`'s solver."""
    # the data pipeline draws its own augmentation and bf16 rounds otherwise: either makes another run
    pretrained = {"pretrained": True} if arch == cfg.student and cfg.student_pretrained else {}
    keywords = {"model_kwargs": cfg.student_kwargs} if arch == cfg.student and cfg.student_kwargs else {}
    return {"arch": arch, "dataset": cfg.dataset, **cfg.solver, "pipeline": cfg.data_pipeline, **cfg.data_options,
            **pretrained, **keywords,
            **({"precision": cfg.precision} if cfg.precision != "fp32" else {})}


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


# --- prepare -------------------------------------------------------------------------------------------
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
                          **loader_options(cfg), **cfg.memory_options,
                          **({"tune_fraction": cfg.tune_fraction} if cfg.tune_fraction else {}))
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
    """The run folder's lock and its log file (rank 0; `sddlib.console`). A run refused inside it before writing
    anything (e.g. a batch larger than the data) leaves no folder behind."""
    created = not out.exists()
    try:
        with distributed.main_only(run_lock(out)), distributed.main_only(console.run_log(out)):
            yield
    except ConfigError:
        if created and distributed.is_main() and {p.name for p in out.iterdir()} <= {".lock", console.LOG_FILE}:
            shutil.rmtree(out)
        raise


def _starting(cfg: RunConfig) -> RunConfig:
    """The configuration on this process group, after its warnings are said (once, in the run's first lines)."""
    cfg = cfg.on_processes(distributed.world_size())
    if distributed.is_main():
        for warning in run_warnings(cfg):
            print(f"warning: {warning}", flush=True)
    return cfg


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


def _new_model(cfg: RunConfig, arch: str, num_classes: int) -> nn.Module:
    """`arch` to train; the run's student with its constructor keywords, and from its ImageNet weights when
    `student_pretrained` says so."""
    if arch != cfg.student:
        return create_model(arch, num_classes=num_classes, stem=cfg.stem)
    if not cfg.student_pretrained:
        return model_for(cfg, "student", num_classes)
    role = "teacher" if cfg.teacher == cfg.student else "student"  # a teacher is fine-tuned as its own student
    try:
        return model_for(cfg, "student", num_classes, pretrained=True, weights_file=cfg.student_weights_file,
                         weights_param=f"{role}_weights_file")
    except ValueError as err:  # ImageNet weights neither downloadable nor given: which file to put where
        raise ConfigError(str(err)) from None


# --- record ----------------------------------------------------------------------------------------------
def _data_record(dls) -> dict:
    """What a folder's loader decided (split, class counts, normalisation, skipped images), for metrics.json."""
    dls = distributed.whole(dls)  # on several processes: the loaders before sharding
    record = {"data": dls.folder} if hasattr(dls, "folder") else {}
    return {**record, "tune_split": dls.tune_split} if hasattr(dls, "tune_split") else record


def _record_departures(metrics: dict, published: Path | None, found: dict) -> None:
    """metrics.json says which published experiment the run is and how it departs from it (`sddlib.departures`)."""
    metrics["published_params"] = str(published.relative_to(PARAMS_DIR.parent)) if published else None
    metrics["departures"] = found


def _figures(cfg: RunConfig, out: Path, teacher, student, dls, distill) -> list[str]:
    """The run's region figures (rank 0), beside the plain-method student's when that run is complete."""
    from .viz import save_run_figures
    baseline = _baseline_student(cfg, dls.info.num_classes)
    return [str(f.relative_to(out)) for f in
            save_run_figures(teacher, student, distributed.whole(dls), cfg.scales, distill, out / "figures",
                             baseline_student=baseline, feature_figures=cfg.feature_figures)]


def _baseline_student(cfg: RunConfig, num_classes: int):
    """The plain-method (M=[1]) student of the same configuration, if that run is complete."""
    if not cfg.decoupled:
        return None
    base_dir = cfg.replace(M="[1]", run_name="").directory
    if load_metrics(base_dir / "metrics.json") is None:
        return None
    return load_run_models(base_dir, num_classes, cfg=cfg, role="baseline student")[0]


def _environment(device: torch.device) -> dict:
    """The machine, the versions and the commit; `hardware.gpu` is the GPU the run trained on (cuda:N's, not the
    first one's), None on a CPU."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    from importlib.metadata import version

    import fastai

    from . import __version__
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "gpu": gpu},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": version("torchvision"), "fastai": fastai.__version__,
                         "numpy": np.__version__, "sddlib": __version__},
            "git_commit": commit}


def _summary(cfg: RunConfig, rows: list[dict], name: str, variant: str, fingerprint: dict,
             device: torch.device, arch: str | None = None) -> dict:
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
        "params": cfg.to_params(), "fingerprint": fingerprint, "warnings": run_warnings(cfg), "history": rows,
        "wall_time_s": None,
        "distributed": distributed.describe(cfg), **_environment(device),
    }
