"""Teachers: load published checkpoints strictly, fetch the public CIFAR-100 archive, or train and
cache a teacher when none is given, so a run on a new dataset is self-contained."""
from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "teacher_cache_path",
           "fetch_cifar100_teachers", "cifar100_teacher_path", "CIFAR100_TEACHERS_URL"]

# The CRD/mdistiller release of the CIFAR-100 teachers (`cifar_teachers.tar`), unpacked as
# `cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`, each `{"model": state_dict, ...}`.
CIFAR100_TEACHERS_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"


class CheckpointError(ValueError):
    """A checkpoint that cannot be the requested model: missing, corrupt, or another architecture."""


def _state_dict_of(obj):
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        return None
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(model: nn.Module, path, arch: str | None = None) -> nn.Module:
    """Load `{"model": state_dict}` (mdistiller/CRD format) or a plain state dict into `model`, strictly."""
    path = Path(path)
    what = arch or type(model).__name__
    if not path.is_file():
        raise CheckpointError(f"teacher checkpoint {path} does not exist; give the path of a {what} checkpoint "
                              "or leave teacher_ckpt empty to train and cache one.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, pickled code, ...
        raise CheckpointError(f"teacher checkpoint {path} could not be read ({type(err).__name__}); "
                              "the file is corrupt or not a PyTorch checkpoint, download it again.") from None
    state = _state_dict_of(obj)
    if state is None:
        raise CheckpointError(f"teacher checkpoint {path} holds no state dict (expected {{'model': state_dict}} "
                              "or a plain state dict).")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"teacher checkpoint {path} is not a {what}: {len(missing)} parameters missing "
                              f"(e.g. {missing[:2]}) and {len(unexpected)} unexpected (e.g. {unexpected[:2]}).")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(f"teacher checkpoint {path} does not fit {what}: {k} has shape {got}, expected {want} "
                              "(another class count or width?).")
    model.load_state_dict(state, strict=True)
    return model


def save_checkpoint(model: nn.Module, path, **extra) -> Path:
    """Write `{"model": state_dict, **extra}` atomically, so an interrupted run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save({"model": model.state_dict(), **extra}, tmp)
    Path(tmp.name).replace(path)
    return path


def teacher_cache_path(output_dir, dataset: str, arch: str) -> Path:
    return Path(output_dir) / "teachers" / dataset / f"{arch}.pth"


def cifar100_teacher_path(dest, arch: str) -> Path:
    """Where `fetch_cifar100_teachers(dest)` puts the published checkpoint of `arch`."""
    return Path(dest) / "cifar_teachers" / f"{arch}_vanilla" / "ckpt_epoch_240.pth"


def fetch_cifar100_teachers(dest, url: str = CIFAR100_TEACHERS_URL) -> Path:
    """Download and unpack the published CIFAR-100 teachers under `dest` (skipped when present)."""
    dest = Path(dest)
    root = dest / "cifar_teachers"
    if root.is_dir() and any(root.glob("*_vanilla/ckpt_epoch_240.pth")):
        return root
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "cifar_teachers.tar.part"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except (OSError, tarfile.TarError) as err:
        raise CheckpointError(f"could not fetch the CIFAR-100 teachers from {url} ({err}); download "
                              f"cifar_teachers.tar by hand and unpack it into {dest}.") from None
    finally:
        archive.unlink(missing_ok=True)
    return root
