"""torchvision's ImageNet ResNet18/34/50 and MobileNetV2, given timm's interface (registered in
`torchvision_models.py`, which imports this module only when one of them is built).

The authors' ImageNet teachers and the ResNet18 student are the standard ImageNet networks (their
ResNet-50 -> "MobileNetV2" student is a MobileNetV1, see `mobilenetv1.py`); we build them with
torchvision's own builders, so `weights=` and the checkpoint keys are torchvision's, then swap in a
subclass that only adds methods.
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm

__all__ = ["TimmResNet", "TimmMobileNetV2", "hub_checkpoint_path", "build"]


class TimmResNet(tvm.ResNet):
    """torchvision ResNet plus `forward_features` / `forward_head` / `get_classifier`.

    Adds no modules or parameters, so `state_dict()` keys are exactly torchvision's, and its
    `forward` (torchvision's, unchanged) equals `forward_head(forward_features(x))`.
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, fmap: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)
        return pooled if pre_logits else self.fc(pooled)

    def get_classifier(self) -> nn.Module:
        return self.fc


class TimmMobileNetV2(tvm.MobileNetV2):
    """torchvision MobileNetV2 plus the timm interface; the head is `classifier`
    (dropout + linear), the module torchvision applies to the pooled vector."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, fmap: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)
        return pooled if pre_logits else self.classifier(pooled)

    def get_classifier(self) -> nn.Module:
        return self.classifier


def hub_checkpoint_path(weights: tvm.WeightsEnum) -> str:
    """Where torch looks for `weights` before downloading: <torch.hub.get_dir()>/checkpoints/."""
    filename = os.path.basename(urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _resolve_weights(tv_name: str, weights):
    """Accept None, a torchvision weights enum, or its name ("IMAGENET1K_V1", "DEFAULT")."""
    enum = tvm.get_model_weights(tv_name)
    try:
        return enum.verify(weights)
    except (KeyError, TypeError):
        names = ", ".join(["DEFAULT"] + [w.name for w in enum])
        raise ValueError(f"weights {weights!r} are not available for torchvision's {tv_name}; "
                         f"use None or one of {names}.") from None


def build(tv_name: str, num_classes: int, weights, progress: bool, **kwargs):
    """torchvision's `tv_name` with the timm methods; `weights` checked against `num_classes` first."""
    weights = _resolve_weights(tv_name, weights)
    if weights is not None and num_classes != len(weights.meta["categories"]):
        raise ValueError(f"{weights} predict {len(weights.meta['categories'])} classes, so "
                         f"num_classes must be {len(weights.meta['categories'])}, "
                         f"not {num_classes}.")
    builder = tvm.get_model_builder(tv_name)
    try:
        model = builder(weights=weights, progress=progress, num_classes=num_classes, **kwargs)
    except OSError as err:  # urllib's URLError when offline; also unreadable cache files
        raise RuntimeError(
            f"could not load the pretrained weights {weights} ({err}); download {weights.url} "
            f"and place it at {hub_checkpoint_path(weights)} (torch's hub cache, "
            f"torch.hub.get_dir()), where torchvision looks before downloading.") from err
    # Same instance, now with the timm methods: the subclass adds no state of its own.
    model.__class__ = TimmMobileNetV2 if tv_name == "mobilenet_v2" else TimmResNet
    return model
