"""Checks of what a run needs from the world before any work: the dataset folder's layout, writable folders, the
device, the teacher checkpoint or the published teachers' folder, and for a folder of your own images the weights
files and an image size the models' strides leave a feature map for. Each problem is one sentence (`ConfigError`).
And what a run accepts but its user may not expect (`run_warnings`), said as it starts and recorded in its metrics.

`sddlib.config` only says what the parameters are and resolves them; `check_environment(cfg)` is the step of
every run (`sddlib.run_pipeline`) that looks outside the process.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .checkpoints import check_checkpoint
from .config import ConfigError, RunConfig
from .data.folder import ImageFolderError, scan_folder
from .data.spec import DatasetLayoutError
from .regions import PAPER_SCALES, _model_parts, feature_grid
from .run_models import model_for

__all__ = ["check_environment", "check_folder", "check_scales_fit", "teacher_file_in", "run_warnings"]


def check_environment(cfg: RunConfig, teacher_needed: bool = True) -> None:
    """Dataset layout, writable output folder, device, teacher checkpoint: before any work."""
    _check_device(cfg.device)
    try:
        present = cfg.data_spec.check_layout(cfg.data_dir)
    except DatasetLayoutError as err:
        raise ConfigError(str(err)) from None
    if not present:  # downloaded into it
        _check_writable("data_dir", cfg.data_dir)
    if cfg.data_spec.named_by_folder:
        check_folder(cfg)
    _check_writable("output_dir", cfg.output_dir)
    if not teacher_needed:
        return
    check_scales_fit(cfg)
    for source, path in (("teacher_ckpt", cfg.teacher_ckpt), ("teachers_dir", cfg.teachers_dir)):
        if not path or cfg.teacher_weights:
            continue
        if source == "teachers_dir":
            if not Path(path).is_dir():
                raise ConfigError(f"teachers_dir={path!r} is not a folder; give the folder that holds "
                                  "<arch>_vanilla/<arch>_best.pth files (the authors' teachers), "
                                  "or leave it empty.")
            path = teacher_file_in(path, cfg.teacher)
        num_classes = cfg.num_classes
        model = model_for(cfg, "teacher", num_classes or 1000)
        check_checkpoint(model, path, arch=cfg.teacher, role="teacher", shapes=num_classes is not None)
        break


def check_scales_fit(cfg: RunConfig) -> None:
    """An M outside the paper's three against the teacher's and the student's feature maps at the run's image
    size (one forward pass of zeros each): a scale larger than a map is refused before any work. The paper's
    three keep the authors' rule, which pools a 4x4 grid from any map (`sddlib.regions.pool_regions`)."""
    if cfg.scales in PAPER_SCALES:
        return
    size = cfg.image_size or cfg.data_spec.image_sizes(cfg.data_dir)[2]
    for role in ("teacher", "student"):
        model = model_for(cfg, role, 2)   # its constructor keywords (img_size...) decide the map; the classes do not
        try:
            height, width = feature_grid(model, size)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ConfigError(f"M={cfg['M']} cannot be checked against {role} {cfg[role]} on {size}x{size} images: "
                              f"{err}") from None
        if cfg.scales[-1] > min(height, width):
            raise ConfigError(
                f"M={cfg['M']} is finer than the {height}x{width} feature map of {role} {cfg[role]} on {size}x{size} "
                f"images: use scales no larger than {min(height, width)}"
                + (" or a larger image_size." if cfg.data_spec.named_by_folder else "."))


def run_warnings(cfg: RunConfig) -> list[str]:
    """What the run accepts but the user may not expect, one sentence each (printed as the run starts and
    recorded in metrics.json)."""
    out = []
    if cfg.ignored:
        given = ", ".join(f"{k}={v!r}" for k, v in cfg.ignored.items())
        out.append(f"method {cfg.method} does not read {given}; its loss takes {', '.join(cfg.method_spec.loss_keys)}.")
    if cfg.recipe_change:
        out.append(_recipe_sentence(cfg.method, **cfg.recipe_change))
    late = [s for s in cfg.lr_decay_stages if s >= cfg.epochs]
    stages = list(cfg.lr_decay_stages)
    if stages and late == stages:
        out.append(f"lr_decay_stages {stages} lie at or beyond epochs={cfg.epochs}: the LR never decays in this run.")
    elif late:
        out.append(f"lr_decay_stages {late} of {stages} lie at or beyond epochs={cfg.epochs}: those decays never "
                   "happen in this run.")
    return out


def _recipe_sentence(method: str, recipe: str, took: dict, kept: dict) -> str:
    """"method dkd replaced the values that were kd's recipe (recipe: kd) by its own: ce_weight 1 (was 0.1), ...;
    kept as given: kd_weight 2." """
    def short(value):
        return f"{value:g}" if isinstance(value, float) else str(value)
    took_text = ", ".join(f"{k} {short(now)} (was {short(old)})" if now is not None else
                          f"no {k} (was {short(old)}; {method} does not read it)" for k, (now, old) in took.items())
    kept_text = ", ".join(f"{k} {short(v)}" for k, v in kept.items())
    return (f"method {method} replaced the values that were {recipe}'s recipe (recipe: {recipe}) by its own: "
            + (took_text or f"no value was {recipe}'s") + (f"; kept as given: {kept_text}" if kept else "") + ".")


def teacher_file_in(teachers_dir, arch: str) -> Path:
    """The authors' layout of published teachers: `<dir>/<arch>_vanilla/<arch>_best.pth` (CUB-200), or the
    CIFAR-100 release's `<dir>/<arch>_vanilla/ckpt_epoch_240.pth`."""
    folder = Path(teachers_dir) / f"{arch}_vanilla"
    for name in (f"{arch}_best.pth", "ckpt_epoch_240.pth"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"teachers_dir={str(teachers_dir)!r} has no teacher {arch} (expected {folder}/{arch}_best.pth); "
                      "point teachers_dir at the authors' teacher folder, or leave it empty to train one here.")


def _check_device(device):
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} is not available on this machine (no CUDA GPU); "
                              "use 'auto' or 'cpu'.")
        index = int(device[5:] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r} does not exist; this machine has {torch.cuda.device_count()} "
                              "GPU(s), use 'cuda:0' or 'auto'.")


def _check_writable(name, folder):
    """A file is created and removed in the folder (or its nearest existing parent): permission bits alone pass
    folders no one can write to, such as /proc for root."""
    path = Path(folder).expanduser().absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        if existing is None or not existing.is_dir():
            raise OSError
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".sddlib-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError:
        raise ConfigError(f"{name}={folder!r} cannot be written ({existing} is not a writable folder); "
                          "choose a folder you can write to.") from None


def check_folder(cfg: RunConfig) -> None:
    """A folder of your own images, before any work: its layout (`sddlib.data.scan_folder`, one sentence per
    problem), the weights files, and an image size the models' strides leave a feature map for the regions."""
    try:
        classes = len(scan_folder(cfg.data_dir, cfg.val_fraction).classes)
    except ImageFolderError as err:
        raise ConfigError(str(err)) from None
    for role in ("teacher", "student"):
        path = cfg[f"{role}_weights_file"]
        if path and not Path(path).expanduser().is_file():
            raise ConfigError(f"{role}_weights_file={path!r} is not a file; give the path of the {cfg[role]} "
                              "ImageNet weights (.safetensors or .pth).")
    # the paper's SD pools a 4x4 grid from the map (the authors' rule); any other M is checked by check_scales_fit
    need = 4 if cfg.decoupled and cfg.scales in PAPER_SCALES else 1
    for role in ("teacher", "student"):
        model = model_for(cfg, role, classes).eval()
        try:
            features, _ = _model_parts(model)
        except TypeError as err:
            raise ConfigError(f"{role}={cfg[role]!r} cannot be scale-decoupled: {err}") from None
        try:
            with torch.no_grad():
                fmap = features(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
            side = min(fmap.shape[-2:]) if fmap.ndim == 4 else need  # token maps: the patch grid is checked by SD
        except RuntimeError:
            side = 0
        if side < need:
            raise ConfigError(f"image_size={cfg.image_size} is too small for {role} {cfg[role]}: its feature map "
                              f"would be {side}x{side}, and M={cfg['M']} needs at least {need}x{need}; raise "
                              "image_size or choose a model with a smaller stride.")
