"""What a run may name as its teacher or student: a registered model of the data's stem, or any timm/torchvision
classifier (`timm:<name>`, `torchvision:<name>`); checked before any work, one sentence (`ConfigError`) each."""
from __future__ import annotations

import difflib
import json

from ..validators import ConfigError
from .external import build_external, external_exists, is_external

__all__ = ["check_model_name", "check_pretrained", "check_model_kwargs", "file_name"]

# Keywords a run sets itself: the head's size from the data, the weights from `<role>_pretrained`.
_SET_BY_THE_RUN = ("num_classes", "pretrained", "weights", "pretrained_cfg_overlay")


def check_model_name(role: str, name: str, stem: str) -> None:
    """`name` builds with `stem` (`role`: 'teacher' or 'student', as the run parameter is called)."""
    from . import list_models
    if is_external(name):
        if not external_exists(name):
            library, model = name.split(":", 1)
            raise ConfigError(f"{role}={name!r}: {library} has no model {model!r}; see "
                              f"{'timm.list_models()' if library == 'timm' else 'torchvision.models.list_models()'}.")
        return
    names = list_models(stem)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(f"{role}={name!r} is not a model for this dataset{hint}; use one of {', '.join(names)}, "
                          "or any timm or torchvision classifier as 'timm:<name>' or 'torchvision:<name>'.")


def check_pretrained(role: str, name: str, pretrained: bool, weights_file: str) -> None:
    """ImageNet weights exist for timm and torchvision models only, and a weights file needs `pretrained`."""
    if pretrained and not is_external(name):
        raise ConfigError(f"{role}_pretrained=True needs a timm or torchvision model with ImageNet weights, not "
                          f"{role}={name!r}; use e.g. {role}='timm:resnet18' or 'torchvision:resnet18'.")
    if weights_file and not pretrained:
        raise ConfigError(f"{role}_weights_file={weights_file!r} is given but {role}_pretrained is False; set "
                          f"{role}_pretrained=True to start from it, or leave {role}_weights_file empty.")


def check_model_kwargs(role: str, name: str, kwargs: dict) -> None:
    """`<role>_kwargs` build `name`: keywords of a timm or torchvision constructor, tried on the meta device (no
    memory, no weights), so a misspelt or refused keyword stops the run before any work."""
    if not kwargs:
        return
    if not is_external(name):
        raise ConfigError(f"{role}_kwargs={kwargs!r} pass keywords to a timm or torchvision constructor, but "
                          f"{role}={name!r} is one of sddlib's own models; remove {role}_kwargs or use a "
                          "'timm:<name>' or 'torchvision:<name>' model.")
    reserved = [k for k in kwargs if k in _SET_BY_THE_RUN]
    if reserved:
        raise ConfigError(f"{role}_kwargs may not set {reserved[0]!r}, which the run sets itself (the data's class "
                          f"count, {role}_pretrained and {role}_weights_file); remove it from {role}_kwargs.")
    key = (name, json.dumps(kwargs, sort_keys=True, default=repr))
    if key not in _REFUSALS:   # a run checks its configuration several times: the model is tried once
        _REFUSALS[key] = _refusal(name, kwargs)
    refusal = _REFUSALS[key]
    if refusal:
        raise ConfigError(f"{role}_kwargs={kwargs!r} do not build {name} ({refusal}); give keywords its constructor "
                          "takes, e.g. {'img_size': 32, 'patch_size': 8} for a timm ViT.")


_REFUSALS: dict = {}


def _refusal(name: str, kwargs: dict) -> str | None:
    """Why `name` cannot be built with `kwargs` (the first line of the library's error), or None."""
    import torch
    try:
        with torch.device("meta"):
            build_external(name, num_classes=2, **kwargs)
    except Exception as err:  # noqa: BLE001 - TypeError, ValueError, AssertionError ...: said in one sentence
        text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        return f"{type(err).__name__}: {text}".rstrip(": ")
    return None


def file_name(arch: str) -> str:
    """A model name as part of a file or folder name ("timm:resnet18" -> "timm_resnet18")."""
    return arch.replace(":", "_")
