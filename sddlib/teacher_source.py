"""Where a run's teacher comes from (`get_teacher`): torchvision weights > a given checkpoint > the published
folder (`teachers_dir`) > the cache (same teacher protocol only) > shipped with sddlib (same protocol only) > the
published CIFAR-100 release > trained here (`train_teacher`, through the one run pipeline) and cached.

On a dataset whose paper rows use published teachers (CIFAR-100, CUB-200) a teacher is never trained here silently:
when none of the sources before it can be had, the run stops before any training with one sentence
(`missing_teacher`), unless `allow_teacher_training` says to train it. `teacher_origin` says the same from what is
on disk, without loading or downloading anything (what a plan shows before it runs).

(`sddlib/teachers/` is the folder of the shipped weights, `sddlib.shipped` and `checkpoints.shipped_teacher_path`
find them; this module decides among all the sources.)
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from . import console, distributed
from .checkpoints import (CIFAR100_RELEASE, CheckpointError, cifar100_teacher_path, fetch_cifar100_teachers,
                          load_checkpoint, read_checkpoint, shipped_teacher_path, teacher_cache_path,
                          write_checkpoint)
from .config import TEACHER_SEED, ConfigError, RunConfig
from .locks import run_lock
from .models import create_model, file_name
from .preflight import teacher_file_in
from .run_models import model_for, teacher_for_data, teacher_from_source
from .run_pipeline import train_and_record
from .training import differences

__all__ = ["TeacherMissingError", "get_teacher", "train_teacher", "teacher_run_dir", "teacher_origin",
           "missing_teacher", "fetch_published_teacher", "ORIGINS"]



class TeacherMissingError(ConfigError):
    """A published teacher (CIFAR-100, CUB-200) that nothing can give, and no permission to train one here."""


# Where a teacher comes from, in the words of a plan (`teacher_origin`).
ORIGINS = ("torchvision weights", "given checkpoint", "published file", "cache", "shipped", "published download",
           "trained here")


def teacher_run_dir(params) -> Path:
    """Where the configuration's teacher trained here (its dataset's teacher protocol) is recorded: a folder of its
    own, never the student-alone row of the same architecture (`experiment.vanilla_dir`), whose solver is the
    student's."""
    cfg = RunConfig.from_params(params)
    return Path(cfg.output_dir) / cfg.data_name / f"{file_name(cfg.teacher)}-teacher-seed{TEACHER_SEED}"


def get_teacher(params, dls) -> tuple[nn.Module, dict]:
    """The teacher for a run and where it came from: torchvision weights > given checkpoint > published
    folder (`teachers_dir`) > cache (same teacher protocol only) > shipped with sddlib (same protocol only) >
    published CIFAR-100 release > trained here (and cached). Under `normalize: model` it sees `dls`'s images
    renormalised to its own mean/std (`run_models.teacher_for_data`)."""
    cfg = RunConfig.from_params(params)
    teacher, source = _find_teacher(cfg, dls)
    if cfg.normalize == "model":
        teacher = teacher_for_data(cfg, teacher, (dls.info.mean, dls.info.std))
    return teacher, source


def _find_teacher(cfg: RunConfig, dls) -> tuple[nn.Module, dict]:
    if cfg.teacher_weights:
        source = {"source": "torchvision weights", "weights": cfg.teacher_weights}
        return teacher_from_source(cfg, source, dls.info.num_classes), source
    teacher = model_for(cfg, "teacher", dls.info.num_classes)
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
        if _published_only(cfg):
            try:
                return distributed.run_on_main(_published_teacher, cfg, teacher)
            except CheckpointError as err:
                if not cfg.allow_teacher_training:
                    raise TeacherMissingError(missing_teacher(cfg, str(err).rstrip("."))) from None
                print(f"published teacher {cfg.teacher} unavailable ({err}); training it here "
                      "(allow_teacher_training)", flush=True)
        train_teacher(cfg)
        return distributed.run_on_main(_cached_teacher, cfg, teacher)


def train_teacher(params) -> Path:
    """Train the configuration's teacher alone under the dataset's teacher protocol
    (`RunConfig.teacher_protocol`: the same for every student) and cache it with that protocol."""
    cfg = RunConfig.from_params(params)
    protocol = cfg.teacher_protocol
    cached = teacher_cache_path(cfg.output_dir, cfg.data_name, file_name(cfg.teacher))
    solver = ", ".join(f"{k} {protocol[k]}" for k in ("optimizer", "lr_schedule", "lr_warmup_epochs") if k in protocol)
    console.say(f"no checkpoint for teacher {cfg.teacher} on {cfg.data_name}: training it for {protocol['epochs']} "
                f"epochs (lr {protocol['lr']}, stages {protocol['lr_decay_stages']}{', ' + solver if solver else ''})")
    # on several processes all train it and rank 0 caches it; its batch is the protocol's, whatever the subset
    out = teacher_run_dir(cfg)
    metrics = train_and_record(cfg.teacher_training_config(), out, arch=cfg.teacher, variant="teacher",
                               whole_batch=False)
    distributed.run_on_main(_cache_teacher, out / "model.pth", cached, protocol, metrics["last_top1"])
    console.say(f"teacher cached at {cached} (top-1 {metrics['last_top1']:.2f})")
    return cached


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


def _published_only(cfg: RunConfig) -> bool:
    """The dataset's paper rows use published teachers (CIFAR-100, CUB-200): none is trained here unasked."""
    return cfg.data_spec.published_teacher == "published"


def fetch_published_teacher(cfg: RunConfig) -> Path:
    """The published checkpoint of the run's teacher in data_dir, downloaded when it can be (the CIFAR-100 release:
    one process downloads, the others wait); CheckpointError saying why it cannot be had otherwise."""
    refusal = _no_download(cfg)
    if refusal:
        raise CheckpointError(refusal)
    fetch_cifar100_teachers(cfg.data_dir)
    return cifar100_teacher_path(cfg.data_dir, cfg.teacher)


def _no_download(cfg: RunConfig) -> str | None:
    """Why the run's published teacher has no download (None: the CIFAR-100 release holds it)."""
    if cfg.dataset != "cifar100":
        return f"the published {cfg.data_spec.title} teachers have no download (the authors share them on a " \
               "file-sharing site)"
    if cfg.teacher not in CIFAR100_RELEASE:
        return f"the published CIFAR-100 release has no {cfg.teacher} (it holds {', '.join(CIFAR100_RELEASE)})"
    return None


def _published_teacher(cfg: RunConfig, model: nn.Module):
    path = fetch_published_teacher(cfg)
    return load_checkpoint(model, path, arch=cfg.teacher), {"source": "published", "path": str(path)}


def missing_teacher(cfg: RunConfig, why: str) -> str:
    """The one sentence of a published teacher that cannot be had (`why`: what the last place said)."""
    cache = teacher_cache_path(cfg.output_dir, cfg.data_name, file_name(cfg.teacher))
    return (f"teacher {cfg.teacher} for {cfg.data_spec.title} is nowhere to be had (no teacher_ckpt or teachers_dir "
            f"given, none cached at {cache}, and {why}); point teachers_dir at the authors' release (a folder "
            f"holding {cfg.teacher}_vanilla/{cfg.teacher}_best.pth) or set allow_teacher_training: true to train it "
            "here once, first (its runs then depart from the paper's teacher).")


def teacher_origin(params, unreachable: str | None = None) -> str:
    """Where the run's teacher will come from (one of ORIGINS), judged from the disk alone: nothing is loaded or
    downloaded. `unreachable`: why the published download failed, when it was tried. On CIFAR-100 and CUB-200 a
    teacher that only training could give, without `allow_teacher_training`, is one sentence (TeacherMissingError)."""
    cfg = RunConfig.from_params(params)
    if cfg.teacher_weights:
        return "torchvision weights"
    if cfg.teacher_ckpt:
        return "given checkpoint"
    if cfg.teachers_dir:
        teacher_file_in(cfg.teachers_dir, cfg.teacher)  # one sentence now when the folder lacks it
        return "published file"
    if teacher_cache_path(cfg.output_dir, cfg.data_name, file_name(cfg.teacher)).is_file():
        return "cache"
    shipped = shipped_teacher_path(cfg.dataset, cfg.teacher)
    if shipped.is_file() and (read_checkpoint(shipped, "teacher") or {}).get("protocol") == cfg.teacher_protocol:
        return "shipped"
    if not _published_only(cfg):
        return "trained here"
    if cfg.dataset == "cifar100" and cifar100_teacher_path(cfg.data_dir, cfg.teacher).is_file():
        return "published file"
    why = unreachable or _no_download(cfg)
    if why is None:
        return "published download"
    if cfg.allow_teacher_training:
        return "trained here"
    raise TeacherMissingError(missing_teacher(cfg, why.rstrip(".")))
