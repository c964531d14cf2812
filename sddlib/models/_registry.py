"""The single model registry: builder functions keyed by model name and input stem.

A name can have one builder per stem ("cifar", "cub", "torchvision"), so the paper's names
(e.g. ``ResNet50``) stay the same across datasets while the network behind them changes.
"""
from __future__ import annotations

from typing import Callable, Iterable

__all__ = ["STEMS", "register", "builders"]

# Accepted values of `stem`, with the inputs each one is built for.
STEMS = {
    "cifar": "CIFAR networks of the reference code, for 32x32 inputs",
    "cub": "CUB-200 variants of the CIFAR networks (strided 7x7 stem), for 224x224 inputs",
    "torchvision": "ImageNet networks for 224x224 inputs: torchvision's with the timm interface added, "
                   "and the authors' MobileNetV1",
}

# name -> {stem -> builder(num_classes, stem, **kw)}
_REGISTRY: dict[str, dict[str, Callable]] = {}


def register(fn: Callable | None = None, *, name: str | None = None,
             stems: Iterable[str] = ("cifar",)):
    """Decorator adding a builder under `name` (default: the function's name) for `stems`."""
    def add(builder: Callable) -> Callable:
        key = name or builder.__name__
        for stem in stems:
            if stem not in STEMS:
                raise ValueError(f"cannot register {key!r} for unknown stem {stem!r}.")
            per_stem = _REGISTRY.setdefault(key, {})
            if stem in per_stem:
                raise ValueError(f"model {key!r} is already registered for stem {stem!r}.")
            per_stem[stem] = builder
        return builder

    return add(fn) if fn is not None else add


def builders() -> dict[str, dict[str, Callable]]:
    """The registry itself (read-only by convention)."""
    return _REGISTRY
