"""Checkpoints: load model weights strictly and safely (`weights_only=True`), write every file of a run
atomically (temporary file, fsync, rename), keep the resumable training state, fetch the published
CIFAR-100 teachers once however many processes ask at the same time (`sddlib.locks`).

Errors name the role of the file (teacher, baseline student, resume checkpoint) in one sentence.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import torch
import torch.nn as nn

from .locks import run_lock

__all__ = ["CheckpointError", "DiskFullError", "load_checkpoint", "check_checkpoint", "save_checkpoint",
           "write_checkpoint", "read_checkpoint",
           "atomic_write", "write_json", "teacher_cache_path", "shipped_teacher_path",
           "fetch_cifar100_teachers", "cifar100_teacher_path", "CIFAR100_TEACHERS_URL", "CIFAR100_COMPLETE",
           "CIFAR100_RELEASE"]

# The CRD/mdistiller release of the CIFAR-100 teachers (`cifar_teachers.tar`), unpacked as
# `cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`, each `{"model": state_dict, ...}`.
CIFAR100_TEACHERS_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
CIFAR100_COMPLETE = ".complete"  # written last into cifar_teachers/: without it the folder is not present
# The teachers that release holds (the CIFAR-100 rows of the paper use these): any other has no published file.
CIFAR100_RELEASE = ("resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50")

_HOW_TO_FIX = {
    "teacher": "give the path of a {what} checkpoint or leave teacher_ckpt empty to train and cache one",
    "baseline student": "run the M=[1] baseline of this configuration again (force=True)",
    "resume checkpoint": "delete it to start the run over (or run with force=True)",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be the requested model: missing, corrupt, unsafe, or another architecture."""


class DiskFullError(OSError):
    """A write that found its disk (or quota) full: one sentence naming the folder and its free space; the file it
    would have replaced is left whole."""

    def __init__(self, path: Path):
        free = shutil.disk_usage(path.parent).free
        self.sentence = (f"the disk holding {path.parent} is full ({free / 2**20:.1f} MiB free) and {path.name} could "
                         f"not be written; the previous {path.name}, if any, is kept whole: free space there (or give "
                         "another output_dir) and run again, and a run resumes from its last kept epoch.")
        super().__init__(self.sentence)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# --- writing ---------------------------------------------------------------------------------------
def atomic_write(path, data: bytes) -> Path:
    """Write `data` to `path` so that a crash or a full disk leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in _DISK_FULL:
            raise DiskFullError(path) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_checkpoint(path, obj) -> Path:
    """`torch.save(obj)` atomically."""
    return atomic_write(path, _torch_bytes(obj))


def save_checkpoint(model: nn.Module, path, **extra) -> Path:
    """Write `{"model": state_dict, **extra}` (the mdistiller/CRD layout) atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return write_checkpoint(path, {"model": state, **extra})


def write_json(path, data: dict) -> Path:
    return atomic_write(path, json.dumps(data, indent=2).encode())


# --- reading ---------------------------------------------------------------------------------------
def read_checkpoint(path, role: str, what: str = "model"):
    """`torch.load(weights_only=True)` with one-sentence errors; pickled code is refused, never run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{role} checkpoint {path} does not exist; "
                              f"{_HOW_TO_FIX.get(role, 'check the path').format(what=what)}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, pickled code, ...
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(f"{role} checkpoint {path} contains pickled Python objects that could run code, "
                                  "and only plain tensors and containers are loaded; re-save it as "
                                  "{'model': model.state_dict()}.") from None
        raise CheckpointError(f"{role} checkpoint {path} could not be read ({type(err).__name__}); "
                              "the file is corrupt or not a PyTorch checkpoint, download or write it again.") from None


def _state_dict_of(obj):
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        return None
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(model: nn.Module, path, arch: str | None = None, role: str = "teacher") -> nn.Module:
    """Load `{"model": state_dict}` (mdistiller/CRD format) or a plain state dict into `model`, strictly (every
    key, every shape: `check_checkpoint`). `role` names the file in errors."""
    model.load_state_dict(check_checkpoint(model, path, arch, role), strict=True)
    return model


def check_checkpoint(model: nn.Module, path, arch: str | None = None, role: str = "teacher",
                     shapes: bool = True) -> dict:
    """The state dict in `path` once it is known to fit `model` (same keys; same shapes unless `shapes=False`,
    for a check made before the class count is known); `model` is left as it is. One sentence otherwise."""
    path = Path(path)
    what = arch or type(model).__name__
    state = _state_dict_of(read_checkpoint(path, role, what))
    if state is None:
        raise CheckpointError(f"{role} checkpoint {path} holds no state dict (expected {{'model': state_dict}} "
                              "or a plain state dict).")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{role} checkpoint {path} is not a {what}: {len(missing)} parameters missing "
                              f"(e.g. {missing[:2]}) and {len(unexpected)} unexpected (e.g. {unexpected[:2]}).")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong and shapes:
        k, got, want = wrong[0]
        raise CheckpointError(f"{role} checkpoint {path} does not fit {what}: {k} has shape {got}, expected {want} "
                              "(another class count or width?).")
    return state


# --- teachers on disk ------------------------------------------------------------------------------
def teacher_cache_path(output_dir, dataset: str, arch: str) -> Path:
    return Path(output_dir) / "teachers" / dataset / f"{arch}.pth"


def shipped_teacher_path(dataset: str, arch: str) -> Path:
    """A teacher that ships with sddlib, in the teacher cache's format (weights, protocol, top-1).

    digit_mosaic/resnet14.pth is the quickstart's teacher, shipped so that `make demo` spends its minutes on
    the students: trained by `benchmarks/sd_gain.py` (the dataset's teacher protocol, seed 0, one CPU thread,
    torch 2.14.1) and retrained bit for bit by `teacher_source.train_teacher` under those settings.
    """
    return Path(__file__).parent / "teachers" / dataset / f"{arch}.pth"


def cifar100_teacher_path(dest, arch: str) -> Path:
    """Where `fetch_cifar100_teachers(dest)` puts the published checkpoint of `arch`."""
    return Path(dest) / "cifar_teachers" / f"{arch}_vanilla" / "ckpt_epoch_240.pth"


def fetch_cifar100_teachers(dest, url: str = CIFAR100_TEACHERS_URL) -> Path:
    """Download and unpack the published CIFAR-100 teachers under `dest`, once however many processes ask: one at
    a time (a lock in `dest`) downloads into a folder of its own, unpacks there, moves the teachers into place and
    writes their completeness marker last. A folder without the marker (an unpack that never finished) is not
    present: it is replaced."""
    dest = Path(dest)
    root = dest / "cifar_teachers"
    if (root / CIFAR100_COMPLETE).is_file():
        return root
    with run_lock(dest, wait=True, name=".cifar_teachers.lock"):
        if (root / CIFAR100_COMPLETE).is_file():  # fetched by another process while this one waited
            return root
        print(f"downloading the CIFAR-100 teachers from {url} into {dest}", flush=True)
        work = Path(tempfile.mkdtemp(prefix=".cifar_teachers.", dir=dest))
        try:
            archive, unpacked = work / "cifar_teachers.tar", work / "unpacked" / "cifar_teachers"
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked.parent, filter="data")
            if not any(unpacked.glob("*_vanilla/ckpt_epoch_240.pth")):
                raise tarfile.TarError("it holds no cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth")
            if root.exists():
                root.rename(work / "incomplete")  # removed with the rest of the work folder
            unpacked.rename(root)
            atomic_write(root / CIFAR100_COMPLETE, f"{url}\n".encode())
        except (OSError, tarfile.TarError) as err:
            raise CheckpointError(f"could not fetch the CIFAR-100 teachers from {url} ({err}); download "
                                  f"cifar_teachers.tar by hand, unpack it into {dest} and create the empty file "
                                  f"{root / CIFAR100_COMPLETE}.") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return root
