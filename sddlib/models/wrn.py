"""Wide ResNets WRN-d-k of the CRD/mdistiller code base (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

Pre-activation blocks (BN-ReLU before each conv), depth = 6n + 4, widths 16k/32k/64k. Because
blocks are pre-activation, the network ends with BN + ReLU; the final feature map is that ReLU
output (8x8 on 32x32 inputs), which is where the reference pools.
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import TimmInterface, init_like_reference
from ._registry import register

__all__ = ["WideResNet", "PreActBlock"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut.

    When the width changes, the 1x1 projection shortcut reads the *activated* input
    (BN-ReLU applied), while an identity shortcut carries the raw input: the original WRN code
    does this and the published checkpoints were trained with it.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        # camelCase because that is the checkpoint key. A stride-2 block with equal widths would
        # keep an identity shortcut of the wrong size; no WRN registered here has one.
        self.convShortcut = (None if in_ch == out_ch else
                             nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class _Stage(nn.Module):
    """Holds its blocks in `.layer` so checkpoint keys read `blockN.layer.i.*`."""

    def __init__(self, n: int, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[PreActBlock(in_ch if i == 0 else out_ch, out_ch,
                                                 stride if i == 0 else 1) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(TimmInterface):
    classifier_attr = "fc"

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}.")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = _Stage(n, widths[0], widths[1], 1)
        self.block2 = _Stage(n, widths[1], widths[2], 2)
        self.block3 = _Stage(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.num_features = widths[3]
        self.num_classes = num_classes
        self.fc = nn.Linear(widths[3], num_classes)
        init_like_reference(self, zero_linear_bias=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn1(x))


@register
def wrn_16_1(num_classes: int = 100, stem: str = "cifar"):
    return WideResNet(16, 1, num_classes)


@register
def wrn_16_2(num_classes: int = 100, stem: str = "cifar"):
    return WideResNet(16, 2, num_classes)


@register
def wrn_40_1(num_classes: int = 100, stem: str = "cifar"):
    return WideResNet(40, 1, num_classes)


@register
def wrn_40_2(num_classes: int = 100, stem: str = "cifar"):
    return WideResNet(40, 2, num_classes)
