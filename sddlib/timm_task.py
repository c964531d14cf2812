"""Scale-decoupled distillation as a timm training task, for people who train with timm or a plain PyTorch loop.

`ScaleDecoupledDistillationTask` has the shape of timm's `timm.task.LogitDistillationTask`: built from a student and
a teacher (a timm model name, a module, or timm's `DistillationTeacher`, which renormalises the input when the
teacher was trained with another mean and std), `forward(input, target)` returns timm's dict (`loss`, `output`,
`task_loss`, `kd_loss`), `prepare_distributed` wraps only the student in DDP and `compile` compiles the student's and
the teacher's forward passes. What it adds is SD with any registered loss (`sddlib.losses`): the loss of one batch is
computed by the same functions as `sddlib.distill.DistillationCallback` (`resolve_recipe`, `distillation_term`,
`warmup_factor`), so a timm loop and a fastai run of the same parameters train on the same loss, and the returned
dict also carries the share of regions in each teacher category per scale (`"consistent_right@2"`, ...).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.task import DistillationTeacher, TrainingTask
from timm.task.classification import resolve_classification_loss
from timm.utils import unwrap_model

from .distill import category_counts, category_shares, distillation_term, resolve_recipe, warmup_factor
from .regions import ScaleDecoupled, model_num_classes, parse_scales

__all__ = ["ScaleDecoupledDistillationTask", "ScaleDecoupledStudent"]


class ScaleDecoupledStudent(ScaleDecoupled):
    """The trainable part of the task: the student's forward returning `(logits, region_logits)`, one module so
    that DDP wraps (and synchronises) exactly the student. Weight-decay exclusions and layer groups are the
    student's own, under the prefix `model.` (timm's optimizer factory reads them)."""

    def no_weight_decay(self) -> set[str]:
        names = getattr(self.model, "no_weight_decay", None)
        return {f"model.{n}" for n in names()} if names else set()

    def group_matcher(self, coarse: bool = False):
        matcher = getattr(self.model, "group_matcher", None)
        if matcher is None:
            return {}
        from timm.models import group_parameters
        layer_of = group_parameters(self.model, matcher(coarse=coarse), reverse=True)
        last = max(layer_of.values(), default=0)
        return lambda name: layer_of.get(name.removeprefix("model."), last)


class ScaleDecoupledDistillationTask(TrainingTask):
    """Distil `teacher_model` into `student_model` with `method` at scales `M` (SD; `M="[1]"` is the plain method).

    With only the two models, the loss is the method's registered recipe, the one a run of sddlib with these
    parameters trains on: its CE and distillation weights, warm-up, hyper-parameters (`T`, `alpha`, `beta`, ...:
    pass any by its registered name) and `complementary_weight` 2. `task_loss_weight` and `distill_loss_weight`
    (timm's names) replace the CE and distillation weights one by one. The warm-up multiplies the distillation term
    by min(epoch / warmup_epochs, 1), epochs counted from 1: call `set_epoch(epoch)` (from 0, as with a
    DistributedSampler) at the start of every epoch. The teacher gets the student's input, renormalised by timm's
    `DistillationTeacher` when both carry a timm `pretrained_cfg` with different mean and std; the teacher is frozen
    (evaluation mode, no gradients).
    """

    def __init__(self, student_model: nn.Module, teacher_model: str | nn.Module | DistillationTeacher,
                 method: str = "kd", M="[1,2,4]", *, criterion=None, criterion_kwargs: dict | None = None,
                 teacher_pretrained_path: str | None = None, teacher_pretrained_cfg_overlay: dict | None = None,
                 task_loss_weight: float | None = None, distill_loss_weight: float | None = None,
                 warmup_epochs: float | None = None, complementary_weight: float = 2.0,
                 logit_standardization: bool = False, device: torch.device | None = None,
                 dtype: torch.dtype | None = None, verbose: bool = True, **loss_kwargs: Any):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        recipe = resolve_recipe(method, ce_weight=task_loss_weight, kd_weight=distill_loss_weight,
                                warmup_epochs=warmup_epochs, logit_standardization=logit_standardization,
                                **loss_kwargs)
        self.method, self.scales = method, parse_scales(M)
        self.task_loss_weight, self.distill_loss_weight = recipe["ce_weight"], recipe["kd_weight"]
        self.warmup_epochs, self.loss_kwargs = recipe["warmup_epochs"], recipe["loss_kwargs"]
        self.complementary_weight, self.logit_standardization = complementary_weight, logit_standardization
        self.epoch = 0
        self.teacher = self._teacher(teacher_model, student_model, teacher_pretrained_path,
                                     teacher_pretrained_cfg_overlay)
        self.teacher.requires_grad_(False)   # frozen, as in sddlib's callback: no optimizer can pick it up
        n_s, n_t = model_num_classes(student_model), model_num_classes(self.teacher.model)
        if n_s is not None and n_t is not None and n_s != n_t:
            raise ValueError(f"the teacher predicts {n_t} classes but the student {n_s}; "
                             "distil between models built for the same classes.")
        self.trainable_module = ScaleDecoupledStudent(student_model, self.scales)
        self.criterion = resolve_classification_loss(criterion, self.device, criterion_kwargs=criterion_kwargs)
        # the teacher's SD forward, kept out of the module tree (its parameters are the teacher's own)
        self.__dict__["teacher_regions"] = ScaleDecoupled(self.teacher.model, self.scales)
        cfg = getattr(unwrap_model(student_model), "pretrained_cfg", None) or {}
        for name in ("mean", "std"):   # None: no timm normalisation known, the teacher takes the input as it is
            value = torch.tensor(cfg[name], device=self.device, dtype=self.dtype).view(1, -1, 1, 1) \
                if name in cfg else None
            self.register_buffer(f"student_{name}", value, persistent=False)

    def _teacher(self, teacher, student, pretrained_path, cfg_overlay) -> DistillationTeacher:
        if isinstance(teacher, DistillationTeacher):
            return teacher
        if isinstance(teacher, str):
            num_classes = model_num_classes(student)
            if num_classes is None:
                raise ValueError(f"the number of classes of the student {type(student).__name__} is unknown, so "
                                 f"teacher {teacher!r} cannot be built for it; pass the teacher as a module.")
            return DistillationTeacher(teacher, num_classes=num_classes, in_chans=getattr(student, "in_chans", 3),
                                       pretrained_path=pretrained_path, pretrained_cfg_overlay=cfg_overlay,
                                       device=self.device, dtype=self.dtype)
        return DistillationTeacher(teacher, device=self.device, dtype=self.dtype)

    def set_epoch(self, epoch: int) -> None:
        """The epoch about to be trained, from 0; sets the warm-up factor of the distillation term."""
        self.epoch = epoch

    @property
    def warmup_factor(self) -> float:
        return warmup_factor(self.epoch + 1, self.warmup_epochs)

    def train(self, mode: bool = True) -> ScaleDecoupledDistillationTask:
        """Train the student; the teacher stays in evaluation mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def prepare_distributed(self, device_ids: list | None = None, **ddp_kwargs) -> ScaleDecoupledDistillationTask:
        """Wrap the student (with its SD forward) in DistributedDataParallel; the frozen teacher is not wrapped."""
        from torch.nn.parallel import DistributedDataParallel
        self.trainable_module = DistributedDataParallel(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = "inductor", mode: str | None = None, **compile_kwargs) -> nn.Module:
        """Compile the student's SD forward, its plain forward for evaluation, and the teacher's SD forward;
        returns the compiled evaluation model (the student's logits)."""
        self.eval_model = torch.compile(self.student, backend=backend, mode=mode, **compile_kwargs)
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.__dict__["teacher_regions"] = torch.compile(self.teacher_regions, backend=backend, mode=mode,
                                                         **compile_kwargs)
        return self.eval_model

    @property
    def student(self) -> nn.Module:
        """The student itself (no DDP, compile or SD wrapper)."""
        return unwrap_model(self.trainable_module).model

    def get_eval_model(self, module: nn.Module | None = None, ema: bool = False) -> nn.Module | None:
        """The plain student (logits only) for validation and checkpoints, as timm's train script expects."""
        resolved = super().get_eval_model(module=module, ema=ema)
        inner = unwrap_model(resolved) if resolved is not None else None
        return inner.model if isinstance(inner, ScaleDecoupledStudent) else resolved

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training batch: `loss` (to backpropagate), `output` (the student's logits), `task_loss` (CE),
        `kd_loss` (the distillation term before its weight and warm-up) and the region shares per scale."""
        student_logits, student_regions = self.trainable_module(input)
        task_loss = self.criterion(student_logits, target)
        with torch.no_grad():
            input_kd = self.teacher.normalize_input(input, self.student_mean, self.student_std)
            teacher_logits, teacher_regions = self.teacher_regions(input_kd.detach())
        kd_loss, masks = distillation_term(
            self.method, self.scales, student_logits, student_regions, teacher_logits, teacher_regions, target,
            complementary_weight=self.complementary_weight, logit_standardization=self.logit_standardization,
            loss_kwargs=self.loss_kwargs)
        loss = self.task_loss_weight * task_loss + self.warmup_factor * self.distill_loss_weight * kd_loss
        return {"loss": loss, "output": student_logits, "task_loss": task_loss, "kd_loss": kd_loss,
                **category_shares(category_counts(masks), self.scales)}
