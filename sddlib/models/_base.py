"""Pieces shared by the CIFAR/CUB networks: the timm-style head and the input stems."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TimmInterface", "global_pool", "stem_conv", "init_like_reference", "init_like_cub_replacement"]


def global_pool(fmap: torch.Tensor) -> torch.Tensor:
    """B x C x H x W -> B x C mean over the whole map, whatever its size.

    The reference hard-codes the window (AvgPool2d(8), avg_pool2d(out, 4), ...), which equals the
    global mean only at the size it was written for; adaptive pooling keeps that result on 32x32
    inputs and stays correct on 224x224 CUB inputs.
    """
    return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)


class TimmInterface(nn.Module):
    """Base class giving a network timm's `forward_features` / `forward_head` / `get_classifier`.

    Subclasses implement `forward_features` (image -> final feature map, exactly the tensor the
    reference pools) and name their head module in `classifier_attr`. Scale-decoupled
    distillation pools that same map per region and reuses the same head.
    """

    classifier_attr = "fc"
    num_classes: int
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_attr)

    def forward_head(self, fmap: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = global_pool(fmap)
        return pooled if pre_logits else self.get_classifier()(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def stem_conv(out_channels: int, stem: str, *, kernel_size: int = 3, stride: int = 1,
              bias: bool = False) -> nn.Conv2d:
    """First convolution: the family's CIFAR conv, or a 7x7 stride-2 conv for CUB-200.

    On 224x224 inputs the strided 7x7 conv halves the resolution once, so the later stages see
    the same relative downsampling as an ImageNet stem; the output width is unchanged, so every
    other layer (and its checkpoint key) is the same as in the CIFAR network.
    """
    if stem == "cub":
        return nn.Conv2d(3, out_channels, kernel_size=7, stride=2, padding=3, bias=bias)
    if stem == "cifar":
        return nn.Conv2d(3, out_channels, kernel_size=kernel_size, stride=stride,
                         padding=kernel_size // 2, bias=bias)
    raise ValueError(f"unknown stem {stem!r}; use 'cifar' or 'cub'.")


def init_like_reference(model: nn.Module, linear_std: float | None = None, zero_linear_bias: bool = False) -> None:
    """The reference families' initialisation: He (fan-out) normal convs with zero biases, unit/zero
    BatchNorm; they differ only in the classifier, N(0, linear_std) weights and/or zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            if zero_linear_bias or linear_std is not None:
                nn.init.zeros_(m.bias)


def init_like_cub_replacement(*layers: nn.Module) -> None:
    """The authors build a CUB-200 network as the CIFAR one (initialised by its own code) and then replace some
    layers with fresh `nn.Conv2d` / `nn.Linear` / `nn.BatchNorm2d` objects (`modify_student_model_for_cub200`,
    `modify_teacher_model_for_cub200` in their train_origin.py), which keep torch's default initialisation:
    these layers are given that initialisation again."""
    for layer in layers:
        for m in layer.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                m.reset_parameters()
