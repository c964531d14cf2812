"""What every loader of `sddlib.data` shares: the torch datasets (in-memory uint8 images of one size or of
many sizes, image files), the fastai `DataLoaders` they are wrapped in (seeded order, `dls.info`), and the one-sentence
errors for a missing dataset."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .info import DatasetInfo

__all__ = ["DatasetNotFoundError", "TensorImageDataset", "VariableSizeImages", "ImageListDataset", "PIPELINES", "IN_MEMORY_PIPELINES",
           "FILE_PIPELINES", "check_pipeline",
           "make_dataloaders", "hold_out"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing (or unreadable) where it was looked for; the message says how to get it."""


class TensorImageDataset(Dataset):
    """In-memory uint8 images (N x 3 x H x W) and int labels.

    An item is `transform(uint8 image)` (torchvision transforms on tensors: same RNG draws and
    same pixels as the reference's PIL path), then `/255` (= ToTensor) and `Normalize`.
    """

    def __init__(self, images: torch.Tensor, targets, transform=None, mean=None, std=None, classes=None):
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3, images.shape
        self.images, self.targets = images, torch.as_tensor(np.asarray(targets), dtype=torch.long)
        assert len(self.images) == len(self.targets)
        from torchvision import transforms as T
        self.transform = transform
        self.normalize = T.Normalize(mean, std) if mean is not None else None
        self.vocab = classes

    def __len__(self):
        return len(self.images)

    def image(self, i) -> torch.Tensor:
        """Image i as a 3 x H x W uint8 tensor."""
        return self.images[i]

    def __getitem__(self, i):
        x = self.image(i)
        if self.transform is not None:
            x = self.transform(x)
        x = x.float().div(255)
        if self.normalize is not None:
            x = self.normalize(x)
        return x, int(self.targets[i])


class VariableSizeImages(TensorImageDataset):
    """In-memory uint8 images of many sizes and aspect ratios (a folder kept at one short side S) and int labels.

    Each image has a slot of one canvas, `images` N x 3 x S x L, its short side vertical: portrait images are
    stored transposed (`transposed[i]`), so a 4:3 and a 3:4 photo both fill S x 4S/3 and the padding is only what
    the longest image (at most L) leaves. `sizes[i]` is the image's (height, width) in its own orientation. One
    tensor, so that a loader on the device (`sddlib.data.device.DeviceResizedCropDL`) cuts a whole batch at once.
    An item is `transform(3 x H x W uint8 image)`, then `/255` and `Normalize`: `TensorImageDataset`'s items.
    """

    def __init__(self, images: torch.Tensor, sizes, transposed, targets, transform=None, mean=None, std=None,
                 classes=None):
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3, images.shape
        self.images = images
        self.sizes = torch.as_tensor(np.asarray(sizes), dtype=torch.long).view(-1, 2)
        self.transposed = torch.as_tensor(np.asarray(transposed), dtype=torch.bool).view(-1)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        assert len(self.images) == len(self.sizes) == len(self.transposed) == len(self.targets)
        from torchvision import transforms as T
        self.transform, self.vocab = transform, classes
        self.normalize = T.Normalize(mean, std) if mean is not None else None

    def image(self, i) -> torch.Tensor:
        """Image i as a 3 x H x W uint8 tensor in its own orientation (a view of the canvas)."""
        h, w = self.sizes[i].tolist()
        if self.transposed[i]:
            return self.images[i, :, :w, :h].transpose(1, 2)
        return self.images[i, :, :h, :w]


class ImageListDataset(Dataset):
    """Image files `(path, label)` read with PIL (RGB), as torchvision's ImageFolder does."""

    def __init__(self, samples, transform=None, classes=None):
        self.samples, self.transform, self.vocab = list(samples), transform, classes
        self.targets = [t for _, t in self.samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        path, target = self.samples[i]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def default_workers(in_memory: bool) -> int:
    return 0 if in_memory else min(8, os.cpu_count() or 1)


PIPELINES = ("device", "workers", "device_decode")
IN_MEMORY_PIPELINES = ("device", "workers")        # uint8 tensors: batched on the device, or per image in workers
FILE_PIPELINES = ("workers", "device_decode")      # image files: decoded in workers, or on the device


def check_pipeline(pipeline, dataset: str, choices) -> str:
    if pipeline not in choices:
        raise ValueError(f"pipeline={pipeline!r} is not available for {dataset}; use one of "
                         f"{', '.join(map(repr, choices))}.")
    return pipeline


def hold_out(targets, fraction: float, seed: int) -> tuple[list[int], list[int], dict]:
    """A tuner's split of the training images: (indices trained on, indices scored on, its record). Each class's
    images are shuffled with `seed` and round(n * fraction) of them (at least 1, and never the last) held out, so a
    tuned run is scored without reading the test split; a class of one image is trained on only."""
    targets = np.asarray(targets)
    rng = np.random.default_rng([int(seed), 39])
    keep, held = [], []
    for label in np.unique(targets):
        rows = rng.permutation(np.flatnonzero(targets == label))
        n_held = min(max(1, round(len(rows) * fraction)), len(rows) - 1)
        held += rows[:n_held].tolist()
        keep += rows[n_held:].tolist()
    if not held:
        raise ValueError(f"no class has two training images, so none can be held out for tune_fraction={fraction}; "
                         "use a larger subset.")
    keep, held = sorted(keep), sorted(held)
    return keep, held, {"tune_fraction": fraction, "seed": int(seed), "train_images": len(keep),
                        "held_out_images": len(held)}


def make_dataloaders(train_ds, valid_ds, info: DatasetInfo, *, bs, val_bs=None, drop_last, num_workers, seed,
                     device, pipeline="workers", augment=None, tune_split=None):
    """The fastai DataLoaders every loader returns: train shuffles in a `seed`-fixed order, valid keeps
    dataset order; `dls.info` holds the dataset's facts and `dls.c` (fastai's class count) is set.

    pipeline="workers" is the reference's: per-image transforms in DataLoader workers. "device" (in-memory
    `TensorImageDataset`s only) keeps the uint8 images on `device` and applies `augment` (the keyword
    arguments `padding` and `flip` of `DeviceImageDL`, the same crop/flip the train transform draws) to
    whole batches there; a `VariableSizeImages` train set gets ImageNet's random resized crop there instead
    (`DeviceResizedCropDL`, `augment` its `size` and `flip`). "device_decode" (`ImageListDataset`s whose transforms are tensor-capable) has the
    workers read file bytes only and decodes and transforms on `device` (`DeviceDecodeDL`). `tune_split` (the record
    of `hold_out`, when `valid_ds` is held out of the training images) becomes `dls.tune_split`."""
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.torch_core import default_device

    device = default_device() if device is None else torch.device(device)
    if pipeline == "device":
        from .device import DeviceImageDL, DeviceResizedCropDL
        train_dl = DeviceResizedCropDL if isinstance(train_ds, VariableSizeImages) else DeviceImageDL
        train = train_dl(train_ds, bs=bs, mean=info.mean, std=info.std, shuffle=True, drop_last=drop_last,
                         device=device, seed=seed, **(augment or {}))
        valid = DeviceImageDL(valid_ds, bs=val_bs or bs, mean=info.mean, std=info.std, device=device, seed=seed + 1)
    elif pipeline == "device_decode":
        from .device_decode import DeviceDecodeDL
        opts = dict(mean=info.mean, std=info.std, num_workers=num_workers, device=device)
        train = DeviceDecodeDL(train_ds, bs=bs, shuffle=True, drop_last=drop_last, seed=seed, **opts)
        valid = DeviceDecodeDL(valid_ds, bs=val_bs or bs, seed=seed + 1, **opts)
    else:
        # workers stay alive across epochs (no re-spawn per epoch) and hand over pinned batches on CUDA
        opts = dict(num_workers=num_workers, pin_memory=device.type == "cuda" and num_workers > 0,
                    persistent_workers=num_workers > 0)
        train = DataLoader(train_ds, bs=bs, shuffle=True, drop_last=drop_last, **opts)
        valid = DataLoader(valid_ds, bs=val_bs or bs, shuffle=False, drop_last=False, **opts)
        train.rng = random.Random(seed)  # fastai re-derives its per-epoch RNG from this one: seeded order
        valid.rng = random.Random(seed + 1)
    dls = DataLoaders(train, valid, device=device)
    dls.info = info
    dls.c = info.num_classes
    if tune_split is not None:
        dls.tune_split = tune_split
    return dls


def subset_size(n, subset):
    return n if not subset else min(int(subset), n)


def short_error(e: BaseException, limit=160) -> str:
    msg = str(e).strip().splitlines()
    msg = msg[0] if msg else ""
    s = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return s if len(s) <= limit else s[: limit - 3] + "..."


def need_dir(data_dir, name):
    if data_dir is None:
        raise ValueError(f"{name} needs data_dir (the folder that holds or will hold the dataset); "
                         f"pass it, e.g. get_dataloaders({name!r}, '/data/{name}').")
    return Path(data_dir).expanduser()
