"""Model registry: every network of the SDD experiments behind one `create_model` call.

Which network a (name, stem) pair gives:

* ``stem="cifar"`` (default): the 23 CIFAR networks of the authors' code base (CRD/mdistiller),
  for 32x32 inputs, with the reference's exact layers and checkpoint keys::

      resnet8 resnet14 resnet20 resnet32 resnet44 resnet56 resnet110 resnet8x4 resnet32x4
      ResNet18 ResNet50 wrn_16_1 wrn_16_2 wrn_40_1 wrn_40_2 vgg8 vgg11 vgg13 vgg16 vgg19
      MobileNetV2 ShuffleV1 ShuffleV2

  plus two timm vision transformers for 32x32 inputs (patch 4, an 8x8 token grid), which are
  not in the authors' code: ``DeiT_Tiny_p4`` (DeiT-Tiny's width and depth) and ``ViT_micro_p4``
  (a CPU-sized one for the demonstration notebook); see ``sddlib/models/vit.py``.

* ``stem="cub"``: CUB-200 variants for 224x224 inputs. resnet8x4, resnet32x4, ResNet50,
  ShuffleV1, ShuffleV2 and MobileNetV2 get a 7x7 stride-2 first conv (MobileNetV2 also a 2x2
  max-pool after its stem); vgg8 ... vgg19 are unchanged, as in the reference. Other names
  raise ValueError.
* ``stem="torchvision"``: ImageNet networks for 224x224 inputs. torchvision's ResNet18, ResNet34,
  ResNet50 and MobileNetV2 (timm interface added, keys unchanged); extra keywords (``weights=``,
  ``progress=``, ...) go to torchvision's builder, e.g.
  ``create_model("ResNet34", num_classes=1000, stem="torchvision", weights="IMAGENET1K_V1")``.
  And MobileNetV1, the student of the paper's ImageNet table, in the authors' layout (their
  checkpoint keys; no pretrained weights).

* ``"timm:<name>"`` and ``"torchvision:<name>"`` (any stem): any classifier of those libraries, from scratch
  or with ``pretrained=True`` from its ImageNet weights under a new head (``weights_file=``: a local copy of
  them); other keywords go to the library's constructor (``img_size=32, patch_size=8``); see
  ``sddlib/models/external.py``.

Every model has ``forward(x) -> logits``, ``forward_features(x) -> B x C x H x W`` (the map the
global pool consumes), ``forward_head(fmap) -> logits`` and ``get_classifier()``.
"""
from __future__ import annotations

import difflib
import inspect

import torch.nn as nn

from . import mobilenetv1, mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, vit, wrn  # noqa: F401
from . import torchvision_models  # noqa: F401  (imported last: it only adds the stem)
from ._registry import STEMS, builders, register
from .external import build_external, external_exists, is_external, pretrained_mean_std
from .names import check_model_kwargs, check_model_name, check_pretrained, file_name
from .renormalized import Renormalized

__all__ = ["create_model", "list_models", "register", "STEMS", "is_external", "external_exists", "check_model_name",
           "check_pretrained", "check_model_kwargs", "file_name", "pretrained_mean_std", "Renormalized"]


def list_models(stem: str | None = None) -> list[str]:
    """Sorted model names, for one stem or (default) for any stem.

    With no argument this is the 23 CIFAR names plus ``ResNet34`` and ``MobileNetV1``, which exist
    only with ``stem="torchvision"`` (the other torchvision names coincide with CIFAR ones).
    """
    if stem is not None:
        _check_stem(stem)
    return sorted((name for name, per_stem in builders().items()
                   if stem is None or stem in per_stem), key=str.lower)


def create_model(name: str, num_classes: int = 100, stem: str = "cifar", **kwargs) -> nn.Module:
    """Build `name` for the inputs `stem` stands for, with a `num_classes`-way head.

    `num_classes` defaults to 100 (CIFAR-100) whatever the stem: pass 200 for CUB-200 and 1000
    for ImageNet (torchvision weights require 1000).

    Raises ValueError (one sentence) for an unknown name or stem, a name without that stem,
    `num_classes` < 2, or keywords the builder does not take.
    """
    _check_stem(stem)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if is_external(name):
        return build_external(name, num_classes, **kwargs)
    registry = builders()
    if name not in registry:
        raise ValueError(_unknown_name_message(name, registry))
    if stem not in registry[name]:
        offered = ", ".join(list_models(stem))
        has = ", ".join(repr(s) for s in registry[name])
        raise ValueError(f"{name!r} has no stem={stem!r} variant (it has {has}); "
                         f"stem={stem!r} offers: {offered}.")
    builder = registry[name][stem]
    try:
        inspect.signature(builder).bind(num_classes=num_classes, stem=stem, **kwargs)
    except TypeError:
        raise ValueError(f"{name!r} with stem={stem!r} does not accept the keyword(s) "
                         f"{', '.join(sorted(kwargs))}.") from None
    return builder(num_classes=num_classes, stem=stem, **kwargs)


def _check_stem(stem) -> None:
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; use one of {', '.join(map(repr, STEMS))}.")


def _unknown_name_message(name, registry) -> str:
    by_lower = {known.lower(): known for known in registry}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=3, cutoff=0.6)
    hint = f" (close matches: {', '.join(by_lower[c] for c in close)})" if close else ""
    return f"unknown model {name!r}{hint}; see sddlib.models.list_models() for all names."
