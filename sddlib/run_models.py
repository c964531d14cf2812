"""The models of a run, built one way for every reader: its teacher and student from their names, the data's stem
and their constructor keywords (`model_for`); what each sees of the images under `normalize: model` (`input_stats`,
`loader_options`, `teacher_for_data`); and the models of a finished run (the region figures and the explorer's file,
the plain-method baseline of a figure, the export): its student (`student.pth`, or another weights file of the run)
and, where the run had one, the teacher its `metrics.json` records in `teacher_source`."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .checkpoints import load_checkpoint
from .config import RunConfig
from .data import IMAGENET_MEAN, IMAGENET_STD
from .models import Renormalized, create_model, is_external, pretrained_mean_std
from .runs import load_metrics

__all__ = ["model_for", "input_stats", "loader_options", "teacher_for_data", "load_run_models", "teacher_from_source"]


def model_for(cfg: RunConfig, role: str, num_classes: int, **extra) -> nn.Module:
    """The run's `role` ('teacher' or 'student') for `num_classes`: its name on the data's stem, with its constructor
    keywords (`teacher_kwargs`, `student_kwargs`) and `extra` ones (weights, pretrained)."""
    return create_model(cfg[role], num_classes=num_classes, stem=cfg.stem, **cfg[f"{role}_kwargs"], **extra)


def input_stats(cfg: RunConfig, arch: str, pretrained: bool) -> tuple | None:
    """(mean, std) the model `arch` sees under `normalize: model`: those its ImageNet weights were trained with when
    it starts from them (`pretrained`), else ImageNet's; None under any other normalisation (the loader's, for
    every model)."""
    if cfg.normalize != "model":
        return None
    return pretrained_mean_std(arch) if pretrained and is_external(arch) else (IMAGENET_MEAN, IMAGENET_STD)


def loader_options(cfg: RunConfig) -> dict:
    """The keywords of the run's loader beyond the common ones: the dataset's options and, under `normalize:
    model`, the mean/std of the model it trains (the student; a teacher trained here is its own student)."""
    stats = input_stats(cfg, cfg.student, cfg.student_pretrained)
    return {**cfg.data_options, **({"model_stats": stats} if stats else {})}


def teacher_for_data(cfg: RunConfig, teacher: nn.Module, data_stats) -> nn.Module:
    """The teacher fed the loaders' images (normalised with `data_stats`, the student's) as it was trained to see
    them: under `normalize: model`, wrapped to renormalise them to its own mean/std when those differ."""
    stats = input_stats(cfg, cfg.teacher, cfg.teacher_pretrained)
    if stats is None or all(abs(a - b) < 1e-7 for ours, theirs in zip(stats, data_stats)
                            for a, b in zip(ours, theirs)):
        return teacher
    return Renormalized(teacher, data_stats, stats)


def teacher_from_source(cfg: RunConfig, source: dict, num_classes: int) -> nn.Module:
    """The teacher a `teacher_source` record names: torchvision weights by name, or a checkpoint file."""
    if source.get("source") == "torchvision weights":
        return model_for(cfg, "teacher", num_classes, weights=source["weights"])
    return load_checkpoint(model_for(cfg, "teacher", num_classes), source["path"], arch=cfg.teacher, role="teacher")


def load_run_models(run_dir, num_classes: int, *, cfg: RunConfig | None = None, weights: str = "student.pth",
                    role: str = "student", with_teacher: bool = False) -> tuple[nn.Module, nn.Module | None]:
    """(student, teacher) of the finished run in `run_dir`, with `num_classes`-way heads: the student from the run's
    `weights` file (`role` names it in errors), the teacher (`with_teacher=True`; else None) from the run's recorded
    source, seeing the run's loaders' images as it did in the run. `cfg`: the run's configuration when the caller has
    it (else read from its metrics.json)."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir / "metrics.json") if cfg is None or with_teacher else None
    cfg = cfg or RunConfig.from_params(metrics["params"])
    teacher = None
    if with_teacher:
        data_stats = input_stats(cfg, cfg.student, cfg.student_pretrained)
        teacher = teacher_from_source(cfg, metrics["teacher_source"], num_classes)
        teacher = teacher_for_data(cfg, teacher, data_stats) if data_stats else teacher
    student = load_checkpoint(model_for(cfg, "student", num_classes), run_dir / weights, arch=cfg.student, role=role)
    return student, teacher
