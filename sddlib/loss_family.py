"""Four recent logit-distillation losses registered beside KD, DKD and NKD, so that each has an SD version:
TTM and WTTM (Zheng & Yang, ICLR 2024), RLD (refined logits) and ABKD (alpha-beta divergence, ICML 2025).

Each computes, row by row, what its authors' public code computes (the file is named at each function), with the
defaults of each repository's README command for CIFAR-100 (docs/losses.md says where every value comes from).
Where that code takes the log of a softmax, the log-softmax is used instead, so finite logits never give NaN or inf.
`sddlib.losses` registers them with their defaults, so `import sddlib.losses` alone knows these methods.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ttm_rows", "wttm_rows", "rld_rows", "abkd_rows"]


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities (a class where p is 0 adds 0)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(1)


def _transformed_teacher(teacher: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log of softmax(t)^gamma / sum(softmax(t)^gamma), and log of that sum (WTTM's sample weight)."""
    powered = gamma * teacher.log_softmax(1)
    log_sum = powered.logsumexp(1)
    return powered - log_sum[:, None], log_sum


def ttm_rows(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None = None,
             gamma: float = 0.1) -> torch.Tensor:
    """Transformed Teacher Matching (zkxufo/TTM, distiller_zoo/ttm.py): KL from the power-transformed teacher
    softmax(t)^gamma (renormalised) to softmax(s); no temperature, no T^2."""
    log_p, _ = _transformed_teacher(teacher, gamma)
    return _kl(log_p, student.log_softmax(1))


def wttm_rows(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None = None,
              gamma: float = 0.2) -> torch.Tensor:
    """Weighted TTM (zkxufo/TTM, distiller_zoo/wttm.py): the TTM term times sum(softmax(t)^gamma), which is larger
    for a less confident teacher."""
    log_p, log_sum = _transformed_teacher(teacher, gamma)
    return log_sum.exp() * _kl(log_p, student.log_softmax(1))


def _binary_log_probs(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """B x 2 log-probabilities of class `index` and of all the others together, from logits."""
    lse = x.logsumexp(1)
    chosen = x.gather(1, index[:, None]).squeeze(1) - lse
    rest = x.scatter(1, index[:, None], float("-inf")).logsumexp(1) - lse
    return torch.stack([chosen, rest], dim=1)


def _log_softmax_over(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """log-softmax over the classes in `keep` only (the others get probability exactly 0); a row that keeps no
    class gets the same uniform distribution for student and teacher (KL 0), as the authors' masking gives."""
    far_below = x.detach().amin(1, keepdim=True) - 1e3   # exp(-1000) is 0 in fp32: the class drops out
    return torch.where(keep, x, far_below).log_softmax(1)


def rld_rows(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, alpha: float = 1.0,
             beta: float = 8.0, T: float = 4.0, binary_T: float = 4.0) -> torch.Tensor:
    """Refined-logit distillation (zju-SWJ/RLD, mdistiller/distillers/RLD.py): alpha * binary_T^2 * KL between
    (teacher's top class, the rest) under the teacher and (target, the rest) under the student, at temperature
    binary_T; plus beta * T^2 * KL over the classes the teacher ranks strictly below the target, at T."""
    binary = _kl(_binary_log_probs(teacher / binary_T, teacher.argmax(1)),
                 _binary_log_probs(student / binary_T, target)) * binary_T ** 2
    below = teacher < teacher.gather(1, target[:, None])
    ranked_below = _kl(_log_softmax_over(teacher / T, below), _log_softmax_over(student / T, below)) * T ** 2
    return alpha * binary + beta * ranked_below


def abkd_rows(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None = None,
              alpha: float = 0.8, beta: float = 0.3, T: float = 4.0) -> torch.Tensor:
    """Alpha-beta divergence (ghwang-s/abkd, standard_classification/distiller_zoo/abkl.py) between
    p = softmax(t/T) and q = softmax(s/T): sum(-p^a q^b + a/(a+b) p^(a+b) + b/(a+b) q^(a+b)) / (a b), with the
    authors' limits where a or b is 0 (b = 0, a = 1: KL(p || q)); no T^2."""
    log_p, log_q = (teacher / T).log_softmax(1), (student / T).log_softmax(1)
    if alpha and beta:
        total = alpha + beta
        terms = (alpha / total * (total * log_p).exp() + beta / total * (total * log_q).exp()
                 - (alpha * log_p + beta * log_q).exp())
        return terms.sum(1) / (alpha * beta)
    if alpha:
        p_a, q_a = (alpha * log_p).exp(), (alpha * log_q).exp()
        return (p_a * (log_p - log_q) + (q_a - p_a) / alpha).sum(1)
    if beta:
        p_b, q_b = (beta * log_p).exp(), (beta * log_q).exp()
        return (q_b * (log_q - log_p) + (p_b - q_b) / beta).sum(1)
    return 0.5 * (log_q - log_p).pow(2).sum(1)
