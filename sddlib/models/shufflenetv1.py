"""The CIFAR ShuffleNetV1 of the CRD/mdistiller code base (`ShuffleV1`: 3 groups, widths
240/480/960, 4/8/4 units).

Its stem is a single 1x1 conv to 24 channels (no stride, no max-pool), so the three stride-2
stages take 32x32 inputs to a 4x4 final map (the ReLU output of the last unit).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import TimmInterface, stem_conv
from ._registry import register

__all__ = ["ShuffleNetV1", "ShuffleUnit", "channel_shuffle"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across groups: (g, C/g) -> (C/g, g), so channel k*g + j of the
    output is channel j*C/g + k of the input."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1, plus a shortcut.

    Stride-2 units concatenate a 3x3 average-pooled input instead of adding it, so their branch
    produces `out_ch - in_ch` channels. Unlike the ShuffleNet paper, the reference puts a ReLU
    after the depthwise conv too; checkpoints were trained that way.
    """

    def __init__(self, in_ch: int, branch_ch: int, stride: int, groups: int, first: bool):
        super().__init__()
        mid = branch_ch // 4
        # The network's very first unit reads the 24-channel stem, which is not split in groups.
        in_groups = 1 if first else groups
        self.stride = stride
        self.in_groups = in_groups
        self.conv1 = nn.Conv2d(in_ch, mid, 1, groups=in_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_ch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.in_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1))
        return F.relu(out + x)


class ShuffleNetV1(TimmInterface):
    classifier_attr = "linear"

    def __init__(self, widths=(240, 480, 960), units=(4, 8, 4), groups: int = 3,
                 num_classes: int = 100, stem: str = "cifar"):
        super().__init__()
        self.conv1 = stem_conv(24, stem, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch = 24
        for s, (out_ch, n) in enumerate(zip(widths, units), start=1):
            stage = []
            for i in range(n):
                downsample = i == 0
                stage.append(ShuffleUnit(in_ch, out_ch - in_ch if downsample else out_ch,
                                         stride=2 if downsample else 1, groups=groups,
                                         first=(s == 1 and i == 0)))
                in_ch = out_ch
            self.add_module(f"layer{s}", nn.Sequential(*stage))
        self.num_features = in_ch
        self.num_classes = num_classes
        self.linear = nn.Linear(in_ch, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


@register(stems=("cifar", "cub"))
def ShuffleV1(num_classes: int = 100, stem: str = "cifar"):
    return ShuffleNetV1(num_classes=num_classes, stem=stem)
