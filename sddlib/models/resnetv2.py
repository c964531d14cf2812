"""The CIFAR versions of ResNet18 / ResNet50 in the CRD/mdistiller code base.

ImageNet block layout (four stages, widths 64..512, x4 expansion for bottlenecks) on a 3x3
stride-1 stem with no max-pool, so 32x32 inputs end in a 4x4 map. Blocks are post-activation
(ReLU after the addition); the final feature map is the ReLU output of stage 4.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import TimmInterface, init_like_cub_replacement, init_like_reference, stem_conv
from ._registry import register

__all__ = ["CifarResNetV2", "BasicBlock", "Bottleneck"]


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Identity (empty) shortcut, or 1x1 conv + BN when the shape changes; key: `shortcut`."""
    if stride == 1 and in_ch == out_ch:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_ch, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand x4; ReLU after the addition."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = _projection(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNetV2(TimmInterface):
    """Four-stage ResNet with `blocks_per_stage` blocks of type `block`; head `linear`."""

    classifier_attr = "linear"

    def __init__(self, block: type, blocks_per_stage: Sequence[int], num_classes: int = 100,
                 stem: str = "cifar"):
        super().__init__()
        self.conv1 = stem_conv(64, stem)
        self.bn1 = nn.BatchNorm2d(64)
        in_ch = 64
        for i, (planes, n, stride) in enumerate(
                zip((64, 128, 256, 512), blocks_per_stage, (1, 2, 2, 2)), start=1):
            blocks = []
            for j in range(n):
                blocks.append(block(in_ch, planes, stride if j == 0 else 1))
                in_ch = planes * block.expansion
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.num_features = in_ch
        self.num_classes = num_classes
        self.linear = nn.Linear(in_ch, num_classes)
        init_like_reference(self)
        if stem == "cub":  # the authors' CUB ResNet50 teacher: a new conv1 and linear
            init_like_cub_replacement(self.conv1, self.linear)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@register
def ResNet18(num_classes: int = 100, stem: str = "cifar"):
    return CifarResNetV2(BasicBlock, (2, 2, 2, 2), num_classes, stem)


@register(stems=("cifar", "cub"))
def ResNet50(num_classes: int = 100, stem: str = "cifar"):
    return CifarResNetV2(Bottleneck, (3, 4, 6, 3), num_classes, stem)
