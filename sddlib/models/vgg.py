"""VGG-BN networks of the CRD/mdistiller code base (vgg8, vgg11, vgg13, vgg16, vgg19).

Five conv blocks with max-pools between the first four, global average pooling and a single
linear layer (no fully connected stack). Each block ends on its last BN; the ReLU after it is
applied in `forward_features`, so the final feature map is ReLU(block4) (4x4 on 32x32 inputs).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import TimmInterface, init_like_cub_replacement, init_like_reference
from ._registry import register

__all__ = ["VGG", "VGG_CONFIGS"]

# Output widths of the conv layers in each of the five blocks.
VGG_CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _conv_block(widths: Sequence[int], in_ch: int) -> nn.Sequential:
    """(conv3x3 with bias, BN, ReLU) per width, dropping the block's last ReLU.

    The ReLU modules stay in the Sequential because their positions fix the checkpoint keys
    (`block1.0`, `block1.1`, `block1.3`, ...).
    """
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_ch, width, kernel_size=3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        in_ch = width
    return nn.Sequential(*layers[:-1])


class VGG(TimmInterface):
    classifier_attr = "classifier"

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int = 100, stem: str = "cifar"):
        super().__init__()
        in_ch = 3
        for i, widths in enumerate(config):
            self.add_module(f"block{i}", _conv_block(widths, in_ch))
            in_ch = widths[-1]
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.num_features = in_ch
        self.num_classes = num_classes
        self.classifier = nn.Linear(in_ch, num_classes)
        init_like_reference(self, linear_std=0.01)
        if stem == "cub":  # the authors' CUB vgg8 student and vgg13 teacher: a new classifier
            init_like_cub_replacement(self.classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Blocks 0-2 are each followed by a 2x2 max-pool; the pool before block 4 is applied
        only to 64-pixel-high inputs, exactly as in the reference (CRD kept it for
        TinyImageNet). So block 4 runs at the same resolution as block 3: 4x4 for 32x32
        inputs, 28x28 for 224x224 CUB inputs."""
        height = x.shape[-2]
        x = self.pool(F.relu(self.block0(x)))
        x = self.pool(F.relu(self.block1(x)))
        x = self.pool(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if height == 64:
            x = self.pool(x)
        return F.relu(self.block4(x))


# The reference calls these `vggN_bn`; the network is the same on CIFAR and CUB inputs, but for the
# classifier's initialisation (the authors' CUB code replaces it; here every CUB vgg is built alike).
@register(stems=("cifar", "cub"))
def vgg8(num_classes: int = 100, stem: str = "cifar"):
    return VGG(VGG_CONFIGS["vgg8"], num_classes, stem)


@register(stems=("cifar", "cub"))
def vgg11(num_classes: int = 100, stem: str = "cifar"):
    return VGG(VGG_CONFIGS["vgg11"], num_classes, stem)


@register(stems=("cifar", "cub"))
def vgg13(num_classes: int = 100, stem: str = "cifar"):
    return VGG(VGG_CONFIGS["vgg13"], num_classes, stem)


@register(stems=("cifar", "cub"))
def vgg16(num_classes: int = 100, stem: str = "cifar"):
    return VGG(VGG_CONFIGS["vgg16"], num_classes, stem)


@register(stems=("cifar", "cub"))
def vgg19(num_classes: int = 100, stem: str = "cifar"):
    return VGG(VGG_CONFIGS["vgg19"], num_classes, stem)
