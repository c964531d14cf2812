"""The CIFAR ShuffleNetV2 of the CRD/mdistiller code base (`ShuffleV2`: net size 1.0, widths
116/232/464, 3/7/3 units, a final 1x1 conv to 1024 channels).

The stem is a 1x1 conv to 24 channels without stride or max-pool, so 32x32 inputs end in a
4x4 map: the ReLU output of the final 1x1 conv, which is where the reference pools.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import TimmInterface, stem_conv
from ._registry import register
from .shufflenetv1 import channel_shuffle

__all__ = ["ShuffleNetV2", "DownUnit", "SplitUnit"]


def _conv(in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1,
          depthwise: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2,
                     groups=in_ch if depthwise else 1, bias=False)


class SplitUnit(nn.Module):
    """Keeps the first half of the channels, transforms the second (1x1-BN-ReLU, depthwise
    3x3-BN, 1x1-BN-ReLU), concatenates (kept half first) and shuffles with 2 groups."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = _conv(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = _conv(half, half, 3, depthwise=True)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = _conv(half, half)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, branch = x.chunk(2, dim=1)
        branch = F.relu(self.bn1(self.conv1(branch)))
        branch = self.bn2(self.conv2(branch))
        branch = F.relu(self.bn3(self.conv3(branch)))
        return channel_shuffle(torch.cat([keep, branch], dim=1), 2)


class DownUnit(nn.Module):
    """Stride-2 unit: both branches see the whole input and each yields half the output.

    Left: depthwise 3x3/2-BN, 1x1-BN-ReLU. Right: 1x1-BN-ReLU, depthwise 3x3/2-BN, 1x1-BN-ReLU.
    Concatenated left first, then shuffled with 2 groups.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        mid = out_ch // 2
        self.conv1 = _conv(in_ch, in_ch, 3, stride=2, depthwise=True)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = _conv(in_ch, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv(in_ch, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _conv(mid, mid, 3, stride=2, depthwise=True)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _conv(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleNetV2(TimmInterface):
    classifier_attr = "linear"

    def __init__(self, widths=(116, 232, 464), units=(3, 7, 3), last_channels: int = 1024,
                 num_classes: int = 100, stem: str = "cifar"):
        super().__init__()
        self.conv1 = stem_conv(24, stem, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch = 24
        for s, (out_ch, n) in enumerate(zip(widths, units), start=1):
            stage = [DownUnit(in_ch, out_ch)] + [SplitUnit(out_ch) for _ in range(n)]
            self.add_module(f"layer{s}", nn.Sequential(*stage))
            in_ch = out_ch
        self.conv2 = _conv(in_ch, last_channels)
        self.bn2 = nn.BatchNorm2d(last_channels)
        self.num_features = last_channels
        self.num_classes = num_classes
        self.linear = nn.Linear(last_channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.relu(self.bn2(self.conv2(x)))


@register(stems=("cifar", "cub"))
def ShuffleV2(num_classes: int = 100, stem: str = "cifar"):
    return ShuffleNetV2(num_classes=num_classes, stem=stem)
