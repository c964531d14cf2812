"""KD, DKD and NKD losses and their scale-decoupled (SD) versions.

Values follow the authors' code (mdistiller and the SDD repository) so published numbers can be
reproduced, but every quantity is computed from log-softmax / log-sum-exp rather than
`log(softmax)`: finite logits (fp32 or bf16 autocast, magnitudes up to 1e4) never give NaN or inf,
where the authors' code silently replaced non-finite losses by zero. All math runs in fp32.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["kd_loss", "dkd_loss", "nkd_loss", "BASE_LOSSES", "RegionMasks", "region_masks",
           "region_weights", "sdd_loss", "check_targets"]


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


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, T: float = 4.0,
            reduction: str = "mean") -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes."""
    _check_pair(student, teacher)
    s, t = student.float() / T, teacher.float() / T
    return _reduce(_kl(t.log_softmax(1), s.log_softmax(1)) * T * T, reduction)


def _non_target_index(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """B x (K-1) column indices of every class but the target, in class order: a gather index, since boolean
    masking has a data-dependent size and makes a GPU wait for the host."""
    columns = torch.arange(num_classes - 1, device=target.device).expand(len(target), -1)
    return columns + (columns >= target[:, None]).long()


def _without_target(x: torch.Tensor, non_target: torch.Tensor) -> torch.Tensor:
    """Drop the target column: B x K -> B x (K-1), the non-target logits in class order."""
    return x.gather(1, non_target)


def dkd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
             alpha: float = 1.0, beta: float = 8.0, T: float = 4.0,
             reduction: str = "mean") -> torch.Tensor:
    """Decoupled KD: alpha * TCKD (target vs rest, binary) + beta * NCKD (among non-targets), T^2-scaled."""
    _check_pair(student, teacher)
    check_targets(target, student.shape[0], student.shape[1])
    s, t = student.float() / T, teacher.float() / T
    non_target = _non_target_index(target, s.shape[1])

    def binary_log_probs(x):
        lse_all = x.logsumexp(1)
        log_target = x.gather(1, target[:, None]).squeeze(1) - lse_all
        log_rest = _without_target(x, non_target).logsumexp(1) - lse_all
        return torch.stack([log_target, log_rest], dim=1)

    tckd = _kl(binary_log_probs(t), binary_log_probs(s))
    nckd = _kl(_without_target(t, non_target).log_softmax(1), _without_target(s, non_target).log_softmax(1))
    return _reduce((alpha * tckd + beta * nckd) * T * T, reduction)


def nkd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
             T: float = 1.0, gamma: float = 1.5, exclude_target: bool = False,
             reduction: str = "mean") -> torch.Tensor:
    """Normalized KD: -t_target * log s_target - gamma * T^2 * sum(t^T_i * log s^T_i) over non-targets.

    `exclude_target=False` reproduces the authors' code, whose class mask keeps the target in the
    "non-target" softmax (their published numbers depend on it); `True` is the NKD paper's formula.
    """
    _check_pair(student, teacher)
    check_targets(target, student.shape[0], student.shape[1])
    s, t = student.float(), teacher.float()
    idx = target[:, None]
    target_term = -(t.softmax(1).gather(1, idx) * s.log_softmax(1).gather(1, idx)).squeeze(1)
    if exclude_target:
        non_target = _non_target_index(target, s.shape[1])
        s, t = _without_target(s, non_target), _without_target(t, non_target)
    non_target = -(t.div(T).softmax(1) * s.div(T).log_softmax(1)).sum(1) * gamma * T * T
    return _reduce(target_term + non_target, reduction)


BASE_LOSSES = {"kd": kd_loss, "dkd": dkd_loss, "nkd": nkd_loss}


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


def region_weights(masks: RegionMasks, complementary_weight: float = 2.0) -> torch.Tensor:
    """Per-region loss weights: complementary regions get `complementary_weight`, consistent ones 1."""
    ones = torch.ones_like(masks.complementary, dtype=torch.float32)
    return torch.where(masks.complementary, ones * complementary_weight, ones)


def sdd_loss(student_regions: torch.Tensor, teacher_regions: torch.Tensor, target: torch.Tensor,
             base: str = "kd", complementary_weight: float = 2.0, masks: RegionMasks | None = None,
             **base_kwargs) -> torch.Tensor:
    """Scale-decoupled loss: the base loss on every (sample, region) pair, complementary regions
    up-weighted, weighted sum divided by N*B (the authors' normalisation for all three bases).

    Pass `masks` when you already computed `region_masks` for the same teacher output.
    """
    if base not in BASE_LOSSES:
        raise ValueError(f"base loss {base!r} is unknown; use one of {sorted(BASE_LOSSES)}.")
    _check_regions(student_regions, "student region logits")
    _check_regions(teacher_regions, "teacher region logits")
    if student_regions.shape != teacher_regions.shape:
        raise ValueError(f"student region logits {tuple(student_regions.shape)} and teacher region logits "
                         f"{tuple(teacher_regions.shape)} differ; both models need the same classes and scales.")
    if masks is None:
        masks = region_masks(teacher_regions, target)
    B, K, N = student_regions.shape
    rows = lambda r: r.permute(0, 2, 1).reshape(B * N, K)              # sample-major rows
    target_rows = target.repeat_interleave(N)
    loss_fn = BASE_LOSSES[base]
    extra = {} if base == "kd" else {"target": target_rows}
    per_row = loss_fn(rows(student_regions), rows(teacher_regions), reduction="none",
                      **extra, **base_kwargs)
    return (per_row * region_weights(masks, complementary_weight).reshape(-1)).sum() / (B * N)
