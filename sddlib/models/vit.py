"""Small vision transformers for 32x32 inputs (digit mosaics, CIFAR-100), built with timm.

Not networks of the authors' code: they are here so the experiment runner, which builds students by
name, can distil a CNN teacher into a transformer student. Each has an 8x8 grid of patch tokens, which
`ScaleDecoupled` pools into the paper's 1x1, 2x2 and 4x4 regions; the global logit is the class
token's, as in DeiT. timm's own constructors and layer names are used unchanged, so timm checkpoints of
the same shape load into them.

* `DeiT_Tiny_p4`, `ViT_micro_p4`: patch 4 on 32x32 inputs (a linear patch embedding).
* `ViT_micro_convstem`: `ViT_micro_p4`'s transformer on a convolutional stem (three 3x3 conv-BN-ReLU
  layers, strides 1, 2, 2, to the same 8x8 grid; timm's `HybridEmbed`), as in "Early convolutions help
  transformers see better" (Xiao et al., 2021). On the digit mosaics, whose label is the shape of the
  largest digit (colours are random), the patch-4 ViT stays at chance for several epochs; this hybrid
  leaves chance within the CPU budget of notebooks/vit_student.ipynb.
"""
from __future__ import annotations

from functools import partial

import torch.nn as nn

from ._registry import register

__all__ = ["VIT_SPECS", "conv_stem"]

_MICRO = dict(embed_dim=96, depth=4, num_heads=3)
# name -> (timm architecture, overrides, conv stem widths or None for patch 4): 32 px inputs, 8x8 tokens.
VIT_SPECS = {
    # DeiT-Tiny's width and depth (192 wide, 12 blocks, 3 heads, 5.4M parameters).
    "DeiT_Tiny_p4": ("deit_tiny_patch16_224", dict(), None),
    # A CPU-sized ViT (96 wide, 4 blocks, 3 heads, 0.45M parameters).
    "ViT_micro_p4": ("vit_tiny_patch16_224", _MICRO, None),
    # The same transformer on a 3-layer convolutional stem (0.49M parameters).
    "ViT_micro_convstem": ("vit_tiny_patch16_224", _MICRO, (24, 48, 48)),
}


def conv_stem(widths=(24, 48, 48), strides=(1, 2, 2)) -> nn.Sequential:
    """3x3 conv + BatchNorm + ReLU layers: 32x32 RGB -> a widths[-1] x 8x8 map with the default strides."""
    layers, cin = [], 3
    for width, stride in zip(widths, strides):
        layers += [nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        cin = width
    return nn.Sequential(*layers)


def _build(arch: str, overrides: dict, conv_widths, num_classes: int, **kwargs) -> nn.Module:
    try:
        import timm
        from timm.layers import HybridEmbed
    except ImportError:
        raise ImportError("the ViT students are built with timm; install it with `pip install timm`.") from None
    patch = dict(patch_size=4) if conv_widths is None else dict(
        patch_size=1, embed_layer=partial(HybridEmbed, backbone=conv_stem(conv_widths)))
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, img_size=32,
                             **{**patch, **overrides, **kwargs})


def _register(name: str, arch: str, overrides: dict, conv_widths) -> None:
    def builder(num_classes: int = 100, stem: str = "cifar", drop_path_rate: float = 0.0) -> nn.Module:
        return _build(arch, overrides, conv_widths, num_classes, drop_path_rate=drop_path_rate)
    builder.__name__ = name
    how = "patch 4" if conv_widths is None else f"a convolutional stem {list(conv_widths)} (strides 1, 2, 2)"
    builder.__doc__ = f"{name}: timm {arch} with {overrides or 'its own width and depth'}, {how} on 32x32 inputs."
    register(builder, name=name, stems=("cifar",))


for _name, (_arch, _overrides, _widths) in VIT_SPECS.items():
    _register(_name, _arch, _overrides, _widths)
