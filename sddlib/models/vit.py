"""Small vision transformers for 32x32 inputs (digit mosaics, CIFAR-100), built with timm.

Not networks of the authors' code: they are here so the experiment runner, which builds students by
name, can distil a CNN teacher into a transformer student. Patch size 4 on 32x32 inputs gives an 8x8
grid of patch tokens, which `ScaleDecoupled` pools into the paper's 1x1, 2x2 and 4x4 regions; the
global logit is the class token's, as in DeiT. timm's own constructors and layer names are used
unchanged, so timm checkpoints of the same shape load into them.
"""
from __future__ import annotations

import torch.nn as nn

from ._registry import register

__all__ = ["VIT_SPECS"]

# name -> (timm architecture, overrides): patch 4 on 32 px inputs.
VIT_SPECS = {
    # DeiT-Tiny's width and depth (192 wide, 12 blocks, 3 heads, 5.4M parameters).
    "DeiT_Tiny_p4": ("deit_tiny_patch16_224", dict()),
    # A CPU-sized ViT for the demonstration notebook (96 wide, 4 blocks, 3 heads, 0.45M parameters).
    "ViT_micro_p4": ("vit_tiny_patch16_224", dict(embed_dim=96, depth=4, num_heads=3)),
}


def _build(arch: str, overrides: dict, num_classes: int, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ImportError("the ViT students are built with timm; install it with `pip install timm`.") from None
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, img_size=32, patch_size=4,
                             **{**overrides, **kwargs})


def _register(name: str, arch: str, overrides: dict) -> None:
    def builder(num_classes: int = 100, stem: str = "cifar", drop_path_rate: float = 0.0) -> nn.Module:
        return _build(arch, overrides, num_classes, drop_path_rate=drop_path_rate)
    builder.__name__ = name
    builder.__doc__ = f"{name}: timm {arch} with {overrides or 'its own width and depth'}, patch 4 on 32x32 inputs."
    register(builder, name=name, stems=("cifar",))


for _name, (_arch, _overrides) in VIT_SPECS.items():
    _register(_name, _arch, _overrides)
