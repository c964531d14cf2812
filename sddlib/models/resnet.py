"""CIFAR ResNets of the CRD/mdistiller code base (resnet8 ... resnet110, resnet8x4, resnet32x4).

Three stages of post-activation basic blocks on a 3x3 stem, widths (stem, stage1, stage2, stage3);
depth = 6n + 2 with n blocks per stage. The "x4" variants have 4x wider stages (2x wider stem). The final feature
map is the ReLU output of the last stage (8x8 on 32x32 inputs), which is what the authors' SDD
variant pools at several scales.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import TimmInterface, init_like_cub_replacement, init_like_reference, stem_conv
from ._registry import register

__all__ = ["CifarResNet", "BasicBlock"]


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU (ReLU after the addition)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        # A 1x1 projection whenever shape changes; the checkpoints call it `downsample`.
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(TimmInterface):
    """CIFAR ResNet of depth 6n+2 with stage widths `widths` = (stem, s1, s2, s3)."""

    classifier_attr = "fc"

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int = 100,
                 stem: str = "cifar"):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}.")
        n = (depth - 2) // 6
        self.conv1 = stem_conv(widths[0], stem)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_ch = widths[0]
        for i, (out_ch, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            blocks = [BasicBlock(in_ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1)
                      for j in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_ch = out_ch
        self.num_features = in_ch
        self.num_classes = num_classes
        self.fc = nn.Linear(in_ch, num_classes)
        init_like_reference(self)
        if stem == "cub":
            init_like_cub_replacement(self.conv1, self.fc)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register
def resnet8(num_classes: int = 100, stem: str = "cifar"):
    return CifarResNet(8, _NARROW, num_classes, stem)


@register
def resnet14(num_classes: int = 100, stem: str = "cifar"):
    return CifarResNet(14, _NARROW, num_classes, stem)


@register
def resnet20(num_classes: int = 100, stem: str = "cifar"):
    return CifarResNet(20, _NARROW, num_classes, stem)


@register
def resnet32(num_classes: int = 100, stem: str = "cifar"):
    return CifarResNet(32, _NARROW, num_classes, stem)


@register
def resnet44(num_classes: int = 100, stem: str = "cifar"):
    return CifarResNet(44, _NARROW, num_classes, stem)


@register
def resnet56(num_classes: int = 100, stem: str = "cifar"):
    return CifarResNet(56, _NARROW, num_classes, stem)


@register
def resnet110(num_classes: int = 100, stem: str = "cifar"):
    return CifarResNet(110, _NARROW, num_classes, stem)


@register(stems=("cifar", "cub"))
def resnet8x4(num_classes: int = 100, stem: str = "cifar"):
    return CifarResNet(8, _WIDE, num_classes, stem)


@register(stems=("cifar", "cub"))
def resnet32x4(num_classes: int = 100, stem: str = "cifar"):
    return CifarResNet(32, _WIDE, num_classes, stem)
