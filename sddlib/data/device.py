"""Device-resident loading for small in-memory image sets (CIFAR-100, digit mosaics).

The reference pipeline crops, flips and normalises every image on the CPU, one PIL/tensor call at a
time, then copies each batch to the GPU. With 32-px images and batches of 64 that per-image work, not
the network, bounds a GPU's throughput. Here the whole uint8 dataset lives on the training device and
each batch is permuted, padded-and-cropped, flipped and normalised there in a handful of batched
tensor operations, with nothing crossing the host per batch.

The augmentation has the reference's distribution: for `RandomCrop(size, padding=p)` (zero padding)
the crop offsets are uniform over 0..2p in each axis, and `RandomHorizontalFlip()` flips with
probability 1/2; for a given offset and flip the pixels equal torchvision's.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from fastai.data.load import DataLoader
from fastai.torch_core import to_detach

__all__ = ["crop_flip", "DeviceImageDL"]


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad a B x C x H x W batch by `padding`, crop H x W at per-image `offsets` (B x 2: row, col)
    and mirror the images whose `flips` is true — one gather for the whole batch."""
    b, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4) if padding else images
    rows = offsets[:, :1] + torch.arange(h, device=images.device)                    # B x H
    cols = torch.arange(w, device=images.device).expand(b, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[:, 1:]         # B x W
    index = rows[:, :, None] * padded.shape[-1] + cols[:, None, :]                  # B x H x W
    flat = padded.flatten(2)                                                         # B x C x (H+2p)(W+2p)
    return flat.gather(2, index.flatten(1)[:, None, :].expand(b, c, h * w)).view(b, c, h, w)


class DeviceImageDL(DataLoader):
    """A fastai `DataLoader` whose batches are cut from a copy of `dataset`'s uint8 images and labels held
    on the training device.

    `dataset` is an in-memory set with `images` (uint8 N x C x H x W) and `targets` (a
    `sddlib.data.build.TensorImageDataset`); it stays the loader's `dataset`, so item access, `layout` and
    `vocab` work as for the reference loader, while batches never touch it. `padding` > 0 turns on the
    reference's random crop, `flip` its horizontal flip; every batch is then scaled to [0, 1] and
    normalised with `mean`/`std`. With `shard` (`sddlib.distributed.Shard`) `bs` is the global batch and the
    loader yields this process's part of each one, cut after the draws, so N processes together see the
    batches one process sees. Shuffling and augmentation draw from a device generator seeded once per
    epoch from fastai's own per-loader RNG (`self.rng`), so the order is reproducible from the loader's seed
    and restorable by restoring that RNG.
    """

    def __init__(self, dataset, *, bs: int, mean, std, shuffle=False, drop_last=False, padding: int = 0,
                 flip: bool = False, device=None, seed: int = 0, shard=None):
        images = dataset.images
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"DeviceImageDL needs uint8 B x C x H x W images, got {images.dtype} {tuple(images.shape)}.")
        device = torch.device(device) if device is not None else images.device
        super().__init__(dataset, bs=bs, shuffle=shuffle, drop_last=drop_last, device=device)
        self.padding, self.flip, self.shard = int(padding), bool(flip), shard
        self.norm_stats = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        self.rng = random.Random(seed)
        self._move(device)

    def _move(self, device):
        self._images = self.dataset.images.to(device)
        self._targets = torch.as_tensor(self.dataset.targets, dtype=torch.long).to(device)
        self._stats = [torch.tensor(v, device=device).view(1, -1, 1, 1) for v in self.norm_stats]

    def to(self, device):
        """Move the device copy with the loader (fastai's `DataLoaders(device=...)` calls this)."""
        super().to(device)
        if self.device is not None and hasattr(self, "_images"):
            self._move(self.device)
        return self

    def __iter__(self):
        self.randomize()
        images, targets = self._images, self._targets
        dev = images.device
        gen = torch.Generator(device=dev)
        gen.manual_seed(self.rng.randint(0, 2**62))
        n = len(images)
        order = torch.randperm(n, generator=gen, device=dev) if self.shuffle else torch.arange(n, device=dev)
        if self.shard is not None:
            order = self.shard.order(order)
            n = len(order)
        mean, std = self._stats
        stop = n - n % self.bs if self.drop_last else n
        for start in range(0, stop, self.bs):
            idx = order[start:start + self.bs]
            b = len(idx)
            if self.padding or self.flip:
                offsets = (torch.randint(0, 2 * self.padding + 1, (b, 2), generator=gen, device=dev)
                           if self.padding else torch.zeros(b, 2, dtype=torch.long, device=dev))
                flips = (torch.rand(b, generator=gen, device=dev) < 0.5 if self.flip
                         else torch.zeros(b, dtype=torch.bool, device=dev))
            if self.shard is not None:  # this process's part of the global batch, with the draws one process makes
                part = self.shard.part(b)
                if part.start == part.stop:
                    continue
                idx = idx[part]
                if self.padding or self.flip:
                    offsets, flips = offsets[part], flips[part]
            x = images[idx]
            if self.padding or self.flip:
                x = crop_flip(x, offsets, flips, self.padding)
            yield (x.float().div_(255).sub_(mean).div_(std), targets[idx])

    def __len__(self):
        if self.shard is None:
            return super().__len__()
        return self.shard.batches(self.n, self.bs, self.drop_last)

    def one_batch(self):
        return next(iter(self))

    def to_detach(self, b, cpu=True, gather=True):
        """fastai's `Learner.to_detach` asks the loader: a shard keeps this process's own values, never gathered
        per batch (`sddlib.distributed.ShardedDL.to_detach` says why)."""
        return to_detach(b, cpu, gather=gather and self.shard is None)

    def new(self, dataset=None, cls=None, **kwargs):
        """A copy with other loader options (fastai's `get_preds` asks for an unshuffled one)."""
        options = dict(bs=self.bs, mean=self.norm_stats[0], std=self.norm_stats[1], shuffle=self.shuffle, drop_last=self.drop_last,
                       padding=self.padding, flip=self.flip, device=self.device, shard=self.shard)
        options.update({k: v for k, v in kwargs.items() if k in options})
        return DeviceImageDL(self.dataset if dataset is None else dataset, **options,
                             seed=self.rng.randint(0, 2**31))
