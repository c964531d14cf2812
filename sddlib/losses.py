"""Logit distillation losses in one registry, and their scale-decoupled (SD) versions.

A logit loss is registered once and then works everywhere KD, DKD and NKD do: plain (M=[1]) and scale
decoupled, in `RunConfig` (its hyper-parameters checked, its defaults filled in), params files, notebooks, the
departures, tables and figures. The shortest complete example, a plain L2 between the logits:

    from sddlib.losses import Hyper, register_loss

    def l2_rows(student, teacher, target, scale=1.0):      # one loss value per sample (row)
        return scale * (student - teacher).pow(2).mean(1)

    register_loss("l2", l2_rows, hyper={"scale": Hyper(1.0, low=0)}, ce_weight=1.0, kd_weight=1.0)
    # now: experiment.run({..., "method": "l2", "M": "[1,2,4]", "loss_params": {"scale": 0.5}})

The function receives fp32 student and teacher logits (batch x classes, already z-scored when
`logit_standardization` is on) and the targets, and returns one value per row; the SD version evaluates it on
every (sample, region) row. Hyper-parameters named T, alpha, beta, gamma or exclude_target are RunConfig's own
fields; the others go in `loss_params`.

Values of KD, DKD and NKD follow the authors' code (mdistiller and the SDD repository) so published numbers can
be reproduced, but every quantity is computed from log-softmax / log-sum-exp rather than `log(softmax)`: finite
logits (fp32 or bf16 autocast, magnitudes up to 1e4) never give NaN or inf, where the authors' code silently
replaced non-finite losses by zero. All math runs in fp32.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

import torch
import torch.nn.functional as F

from . import loss_family
from .regions import COMPLEMENTARY_WEIGHT
from .validators import ConfigError, flag, integer, real

__all__ = ["Hyper", "LogitLoss", "LOSSES", "register_loss", "get_loss", "logit_loss", "standardize", "kd_loss",
           "dkd_loss", "nkd_loss", "RegionMasks", "region_masks", "region_weights", "sdd_loss", "check_targets",
           "LOSS_FIELDS"]


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction {reduction!r} is not supported; use 'mean', 'sum' or 'none'.")


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} "
                         "must both be batch x classes and of equal shape.")


def check_targets(target: torch.Tensor, batch: int, num_classes: int) -> None:
    """One clear sentence instead of a CUDA assert or gather error deep inside torch.

    The range test is an asynchronous assert, so a training step on a GPU never waits for it (a bad label
    there stops the run with a device-side assert); on the CPU it fails at once and is reworded here.
    """
    if target.dim() != 1 or target.shape[0] != batch:
        raise ValueError(f"targets of shape {tuple(target.shape)} do not match a batch of {batch}; "
                         "pass one class index per sample.")
    if not target.numel():
        return
    try:
        torch._assert_async(((target >= 0) & (target < num_classes)).all(), "targets out of range")
    except RuntimeError:
        raise ValueError(f"targets must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                         f"got values from {int(target.min())} to {int(target.max())}.") from None


def _kl(log_p_teacher: torch.Tensor, log_p_student: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per row from log-probabilities (0 where the teacher's mass is 0)."""
    return F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(1)


def _kd_rows(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None = None,
             T: float = 4.0) -> torch.Tensor:
    s, t = student.float() / T, teacher.float() / T
    return _kl(t.log_softmax(1), s.log_softmax(1)) * T * T


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, T: float = 4.0,
            reduction: str = "mean") -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes."""
    _check_pair(student, teacher)
    return _reduce(_kd_rows(student, teacher, T=T), reduction)


def _non_target_index(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """B x (K-1) column indices of every class but the target, in class order: a gather index, since boolean
    masking has a data-dependent size and makes a GPU wait for the host."""
    columns = torch.arange(num_classes - 1, device=target.device).expand(len(target), -1)
    return columns + (columns >= target[:, None]).long()


def _without_target(x: torch.Tensor, non_target: torch.Tensor) -> torch.Tensor:
    """Drop the target column: B x K -> B x (K-1), the non-target logits in class order."""
    return x.gather(1, non_target)


def _dkd_rows(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
              alpha: float = 1.0, beta: float = 8.0, T: float = 4.0) -> torch.Tensor:
    s, t = student.float() / T, teacher.float() / T
    non_target = _non_target_index(target, s.shape[1])

    def binary_log_probs(x):
        lse_all = x.logsumexp(1)
        log_target = x.gather(1, target[:, None]).squeeze(1) - lse_all
        log_rest = _without_target(x, non_target).logsumexp(1) - lse_all
        return torch.stack([log_target, log_rest], dim=1)

    tckd = _kl(binary_log_probs(t), binary_log_probs(s))
    nckd = _kl(_without_target(t, non_target).log_softmax(1), _without_target(s, non_target).log_softmax(1))
    return (alpha * tckd + beta * nckd) * T * T


def dkd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
             alpha: float = 1.0, beta: float = 8.0, T: float = 4.0,
             reduction: str = "mean") -> torch.Tensor:
    """Decoupled KD: alpha * TCKD (target vs rest, binary) + beta * NCKD (among non-targets), T^2-scaled."""
    _check_pair(student, teacher)
    check_targets(target, student.shape[0], student.shape[1])
    return _reduce(_dkd_rows(student, teacher, target, alpha, beta, T), reduction)


def _nkd_rows(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
              T: float = 1.0, gamma: float = 1.5, exclude_target: bool = False) -> torch.Tensor:
    s, t = student.float(), teacher.float()
    idx = target[:, None]
    target_term = -(t.softmax(1).gather(1, idx) * s.log_softmax(1).gather(1, idx)).squeeze(1)
    if exclude_target:
        non_target = _non_target_index(target, s.shape[1])
        s, t = _without_target(s, non_target), _without_target(t, non_target)
    return target_term - (t.div(T).softmax(1) * s.div(T).log_softmax(1)).sum(1) * gamma * T * T


def nkd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
             T: float = 1.0, gamma: float = 1.5, exclude_target: bool = False,
             reduction: str = "mean") -> torch.Tensor:
    """Normalized KD: -t_target * log s_target - gamma * T^2 * sum(t^T_i * log s^T_i) over non-targets.

    `exclude_target=False` reproduces the authors' code, whose class mask keeps the target in the
    "non-target" softmax (their published numbers depend on it); `True` is the NKD paper's formula.
    """
    _check_pair(student, teacher)
    check_targets(target, student.shape[0], student.shape[1])
    return _reduce(_nkd_rows(student, teacher, target, T, gamma, exclude_target), reduction)


# --- logit standardization ------------------------------------------------------------------------
# Sun et al., "Logit Standardization in Knowledge Distillation" (CVPR 2024), as their public code computes it:
# sunshangquan/logit-standardization-KD, mdistiller/distillers/KD.py (and DKD.py), function `normalize`: each row's
# mean and torch.std (the unbiased, n-1 deviation) over the class dimension, with 1e-7 added to the deviation;
# the loss then divides the z-scores by its temperature (their kd_loss / dkd_loss), as the registered losses here do.
LS_EPSILON = 1e-7


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Z-score every row of batch x classes logits over its classes (the LS authors' `normalize`)."""
    return (logits - logits.mean(1, keepdim=True)) / (LS_EPSILON + logits.std(1, keepdim=True))


# --- the registry -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hyper:
    """A loss hyper-parameter: its default, its kind (float, int or bool) and the range it accepts."""
    default: Any
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    doc: str = ""

    @property
    def validator(self):
        """The check of a value (`sddlib.validators`, as RunConfig's parameters are checked)."""
        if self.kind is bool:
            return flag
        return (integer if self.kind is int else real)(self.low, self.high, low_open=self.low_open)

    @property
    def accepted(self) -> str:
        return self.validator.accepted

    def check(self, name: str, value):
        """The value as given (loss_params keep it so), or a ConfigError (a ValueError) saying what `name` accepts."""
        self.validator(name, value)
        return value


RECIPE = ("ce_weight", "kd_weight", "warmup_epochs")
# Hyper-parameters that are run parameters of their own (`RunConfig` fields: the built-in losses'); any other one of
# a registered loss is given in `loss_params`.
LOSS_FIELDS = ("T", "alpha", "beta", "gamma", "exclude_target")


@dataclass(frozen=True)
class LogitLoss:
    """A registered logit loss: its per-sample function, hyper-parameters, and the training recipe's defaults
    (CE and distillation weights, warm-up epochs), with the values that replace them under logit standardization."""
    name: str
    rows: Callable
    hyper: Mapping[str, Hyper]
    ce_weight: float
    kd_weight: float
    warmup_epochs: float
    standardized: Mapping[str, Any]
    loss: Callable = field(repr=False)

    @property
    def loss_defaults(self) -> dict:
        return {k: h.default for k, h in self.hyper.items()}

    @property
    def loss_keys(self) -> tuple[str, ...]:
        return tuple(self.hyper)

    def recipe(self, logit_standardization: bool = False) -> dict:
        """The default weights, warm-up and hyper-parameters of a run, with or without logit standardization."""
        values = {**{k: getattr(self, k) for k in RECIPE}, **self.loss_defaults}
        return {**values, **self.standardized} if logit_standardization else values

    def resolve(self, values: dict, given_as: LogitLoss | None = None) -> dict:
        """A run's loss values (`RunConfig` parameters), in place: the recipe's weights and warm-up where None; each
        of LOSS_FIELDS this loss takes checked, or its default where None (None for the others); `loss_params`
        checked and completed. `given_as`: the loss whose recipe the values were written as (the `recipe`
        parameter); when it is another, the values equal to its recipe are cleared first (`clear_recipe`), and the
        return says what changed: {"recipe": its name, "took": {name: [value now, value given]}, "kept": {name:
        value given}} ({} when the values were not another loss's recipe)."""
        changed = given_as is not None and given_as.name != self.name
        cleared = given_as.clear_recipe(values) if changed else {}
        given = {**{k: values[k] for k in (*RECIPE, *LOSS_FIELDS) if values[k] is not None},
                 **(values["loss_params"] or {})}
        recipe = self.recipe(values["logit_standardization"])
        for key in RECIPE:
            if values[key] is None:
                values[key] = recipe[key]
        for key in LOSS_FIELDS:
            values[key] = (recipe[key] if values[key] is None else self.check_value(key, values[key])) \
                if key in self.hyper else None
        values["loss_params"] = self.other_params(values["loss_params"] or {}, recipe)
        if not changed:
            return {}
        now = {**{k: values[k] for k in (*RECIPE, *LOSS_FIELDS)}, **values["loss_params"]}
        return {"recipe": given_as.name, "took": {k: [now.get(k), v] for k, v in cleared.items()},
                "kept": {k: v for k, v in given.items() if now.get(k) is not None}}

    def clear_recipe(self, values: dict) -> dict:
        """A run's parameters `values` written for this loss, run with another method: each value that equals this
        loss's registered recipe (weights, warm-up, hyper-parameters, `loss_params` entries; under the run's
        `logit_standardization`) is there only because it was this loss's recipe, and is cleared (in place) for the
        other method's recipe to fill in. Returns {name: value} of those cleared."""

        recipe = self.recipe(values["logit_standardization"])
        def same(key, value):   # 20 and 20.0 alike, False and 0 not
            expected = recipe[key]
            return value is not None and isinstance(value, bool) == isinstance(expected, bool) and value == expected
        cleared = {k: values[k] for k in (*RECIPE, *LOSS_FIELDS) if k in recipe and same(k, values[k])}
        own = dict(values["loss_params"] or {})
        cleared.update({k: own.pop(k) for k in list(own) if k in recipe and same(k, own[k])})
        values.update({k: None for k in cleared if k in values}, loss_params=own or None)
        return cleared

    def check_value(self, key: str, value):
        """A given value of hyper-parameter `key`, checked (a ConfigError names this loss)."""
        try:
            return self.hyper[key].check(key, value)
        except ValueError as err:
            raise ConfigError(f"{err} (method {self.name})") from None

    def other_params(self, given: Mapping, recipe: dict) -> dict:
        """`loss_params`: the hyper-parameters outside LOSS_FIELDS, each given value checked, the others the
        `recipe`'s; a LOSS_FIELDS key or one this loss does not take is refused."""
        own = [k for k in self.hyper if k not in LOSS_FIELDS]
        for key in given:
            if key not in own:
                where = (f"give {key} as a parameter of its own" if key in LOSS_FIELDS else
                         f"{self.name} takes {', '.join(own) if own else 'none'} there")
                raise ConfigError(f"loss_params key {key!r} is not accepted for method {self.name}; {where}.")
        return {k: self.check_value(k, given[k]) if k in given else recipe[k] for k in own}


LOSSES: dict[str, LogitLoss] = {}
_BUILT_IN = ("kd", "dkd", "nkd")


def register_loss(name: str, rows: Callable, *, hyper: Mapping[str, Hyper] | None = None, ce_weight: float = 1.0,
                  kd_weight: float = 1.0, warmup_epochs: float = 0, standardized: Mapping | None = None,
                  loss: Callable | None = None) -> LogitLoss:
    """Register `rows(student, teacher, target, **hyper) -> one loss per sample` as method `name`.

    `standardized`: defaults (hyper-parameters, ce_weight, kd_weight, warmup_epochs) that replace the others when
    `logit_standardization` is on. `loss`: the public function that reduces (default: `logit_loss` for `name`).
    Registering a name again replaces it (a notebook cell run twice), except the built-in kd, dkd and nkd."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name.startswith("sd_"):
        raise ValueError(f"loss name {name!r} is not accepted; use lower-case letters, digits and '_', "
                         "starting with a letter and not with 'sd_' (that prefix names the SD version).")
    if name in _BUILT_IN and name in LOSSES:
        raise ValueError(f"{name!r} is a built-in loss and cannot be replaced; register yours under another name.")
    hyper = dict(hyper or {})
    for key, spec in hyper.items():
        if not isinstance(spec, Hyper) or not key.isidentifier() or key in (*RECIPE, "reduction"):
            raise ValueError(f"hyper-parameter {key!r} of {name!r} must be a Hyper(...) under a Python name other "
                             f"than {', '.join(RECIPE)} and reduction.")
        spec.check(key, spec.default)
    standardized = dict(standardized or {})
    unknown = sorted(set(standardized) - set(hyper) - set(RECIPE))
    if unknown:
        raise ValueError(f"standardized default {unknown[0]!r} of {name!r} is neither a hyper-parameter nor one of "
                         f"{', '.join(RECIPE)}.")
    entry = LogitLoss(name, rows, hyper, ce_weight, kd_weight, warmup_epochs, standardized,
                      loss or functools.partial(logit_loss, name))
    LOSSES[name] = entry
    return entry


def get_loss(name: str) -> LogitLoss:
    if name not in LOSSES:
        raise ValueError(f"base loss {name!r} is unknown; use one of {sorted(LOSSES)} or register it "
                         "(sddlib.losses.register_loss).")
    return LOSSES[name]


def logit_loss(base: str, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, *,
               logit_standardization: bool = False, reduction: str = "mean", **hyper) -> torch.Tensor:
    """The registered loss `base` between batch x classes logits, in fp32, z-scored first when
    `logit_standardization` is on. Hyper-parameters not given take the function's own defaults."""
    entry = get_loss(base)
    _check_pair(student, teacher)
    check_targets(target, student.shape[0], student.shape[1])
    unknown = sorted(set(hyper) - set(entry.hyper))
    if unknown:
        raise ValueError(f"{base} takes no {unknown[0]!r}; its loss takes {', '.join(entry.loss_keys) or 'none'}.")
    s, t = student.float(), teacher.float()
    if logit_standardization:
        s, t = standardize(s), standardize(t)
    per_sample = entry.rows(s, t, target, **hyper)
    if per_sample.shape != (s.shape[0],):
        raise ValueError(f"the {base} loss returned shape {tuple(per_sample.shape)}; a registered loss returns one "
                         f"value per sample ({s.shape[0]}).")
    return _reduce(per_sample, reduction)


# The authors' defaults per method (their distiller classes + mdistiller's default config).
# SD-NKD reads T and gamma from the DKD section of their config: T=4, gamma=DKD.BETA (8 by default);
# exclude_target=False is their class mask (the target stays in the "non-target" distribution).
# Under logit standardization, the LS authors' CIFAR-100 recipe (tools/train.py of their repository:
# --base-temp 2 --kd-weight 9): KD's weight 9 and T 2 (CE weight 1, their KD default); DKD's alpha and beta times
# 9 and T 2. Their code has no NKD: NKD keeps its defaults.
_TEMPERATURE = Hyper(4.0, low=0, low_open=True, doc="temperature")
_WEIGHT = dict(low=0)
register_loss("kd", _kd_rows, hyper={"T": _TEMPERATURE}, ce_weight=0.1, kd_weight=0.9, warmup_epochs=0,
              standardized={"T": 2.0, "ce_weight": 1.0, "kd_weight": 9.0}, loss=kd_loss)
register_loss("dkd", _dkd_rows, hyper={"alpha": Hyper(1.0, **_WEIGHT, doc="DKD target-class weight"),
                                       "beta": Hyper(8.0, **_WEIGHT, doc="DKD non-target weight"), "T": _TEMPERATURE},
              ce_weight=1.0, kd_weight=1.0, warmup_epochs=20, standardized={"alpha": 9.0, "beta": 72.0, "T": 2.0},
              loss=dkd_loss)
register_loss("nkd", _nkd_rows, hyper={"T": _TEMPERATURE, "gamma": Hyper(8.0, **_WEIGHT, doc="NKD non-target weight"),
                                       "exclude_target": Hyper(False, bool, doc="drop the target from the "
                                                               "non-target term")},
              ce_weight=1.0, kd_weight=1.0, warmup_epochs=20, loss=nkd_loss)

# TTM, WTTM, RLD and ABKD (sddlib.loss_family), registered here so that importing this module knows them. Defaults:
# each repository's README command for CIFAR-100, the code's own defaults for what it leaves unset (docs/losses.md,
# "The logit-distillation family").
_POSITIVE = dict(low=0, low_open=True)
_EXPONENT = Hyper(0.1, low=0, doc="TTM exponent of the teacher's probabilities (their --ttm_l)")
register_loss("ttm", loss_family.ttm_rows, hyper={"gamma": _EXPONENT}, ce_weight=1.0, kd_weight=45.0,
              warmup_epochs=0)
register_loss("wttm", loss_family.wttm_rows, hyper={"gamma": Hyper(0.2, low=0, doc=_EXPONENT.doc)}, ce_weight=1.0,
              kd_weight=4.0, warmup_epochs=0)
# Under logit standardization, RLD's own tools/train.py (--logit-stand, --base-temp 2 --kd-weight 9): alpha and beta
# times 9, both temperatures 2.
register_loss("rld", loss_family.rld_rows, hyper={
    "alpha": Hyper(1.0, low=0, doc="RLD binary-term weight"),
    "beta": Hyper(8.0, low=0, doc="RLD weight of the classes ranked below the target"),
    "T": Hyper(4.0, **_POSITIVE, doc="temperature"),
    "binary_T": Hyper(4.0, **_POSITIVE, doc="RLD binary-term temperature")},
    ce_weight=1.0, kd_weight=1.0, warmup_epochs=20,
    standardized={"alpha": 9.0, "beta": 72.0, "T": 2.0, "binary_T": 2.0})
register_loss("abkd", loss_family.abkd_rows, hyper={
    "alpha": Hyper(0.8, low=0, doc="ABKD alpha (power of the teacher's probabilities)"),
    "beta": Hyper(0.3, low=0, doc="ABKD beta (power of the student's probabilities)"),
    "T": Hyper(4.0, **_POSITIVE, doc="temperature")},
    ce_weight=1.0, kd_weight=32.0, warmup_epochs=0)


class RegionMasks(NamedTuple):
    """Teacher-defined region categories, each B x N. They partition every (sample, region)."""
    global_right_local_right: torch.Tensor
    global_wrong_local_wrong: torch.Tensor
    global_right_local_wrong: torch.Tensor
    global_wrong_local_right: torch.Tensor

    @property
    def consistent(self) -> torch.Tensor:
        return self.global_right_local_right | self.global_wrong_local_wrong

    @property
    def complementary(self) -> torch.Tensor:
        return self.global_right_local_wrong | self.global_wrong_local_right


def _check_regions(regions: torch.Tensor, name: str) -> None:
    if regions.dim() != 3:
        raise ValueError(f"{name} must be batch x classes x regions, got shape {tuple(regions.shape)}.")


def region_masks(teacher_regions: torch.Tensor, target: torch.Tensor) -> RegionMasks:
    """Class each region by whether the teacher's top-1 there and globally (region 0) hit the target."""
    _check_regions(teacher_regions, "teacher region logits")
    check_targets(target, teacher_regions.shape[0], teacher_regions.shape[1])
    local_right = teacher_regions.argmax(1) == target[:, None]          # B x N
    global_right = local_right[:, :1]
    return RegionMasks(global_right & local_right, ~global_right & ~local_right,
                       global_right & ~local_right, ~global_right & local_right)


def region_weights(masks: RegionMasks, complementary_weight: float = COMPLEMENTARY_WEIGHT) -> torch.Tensor:
    """Per-region loss weights: complementary regions get `complementary_weight`, consistent ones 1."""
    ones = torch.ones_like(masks.complementary, dtype=torch.float32)
    return torch.where(masks.complementary, ones * complementary_weight, ones)


def sdd_loss(student_regions: torch.Tensor, teacher_regions: torch.Tensor, target: torch.Tensor,
             base: str = "kd", complementary_weight: float = COMPLEMENTARY_WEIGHT, masks: RegionMasks | None = None,
             logit_standardization: bool = False, **base_kwargs) -> torch.Tensor:
    """Scale-decoupled loss: the base loss on every (sample, region) pair, complementary regions
    up-weighted, weighted sum divided by N*B (the authors' normalisation for all three bases).

    Any registered loss is a base. With `logit_standardization` every (sample, region) row is z-scored on its own.
    Pass `masks` when you already computed `region_masks` for the same teacher output.
    """
    get_loss(base)
    _check_regions(student_regions, "student region logits")
    _check_regions(teacher_regions, "teacher region logits")
    if student_regions.shape != teacher_regions.shape:
        raise ValueError(f"student region logits {tuple(student_regions.shape)} and teacher region logits "
                         f"{tuple(teacher_regions.shape)} differ; both models need the same classes and scales.")
    if masks is None:
        masks = region_masks(teacher_regions, target)
    B, K, N = student_regions.shape
    rows = lambda r: r.permute(0, 2, 1).reshape(B * N, K)              # sample-major rows
    per_row = logit_loss(base, rows(student_regions), rows(teacher_regions), target.repeat_interleave(N),
                         logit_standardization=logit_standardization, reduction="none", **base_kwargs)
    return (per_row * region_weights(masks, complementary_weight).reshape(-1)).sum() / (B * N)
