"""Any timm or torchvision classifier by name (`"timm:resnet50"`, `"torchvision:resnet18"`), from scratch or from
its ImageNet weights, for datasets of your own (`dataset: folder`).

Pretrained weights come from the library's own download (timm: the Hugging Face hub; torchvision: its URL, cached
under torch.hub's folder) or, without network access, from a local file (`weights_file`: the `.safetensors` or
`.pth` state dict the library would download). Either way the ImageNet head is replaced by a new one for the
dataset's classes. When neither works the error says which file to put where. timm and torchvision are imported
only when such a model is built.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["LIBRARIES", "is_external", "external_exists", "build_external", "pretrained_mean_std"]

LIBRARIES = ("timm", "torchvision")


def is_external(name: str) -> bool:
    return isinstance(name, str) and name.split(":", 1)[0] in LIBRARIES and ":" in name


def _split(name: str) -> tuple[str, str]:
    library, model = name.split(":", 1)
    return library, model


def external_exists(name: str) -> bool:
    """Whether the library knows the model `name` (e.g. "timm:resnet18")."""
    library, model = _split(name)
    if library == "timm":
        import timm
        return timm.is_model(model)
    import torchvision.models as tvm
    return model in tvm.list_models(module=tvm)


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state


def _where_weights(name: str, param: str) -> str:
    """Which file a pretrained model needs and where the library looks for it, in words."""
    library, model = _split(name)
    if library == "timm":
        import timm
        cfg = timm.models.get_pretrained_cfg(model)
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            return f"timm has no ImageNet weights for {model!r}; choose a model that has some (timm.list_pretrained())"
        source = f"the model.safetensors of https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
        return f"download {source} on a machine with network access and give its path as {param}"
    from torchvision.models import get_model_weights
    url = get_model_weights(model).DEFAULT.url
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return (f"download {url} on a machine with network access and put it at {hub / url.rsplit('/', 1)[-1]} "
            f"or give its path as {param}")


def _replace_last_linear(model: nn.Module, num_classes: int) -> None:
    """A new head for `num_classes`: the model's last nn.Linear is replaced (torchvision classifiers)."""
    name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(last.in_features, num_classes, bias=last.bias is not None))


def pretrained_mean_std(name: str) -> tuple[tuple, tuple]:
    """The per-channel mean and std the model's ImageNet weights were trained with: timm's `pretrained_cfg`
    (0.5 for many ViTs), torchvision's DEFAULT weights' transforms."""
    library, model = _split(name)
    if library == "timm":
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(model)
        mean, std = (cfg.mean, cfg.std) if cfg is not None else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    else:
        from torchvision.models import get_model_weights
        steps = get_model_weights(model).DEFAULT.transforms()
        mean, std = steps.mean, steps.std
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def build_external(name: str, num_classes: int, pretrained: bool = False, weights_file: str = "",
                   weights_param: str = "weights_file", **model_kwargs) -> nn.Module:
    """The model `name` ("timm:<model>" or "torchvision:<model>") with a `num_classes`-way head; with
    `pretrained`, from its ImageNet weights (`weights_file`, or the library's download) under a new head.
    `model_kwargs` go to the library's constructor (e.g. img_size=32, patch_size=8 for a timm ViT)."""
    library, model = _split(name)
    path = Path(weights_file).expanduser() if weights_file else None
    if path is not None and not path.is_file():
        raise ValueError(f"{weights_param}={weights_file!r} of {name} does not exist; "
                         f"{_where_weights(name, weights_param)}.")
    try:
        if library == "timm":
            import timm
            overlay = {"file": str(path)} if path else None
            return timm.create_model(model, pretrained=pretrained, num_classes=num_classes,
                                     pretrained_cfg_overlay=overlay, **model_kwargs)
        import torchvision.models as tvm
        if not pretrained:
            return tvm.get_model(model, num_classes=num_classes, **model_kwargs)
        net = tvm.get_model(model, weights=None if path else "DEFAULT", **model_kwargs)
        if path:
            net.load_state_dict(_read_state_dict(path))
        _replace_last_linear(net, num_classes)
        return net
    except (OSError, RuntimeError, KeyError, ValueError) as err:  # no network, a file of another model
        if not pretrained:
            raise
        what = f"{weights_param}={str(path)!r}" if path else "its download (no network access?)"
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"the ImageNet weights of {name} could not be loaded from {what} ({first}); "
                         f"{_where_weights(name, weights_param)}.") from None
