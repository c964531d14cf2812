"""The models of a finished run, loaded one way for every reader (the region figures and the explorer's file, the
plain-method baseline of a figure, the export): its student (`student.pth`, or another weights file of the run)
and, where the run had one, the teacher its `metrics.json` records in `teacher_source`."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .checkpoints import load_checkpoint
from .config import RunConfig
from .models import create_model
from .runs import load_metrics

__all__ = ["load_run_models", "teacher_from_source"]


def teacher_from_source(cfg: RunConfig, source: dict, num_classes: int) -> nn.Module:
    """The teacher a `teacher_source` record names: torchvision weights by name, or a checkpoint file."""
    if source.get("source") == "torchvision weights":
        return create_model(cfg.teacher, num_classes=num_classes, stem=cfg.stem, weights=source["weights"])
    return load_checkpoint(create_model(cfg.teacher, num_classes=num_classes, stem=cfg.stem), source["path"],
                           arch=cfg.teacher, role="teacher")


def load_run_models(run_dir, num_classes: int, *, cfg: RunConfig | None = None, weights: str = "student.pth",
                    role: str = "student", with_teacher: bool = False) -> tuple[nn.Module, nn.Module | None]:
    """(student, teacher) of the finished run in `run_dir`, with `num_classes`-way heads: the student from the run's
    `weights` file (`role` names it in errors), the teacher (`with_teacher=True`; else None) from the run's recorded
    source. `cfg`: the run's configuration when the caller has it (else read from its metrics.json)."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir / "metrics.json") if cfg is None or with_teacher else None
    cfg = cfg or RunConfig.from_params(metrics["params"])
    teacher = teacher_from_source(cfg, metrics["teacher_source"], num_classes) if with_teacher else None
    student = load_checkpoint(create_model(cfg.student, num_classes=num_classes, stem=cfg.stem), run_dir / weights,
                              arch=cfg.student, role=role)
    return student, teacher
