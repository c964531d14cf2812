"""The CIFAR MobileNetV2 of the CRD/mdistiller code base (`mobile_half`: expansion 6, width 0.5).

Differences from the ImageNet MobileNetV2 that the checkpoints depend on: plain ReLU (not ReLU6),
the first stage (expansion 1) still has its 1x1 expansion conv, the last 1x1 conv keeps 1280
channels at width 0.5, and the stem is a stride-2 3x3 conv even on 32x32 inputs, so the final
feature map (ReLU after the 1x1 conv to 1280 channels) is only 2x2.
"""
from __future__ import annotations


import torch
import torch.nn as nn

from ._base import TimmInterface, init_like_cub_replacement, init_like_reference, stem_conv
from ._registry import register

__all__ = ["CifarMobileNetV2", "InvertedResidual"]

# (expansion, output channels at width 1.0, blocks, stride of the first block); the expansion of
# every stage but the first is the network's T.
_STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
           (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (linear bottleneck).

    The residual is added only when the block keeps both resolution and width.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        # One Sequential of 8 modules: checkpoint keys are conv.0/1 (expand), conv.3/4
        # (depthwise), conv.6/7 (project).
        self.conv = nn.Sequential(
            *_conv_bn_relu(in_ch, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(TimmInterface):
    classifier_attr = "classifier"

    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100,
                 stem: str = "cifar"):
        super().__init__()
        in_ch = int(32 * width_mult)
        stem_layers = [stem_conv(in_ch, stem, kernel_size=3, stride=2), nn.BatchNorm2d(in_ch),
                       nn.ReLU(inplace=True)]
        if stem == "cub":  # 224 -> 112 (7x7 conv) -> 56, then the CIFAR strides
            stem_layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.conv1 = nn.Sequential(*stem_layers)
        self.blocks = nn.ModuleList()
        for t, channels, n, stride in _STAGES:
            out_ch = int(channels * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1,
                                              expansion if t is None else t))
                in_ch = out_ch
            self.blocks.append(nn.Sequential(*stage))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = nn.Sequential(*_conv_bn_relu(in_ch, last, 1))
        self.num_features = last
        self.num_classes = num_classes
        # A one-element Sequential, as in the reference (key `classifier.0`).
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        init_like_reference(self, linear_std=0.01)
        if stem == "cub":  # the authors' CUB stem: a new conv + BatchNorm (+ ReLU, max-pool)
            init_like_cub_replacement(self.conv1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.conv2(x)


@register(stems=("cifar", "cub"))
def MobileNetV2(num_classes: int = 100, stem: str = "cifar"):
    """The reference's `mobile_half`: T=6, width 0.5."""
    return CifarMobileNetV2(6, 0.5, num_classes, stem)
