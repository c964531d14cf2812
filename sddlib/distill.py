"""fastai callback that turns a plain `Learner(dls, student, loss_func=CrossEntropy)` into (SD-)KD,
(SD-)DKD, (SD-)NKD or the (SD-) distillation of any registered logit loss (`sddlib.losses.register_loss`).

During `fit` the Learner's own forward call of each batch goes through the student's scale-decoupled
forward (`ScaleDecoupled`), so one student pass yields both its logits and its region logits. That
forward is installed for one call only (the Learner's call on this batch's input) and removes itself
whatever happens inside it, so any other call of the student, and everything after `fit` however it
ended (Ctrl-C, an exception, a cancel), gets its plain forward: the student's state dict,
`learn.save/load` and `learn.validate()` are untouched.
A non-finite CE or distillation term stops the fit (`NonFiniteLossError`, naming epoch, batch and term);
the authors' code silently replaced such losses by zero.
Validation always scores the student's plain logits, so fastai metrics work unchanged.

Nothing here reads a tensor's value on the host during a training step, so a GPU never waits for
Python: the loss terms and region counts accumulate on the device, and their values are read once every
`FINITE_CHECK_EVERY` batches (the finiteness check, which still names the first bad batch) and once at the
end of the epoch (the history row).
"""
from __future__ import annotations

import types

import pandas as pd
import torch
import torch.nn as nn
from fastai.callback.core import Callback

from .config import METHODS
from .losses import RegionMasks, logit_loss, region_masks, sdd_loss
from .regions import (CATEGORIES, COMPLEMENTARY_WEIGHT, PAPER_SCALES, ScaleDecoupled, model_num_classes,
                      parse_scales)

__all__ = ["CATEGORIES", "FINITE_CHECK_EVERY", "DistillationCallback", "LossWatch", "NonFiniteLossError",
           "category_counts", "category_shares", "distillation_term", "resolve_recipe", "warmup_factor"]



def warmup_factor(epoch: int, warmup_epochs: float) -> float:
    """min(epoch / warm-up, 1) with epochs counted from 1, as the authors' trainer does."""
    return 1.0 if not warmup_epochs else min(epoch / warmup_epochs, 1.0)


def resolve_recipe(method: str, *, ce_weight=None, kd_weight=None, warmup_epochs=None,
                   logit_standardization: bool = False, **loss_kwargs) -> dict:
    """`ce_weight`, `kd_weight`, `warmup_epochs` and `loss_kwargs` of a distillation with `method`: the method's
    registered recipe (with `logit_standardization`, its standardized one), overridden by what is given. Shared by
    the fastai callback and the timm task, so both train on the same loss."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is unknown; use one of {sorted(METHODS)}.")
    spec = METHODS[method]
    unknown = sorted(set(loss_kwargs) - set(spec.loss_keys))
    if unknown:
        raise ValueError(f"{method} takes no {unknown[0]!r}; its loss takes {', '.join(spec.loss_keys) or 'none'}.")
    recipe = spec.recipe(logit_standardization)
    return {"ce_weight": recipe["ce_weight"] if ce_weight is None else ce_weight,
            "kd_weight": recipe["kd_weight"] if kd_weight is None else kd_weight,
            "warmup_epochs": recipe["warmup_epochs"] if warmup_epochs is None else warmup_epochs,
            "loss_kwargs": {**{k: recipe[k] for k in spec.loss_keys}, **loss_kwargs}}


def distillation_term(method: str, scales: tuple[int, ...], student_logits: torch.Tensor,
                      student_regions: torch.Tensor, teacher_logits: torch.Tensor, teacher_regions: torch.Tensor,
                      target: torch.Tensor, *, complementary_weight: float, logit_standardization: bool,
                      loss_kwargs: dict) -> tuple[torch.Tensor, RegionMasks]:
    """The distillation loss of one batch (unweighted, before warm-up) and the teacher's region masks: the SD loss
    over every region when `scales` decouple, else `method` on the models' own logits (M=[1], the plain method)."""
    masks = region_masks(teacher_regions, target)
    if scales != (1,):
        distill = sdd_loss(student_regions, teacher_regions, target, base=method,
                           complementary_weight=complementary_weight, masks=masks,
                           logit_standardization=logit_standardization, **loss_kwargs)
    else:
        distill = logit_loss(method, student_logits, teacher_logits, target,
                             logit_standardization=logit_standardization, **loss_kwargs)
    return distill, masks


def category_counts(masks: RegionMasks) -> torch.Tensor:
    """How many samples of the batch fall in each category at each region position: 4 x N, `CATEGORIES` order."""
    return torch.stack([m.sum(0) for m in masks])


def category_shares(counts: torch.Tensor, scales: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """`{"<category>@<scale>": share}` from 4 x N region counts: within each scale the four shares sum to 1.
    The values stay tensors on the counts' device, computed without a host sync (read them when you log them)."""
    shares, start = {}, 0
    for s in scales:   # a scale's regions are contiguous, in the library's region order
        per_category = counts[:, start:start + s * s].sum(1).float()
        per_category = per_category / per_category.sum().clamp(min=1)
        shares.update({f"{name}@{s}": v for name, v in zip(CATEGORIES, per_category)})
        start += s * s
    return shares


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; `sentence` says where (fastai prefixes the message itself)."""

    def __init__(self, sentence: str):
        super().__init__(sentence)
        self.sentence = sentence


# How often the per-batch loss values are read on the host (one read covers all the batches since the last).
FINITE_CHECK_EVERY = 50


class LossWatch:
    """Per-batch loss terms of one training epoch, kept on the device.

    `add` stores a batch's terms without reading them; `check` reads every term stored since the last check
    once and raises `NonFiniteLossError` naming the first non-finite one (epochs and batches from 1);
    `means` is the epoch's mean of each term."""

    def __init__(self, terms: tuple[str, ...]):
        self.terms, self.rows, self.checked = terms, [], 0

    def add(self, *values: torch.Tensor) -> None:
        self.rows.append(torch.stack([v.detach().float().reshape(()) for v in values]))

    def check(self, epoch: int, n_batches: int) -> None:
        if self.checked == len(self.rows):
            return
        new = torch.stack(self.rows[self.checked:])
        bad = ~torch.isfinite(new)
        if bool(bad.any()):
            row, column = bad.nonzero()[0].tolist()
            raise NonFiniteLossError(
                f"epoch {epoch}, batch {self.checked + row + 1} of {n_batches}: the {self.terms[column]} loss is "
                f"{new[row, column].item()}; the run stopped and is recorded as failed (lower lr, or check the "
                "loss weights and T).")
        self.checked = len(self.rows)

    def means(self) -> list[float]:
        return torch.stack(self.rows).mean(0).tolist() if self.rows else [0.0] * len(self.terms)


class DistillationCallback(Callback):
    """Distil `teacher` into the Learner's model with `method` ("kd", "dkd", "nkd" or a registered loss) at `scales`.

    scales=(1,) is the plain method; (1, 2) and (1, 2, 4) the paper's scale-decoupled ones, and any other
    increasing list from 1 decouples at those grids (`sddlib.regions.pool_regions`). Loss weights,
    warm-up and loss hyper-parameters default to the authors' values for `method` (with
    `logit_standardization`, the logit-standardization authors' recipe); pass any of `ce_weight`, `kd_weight`,
    `warmup_epochs`, `complementary_weight` or the base loss's keyword arguments (`T`, `alpha`, `beta`,
    `gamma`, `exclude_target`, a registered loss's own) to override them.

    After every training epoch `history` gets one row: mean CE and distillation loss, the warm-up
    factor, and the share of regions in each teacher category per scale (`stats_frame()`).
    `region_counts` keeps the last epoch's counts per category and region position (4 x N).
    """
    # Last of the before_batch handlers: the one-call forward is installed right before the Learner's model
    # call, so no other callback can fail in between. (Metrics and the Recorder read `pred` and `loss` only
    # in after_batch, after this callback has unpacked and mixed them.)
    order = 100

    def __init__(self, teacher: nn.Module, method: str = "kd", scales=(1, 2, 4), *,
                 ce_weight=None, kd_weight=None, warmup_epochs=None, complementary_weight=COMPLEMENTARY_WEIGHT,
                 logit_standardization=False, **loss_kwargs):
        recipe = resolve_recipe(method, ce_weight=ce_weight, kd_weight=kd_weight, warmup_epochs=warmup_epochs,
                                logit_standardization=logit_standardization, **loss_kwargs)
        self.method, self.spec, self.scales = method, METHODS[method], parse_scales(scales)
        self.ce_weight, self.kd_weight = recipe["ce_weight"], recipe["kd_weight"]
        self.warmup_epochs, self.loss_kwargs = recipe["warmup_epochs"], recipe["loss_kwargs"]
        self.complementary_weight = complementary_weight
        self.logit_standardization = logit_standardization
        self.teacher = teacher.eval().requires_grad_(False)
        self._sd_teacher = ScaleDecoupled(self.teacher, self.scales)
        self.history: list[dict] = []
        self.region_counts: torch.Tensor | None = None

    @property
    def decoupled(self) -> bool:
        return self.scales != (1,)

    # --- fit set-up and tear-down -------------------------------------------------------------
    @property
    def student(self) -> nn.Module:
        model = self.learn.model
        return getattr(model, "module", model)   # unwrap DistributedDataParallel

    def before_fit(self):
        n_s, n_t = model_num_classes(self.student), model_num_classes(self.teacher)
        if n_s is not None and n_t is not None and n_s != n_t:
            raise ValueError(f"the teacher predicts {n_t} classes but the student {n_s}; "
                             "distil between models built for the same classes.")
        self.teacher.to(next(self.student.parameters()).device)
        self._sd_student = ScaleDecoupled(self.student, self.scales)
        self._noted = False

    def before_batch(self):
        """Route the Learner's own call of the student on this batch (and no other call) through the
        scale-decoupled forward, once; the patch removes itself even if the forward raises."""
        student, batch_input = self.student, self.learn.xb[0]
        plain_forward = type(student).forward

        def forward(model, x, *args, **kwargs):
            self._restore_forward()
            if x is batch_input:
                return self._sd_student(x)
            return plain_forward(model, x, *args, **kwargs)
        student.forward = types.MethodType(forward, student)

    def _restore_forward(self):
        self.student.__dict__.pop("forward", None)

    # every way out of a batch or a fit leaves the plain student (exceptions: the patch is one call only)
    def after_fit(self): self._restore_forward()
    def after_cancel_batch(self): self._restore_forward()
    def after_cancel_train(self): self._restore_forward()
    def after_cancel_validate(self): self._restore_forward()
    def after_cancel_epoch(self): self._restore_forward()
    def after_cancel_fit(self): self._restore_forward()

    def before_train(self):
        self.teacher.eval()
        self._watch = LossWatch(("cross-entropy", f"distillation ({'sd_' if self.decoupled else ''}{self.method})"))
        self._counts = torch.zeros(len(CATEGORIES), sum(s * s for s in self.scales), dtype=torch.long,
                                   device=next(self.student.parameters()).device)

    # --- per batch ----------------------------------------------------------------------------
    def after_pred(self):
        self._restore_forward()
        if not isinstance(self.learn.pred, tuple):
            return
        self.learn.pred, self._student_regions = self.learn.pred
        if not self.training:
            return
        with torch.inference_mode():
            teacher_logits, teacher_regions = self._sd_teacher(*self.learn.xb)
        # clones made outside inference mode can be saved for the student's backward pass
        self._teacher_logits, self._teacher_regions = teacher_logits.clone(), teacher_regions.clone()
        if self._teacher_regions.shape != self._student_regions.shape:
            raise ValueError(f"teacher region logits {tuple(self._teacher_regions.shape)} and student region "
                             f"logits {tuple(self._student_regions.shape)} differ; the teacher and student "
                             "must predict the same classes.")
        if not self._noted:
            self._noted = True
            self._note_pool_of_pool()

    def _note_pool_of_pool(self):
        """Say once per fit when the paper's M meets a final map that is not a multiple of 4 (a 28x28 input to a
        CIFAR net gives 7x7)."""
        odd = [f"the {role} is {h}x{w}" for role, (h, w) in (("teacher", self._sd_teacher.grid_size),
                                                             ("student", self._sd_student.grid_size))
               if h % 4 or w % 4]
        if self.scales in PAPER_SCALES[1:] and odd:   # any other M pools each scale from the map itself
            print(f"note: the final map of {' and '.join(odd)}, not a multiple of 4: as in the authors' code, a "
                  "4x4 grid is pooled from the map and every SD region, the global one included, from that grid "
                  "(pool of pool), so the global region is not the plain mean of the map.", flush=True)

    def after_loss(self):
        if not self.training or not hasattr(self, "_teacher_regions"):
            return
        distill, masks = distillation_term(
            self.method, self.scales, self.learn.pred, self._student_regions, self._teacher_logits,
            self._teacher_regions, self.learn.yb[0], complementary_weight=self.complementary_weight,
            logit_standardization=self.logit_standardization, loss_kwargs=self.loss_kwargs)
        ce = self.learn.loss_grad
        factor = warmup_factor(self.epoch + 1, self.warmup_epochs)
        total = self.ce_weight * ce + factor * self.kd_weight * distill
        self.learn.loss_grad = total
        self.learn.loss = total.detach().clone()
        self._watch.add(ce, distill)
        self._counts += category_counts(masks)
        del self._teacher_logits, self._teacher_regions, self._student_regions
        if (self.iter + 1) % FINITE_CHECK_EVERY == 0:
            self._watch.check(self.epoch + 1, self.n_iter)

    # --- per epoch ----------------------------------------------------------------------------
    def after_train(self):
        self._watch.check(self.epoch + 1, self.n_iter)
        ce, distill = self._watch.means()
        row = {"epoch": self.epoch + 1, "ce": ce, "distill": distill,
               "warmup_factor": warmup_factor(self.epoch + 1, self.warmup_epochs)}
        counts_all = self._counts.cpu().float()
        row.update({k: float(v) for k, v in category_shares(counts_all, self.scales).items()})
        self.history.append(row)
        self.region_counts = counts_all

    def stats_frame(self) -> pd.DataFrame:
        """Per-epoch loss components and region-category shares as a DataFrame."""
        return pd.DataFrame(self.history)
