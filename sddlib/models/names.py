"""What a run may name as its teacher or student: a registered model of the data's stem, or any timm/torchvision
classifier (`timm:<name>`, `torchvision:<name>`); checked before any work, one sentence (`ConfigError`) each."""
from __future__ import annotations

import difflib

from ..validators import ConfigError
from .external import external_exists, is_external

__all__ = ["check_model_name", "check_pretrained", "file_name"]


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


def file_name(arch: str) -> str:
    """A model name as part of a file or folder name ("timm:resnet18" -> "timm_resnet18")."""
    return arch.replace(":", "_")
