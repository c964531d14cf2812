"""torchvision's ImageNet ResNet18/34/50 and MobileNetV2 in the registry, under stem="torchvision".

The builders import torchvision (`torchvision_nets.py`) only when called: importing torchvision also
imports torch._dynamo (torchvision.ops), about a third of `import sddlib.experiment`, so a process that
stops at a bad parameter, or has not yet reached its data, should not pay for it.
"""
from __future__ import annotations

from ._registry import register


def _build(tv_name: str, num_classes: int, weights, progress: bool, **kwargs):
    from .torchvision_nets import build
    return build(tv_name, num_classes, weights, progress, **kwargs)


@register(name="ResNet18", stems=("torchvision",))
def tv_resnet18(num_classes: int = 1000, stem: str = "torchvision", weights=None,
                progress: bool = True, **kwargs):
    return _build("resnet18", num_classes, weights, progress, **kwargs)


@register(name="ResNet34", stems=("torchvision",))
def tv_resnet34(num_classes: int = 1000, stem: str = "torchvision", weights=None,
                progress: bool = True, **kwargs):
    return _build("resnet34", num_classes, weights, progress, **kwargs)


@register(name="ResNet50", stems=("torchvision",))
def tv_resnet50(num_classes: int = 1000, stem: str = "torchvision", weights=None,
                progress: bool = True, **kwargs):
    return _build("resnet50", num_classes, weights, progress, **kwargs)


@register(name="MobileNetV2", stems=("torchvision",))
def tv_mobilenet_v2(num_classes: int = 1000, stem: str = "torchvision", weights=None,
                    progress: bool = True, **kwargs):
    return _build("mobilenet_v2", num_classes, weights, progress, **kwargs)
