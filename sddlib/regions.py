"""Scale-decoupled region logits: pool the final feature map at several scales and apply the
model's own classifier to every pooled region.

Region order is fixed across the library: scales ascending, row-major within a scale, so region 0
is the global (1x1) one. As in the authors' code, the finest grid is pooled from the feature map
and every coarser grid from that finest pooled map (pool of pool); this only matters when the map
size is not divisible by the finest scale (7x7 maps on 224px inputs).
"""
from __future__ import annotations

import re
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SUPPORTED_SCALES", "parse_scales", "num_regions", "region_scales", "pool_regions",
           "ScaleDecoupled"]

# The scale sets of the paper (M in its notation); [1] is the plain, non-decoupled method.
SUPPORTED_SCALES = ((1,), (1, 2), (1, 2, 4))
_ACCEPTED = "one of [1], [1,2], [1,2,4] (a list or tuple of ints, or that text)"


def parse_scales(scales) -> tuple[int, ...]:
    """Normalise a user's M (`(1, 2, 4)`, `[1, 2]` or the text `"[1,2,4]"`) to a tuple of ints."""
    value = scales
    if isinstance(scales, str):
        text = scales.replace(" ", "")
        if not re.fullmatch(r"\[\d+(,\d+)*\]", text):
            raise ValueError(f"scales {scales!r} is not understood; use {_ACCEPTED}.")
        value = tuple(int(s) for s in text[1:-1].split(","))
    elif isinstance(scales, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool)
                                                   for s in scales):
        value = tuple(scales)
    else:
        raise ValueError(f"scales {scales!r} is not understood; use {_ACCEPTED}.")
    if value not in SUPPORTED_SCALES:
        raise ValueError(f"scales {scales!r} is not supported; use {_ACCEPTED}.")
    return value


def num_regions(scales) -> int:
    """N = sum of s^2 over the scales: 21 for [1,2,4]."""
    return sum(s * s for s in parse_scales(scales))


def region_scales(scales) -> list[int]:
    """The scale each region index belongs to, e.g. [1, 2, 2, 2, 2] for (1, 2)."""
    return [s for s in parse_scales(scales) for _ in range(s * s)]


def pool_regions(feature_map: torch.Tensor, scales) -> torch.Tensor:
    """Pool a B x C x H x W map into B x C x N region vectors in the library's region order."""
    scales = parse_scales(scales)
    if feature_map.dim() != 4:
        raise ValueError(f"expected a B x C x H x W feature map, got shape {tuple(feature_map.shape)}.")
    finest = F.adaptive_avg_pool2d(feature_map, scales[-1])
    pooled = [finest if s == scales[-1] else F.adaptive_avg_pool2d(finest, s) for s in scales]
    return torch.cat([p.flatten(2) for p in pooled], dim=2)


def _torchvision_parts(model: nn.Module):
    """Feature extractor and head of torchvision classifiers, which lack timm's interface."""
    from torchvision.models import MobileNetV2, ResNet

    if isinstance(model, ResNet):
        def features(x):
            m = model
            x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            return m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return features, model.fc
    if isinstance(model, MobileNetV2):
        return model.features, model.classifier
    return None


def _model_parts(model: nn.Module) -> tuple[Callable, nn.Module]:
    if hasattr(model, "forward_features") and hasattr(model, "get_classifier"):
        return model.forward_features, model.get_classifier()
    parts = _torchvision_parts(model)
    if parts is None:
        raise TypeError(
            f"{type(model).__name__} has no forward_features()/get_classifier() (the timm interface) "
            "and is not a torchvision ResNet or MobileNetV2; add those two methods to wrap it.")
    return parts


class ScaleDecoupled(nn.Module):
    """Wrap a classifier so one forward pass returns `(logits, region_logits)`.

    `region_logits` is B x num_classes x N: the model's own head applied to each pooled region, so
    SD distillation needs no extra parameters and no second forward pass.
    """

    def __init__(self, model: nn.Module, scales=(1, 2, 4)):
        super().__init__()
        self.model = model
        self.scales = parse_scales(scales)
        self._features, self._head = _model_parts(model)

    @property
    def num_regions(self) -> int:
        return num_regions(self.scales)

    def forward(self, x: torch.Tensor):
        fmap = self._features(x)
        if hasattr(self.model, "forward_head"):
            logits = self.model.forward_head(fmap)
        else:
            logits = self._head(torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1))
        regions = pool_regions(fmap, self.scales)                     # B x C x N
        region_logits = self._head(regions.transpose(1, 2))          # B x N x K
        return logits, region_logits.transpose(1, 2)                 # B x K x N

    def extra_repr(self) -> str:
        return f"scales={list(self.scales)}"
