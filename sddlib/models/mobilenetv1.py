"""The ImageNet MobileNetV1 of the paper's ResNet-50 -> MobileNetV1 table (mdistiller's student).

The SDD authors' `mdistiller/models/imagenet/mobilenetv2.py` is named MobileNetV2 but builds this
network, so their "MobileNetV2" ImageNet configs train a MobileNetV1. Layout and state-dict keys are
theirs (``model.<block>.<layer>.*``, ``fc.*``), so their checkpoints load with ``strict=True``:
``model[0]`` is a 3x3 stride-2 conv-BN-ReLU to 32 channels, ``model[1]`` ... ``model[13]`` are
depthwise-separable blocks, ``model[14]`` is the average pool, and ``fc`` maps 1024 features to the
classes. The final feature map (ReLU output of ``model[13]``, 7x7 at 224x224) is where SDD pools.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._base import TimmInterface
from ._registry import register

__all__ = ["MobileNetV1Net"]

# (output channels, stride) of the 13 depthwise-separable blocks.
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


def _depthwise_separable(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU (keys .0/.1 and .3/.4)."""
    return nn.Sequential(*_conv_bn_relu(in_ch, in_ch, 3, stride, groups=in_ch),
                         *_conv_bn_relu(in_ch, out_ch, 1))


class MobileNetV1Net(TimmInterface):
    """MobileNetV1 (width 1.0) with the timm interface.

    The authors' last module of ``model`` is ``AvgPool2d(7)``, the global mean only on 7x7 maps;
    here it is an adaptive global pool (no parameters, so the keys are unchanged), equal on 224x224
    inputs and still global on other sizes. Initialisation is PyTorch's default, as in their code.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, in_ch = [nn.Sequential(*_conv_bn_relu(3, 32, 3, stride=2))], 32
        for out_ch, stride in _BLOCKS:
            layers.append(_depthwise_separable(in_ch, out_ch, stride))
            in_ch = out_ch
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.num_features = in_ch
        self.num_classes = num_classes
        self.fc = nn.Linear(in_ch, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model[:-1](x)

    def forward_head(self, fmap: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = torch.flatten(self.model[-1](fmap), 1)
        return pooled if pre_logits else self.fc(pooled)


@register(stems=("torchvision",))
def MobileNetV1(num_classes: int = 1000, stem: str = "torchvision"):
    """The authors' ImageNet student for 224x224 inputs.

    Only the ImageNet stem exists: with five stride-2 stages a 32x32 CIFAR image ends in a 1x1 map
    (every SD region would be the global one), and neither the paper nor the authors' code has a
    CIFAR or CUB MobileNetV1.
    """
    return MobileNetV1Net(num_classes)
