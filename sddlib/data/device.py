"""Device-resident loading for in-memory image sets (CIFAR-100, digit mosaics, a folder that fits in memory).

The reference pipeline crops, flips and normalises every image on the CPU, one PIL/tensor call at a
time, then copies each batch to the GPU. With 32-px images and batches of 64 that per-image work, not
the network, bounds a GPU's throughput. Here the whole uint8 dataset lives on the training device and
each batch is permuted, padded-and-cropped, flipped and normalised there in a handful of batched
tensor operations, with nothing crossing the host per batch.

The augmentation has the reference's distribution: for `RandomCrop(size, padding=p)` (zero padding)
the crop offsets are uniform over 0..2p in each axis, and `RandomHorizontalFlip()` flips with
probability 1/2; for a given offset and flip the pixels equal torchvision's.

Images of many sizes (a folder with the ImageNet recipe) are kept at one short side, each in its own slot of a
canvas (`VariableSizeImages`), and `DeviceResizedCropDL` cuts ImageNet's random resized crop from them for the
whole batch at once: the boxes are drawn as `RandomResizedCrop.get_params` draws them (`random_resized_boxes`)
and resized with PIL's antialiased bilinear weights as two batched matrix products (`resized_crops`), so the
crops' distribution is torchvision's and their pixels differ from PIL's by its fixed-point rounding.
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from fastai.data.load import DataLoader
from fastai.torch_core import to_detach

__all__ = ["crop_flip", "random_resized_boxes", "resize_weights", "resized_crops", "DeviceImageDL", "DeviceResizedCropDL"]


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


def random_resized_boxes(sizes: torch.Tensor, generator: torch.Generator, scale=(0.08, 1.0),
                         ratio=(3 / 4, 4 / 3), tries: int = 10) -> torch.Tensor:
    """B x 4 boxes (top, left, height, width) drawn for images of `sizes` (B x 2: height, width) as torchvision's
    `RandomResizedCrop.get_params` draws one: up to `tries` candidates of area share uniform in `scale` and aspect
    ratio log-uniform in `ratio`, the first that fits the image kept at a uniform position; when none fits, the
    centre crop of the whole image clamped to the ratio range. The `tries` candidates of every image are drawn at
    once (a fixed number of random numbers per batch, whatever is kept)."""
    dev, b = sizes.device, len(sizes)
    height, width = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    share = torch.empty(b, tries, dtype=torch.float64, device=dev).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(b, tries, dtype=torch.float64, device=dev).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    area, aspect = height * width * share, log_ratio.exp()
    w, h = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()   # round half to even, as Python's
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1, keepdim=True)                             # the first candidate that fits
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    height, width = height[:, 0], width[:, 0]
    # no candidate fits: the whole image, cut to the nearest ratio in range, centred
    in_ratio = width / height
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fallback_w = torch.where(wide, (height * max(ratio)).round(), width)
    fallback_h = torch.where(narrow, (width / min(ratio)).round(), height)
    found = fits.any(1)
    w, h = torch.where(found, w, fallback_w), torch.where(found, h, fallback_h)
    u = torch.rand(b, 2, dtype=torch.float64, device=dev, generator=generator)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).floor(), ((height - h) / 2).floor())
    left = torch.where(found, (u[:, 1] * (width - w + 1)).floor(), ((width - w) / 2).floor())
    return torch.stack([top, left, h, w], 1).long()


def resize_weights(start: torch.Tensor, extent: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """B x size x length matrices that resize the span [start, start + extent) of a `length`-long axis to `size`
    samples as PIL's antialiased bilinear resize of a crop does: output sample i is centred at
    start + (i + 0.5) * extent / size, weighs the pixels of the span with a triangle as wide as one output pixel
    (at least one input pixel), and its weights sum to 1."""
    scale = (extent.double() / size)[:, None, None]
    support = scale.clamp(min=1.0)
    centre = start.double()[:, None, None] + (torch.arange(size, dtype=torch.float64, device=start.device)[:, None]
                                              + 0.5) * scale
    pixel = torch.arange(length, dtype=torch.float64, device=start.device) + 0.5
    weights = (1 - (pixel - centre).abs() / support).clamp(min=0)
    inside = (pixel >= start.double()[:, None, None]) & (pixel < (start + extent).double()[:, None, None])
    weights = weights * inside
    return (weights / weights.sum(-1, keepdim=True)).float()


def resized_crops(canvas: torch.Tensor, transposed: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The `boxes` (B x 4: top, left, height, width, in each image's own orientation) of B images resized to
    `size` x `size`, as B x 3 x size x size floats on the uint8 scale (rounded, as PIL's uint8 output is).

    `canvas` is B x 3 x S x L uint8 (each image top-left, its short side S vertical: the `transposed` ones are
    stored transposed); a resize is separable, so the batch is two batched matrix products with the
    `resize_weights` of each image's box along each axis, and the transposed images' results transposed back."""
    top, left, height, width = boxes.unbind(1)
    rows_start, rows_extent = torch.where(transposed, left, top), torch.where(transposed, width, height)
    cols_start, cols_extent = torch.where(transposed, top, left), torch.where(transposed, height, width)
    along_rows = resize_weights(rows_start, rows_extent, size, canvas.shape[2])        # B x size x S
    along_cols = resize_weights(cols_start, cols_extent, size, canvas.shape[3])        # B x size x L
    out = along_rows[:, None] @ (canvas.float() @ along_cols.transpose(1, 2)[:, None])  # B x 3 x size x size
    out = torch.where(transposed[:, None, None, None], out.transpose(2, 3), out)
    return out.round_().clamp_(0, 255)


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
        self._check(dataset)
        device = torch.device(device) if device is not None else self._storage(dataset).device
        super().__init__(dataset, bs=bs, shuffle=shuffle, drop_last=drop_last, device=device)
        self.padding, self.flip, self.shard = int(padding), bool(flip), shard
        self.norm_stats = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        self.rng = random.Random(seed)
        self._move(device)

    @staticmethod
    def _check(dataset):
        images = dataset.images
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"DeviceImageDL needs uint8 B x C x H x W images, got {images.dtype} {tuple(images.shape)}.")

    @staticmethod
    def _storage(dataset) -> torch.Tensor:
        return dataset.images

    def _move(self, device):
        self._images = self.dataset.images.to(device)
        self._targets = torch.as_tensor(self.dataset.targets, dtype=torch.long).to(device)
        self._stats = [torch.tensor(v, device=device).view(1, -1, 1, 1) for v in self.norm_stats]

    def to(self, device):
        """Move the device copy with the loader (fastai's `DataLoaders(device=...)` calls this)."""
        super().to(device)
        if self.device is not None and hasattr(self, "_targets"):
            self._move(self.device)
        return self

    def __iter__(self):
        self.randomize()
        targets = self._targets
        dev = targets.device
        gen = torch.Generator(device=dev)
        gen.manual_seed(self.rng.randint(0, 2**62))
        n = len(targets)
        order = torch.randperm(n, generator=gen, device=dev) if self.shuffle else torch.arange(n, device=dev)
        if self.shard is not None:
            order = self.shard.order(order)
            n = len(order)
        mean, std = self._stats
        stop = n - n % self.bs if self.drop_last else n
        for start in range(0, stop, self.bs):
            idx = order[start:start + self.bs]
            draws = self._draw(idx, gen)
            if self.shard is not None:  # this process's part of the global batch, with the draws one process makes
                part = self.shard.part(len(idx))
                if part.start == part.stop:
                    continue
                idx, draws = idx[part], tuple(d[part] for d in draws)
            yield (self._cut(idx, draws).div_(255).sub_(mean).div_(std), targets[idx])

    def _draw(self, idx, gen) -> tuple:
        """The batch's random draws, one row per image: crop offsets and flips."""
        if not (self.padding or self.flip):
            return ()
        b, dev = len(idx), idx.device
        offsets = (torch.randint(0, 2 * self.padding + 1, (b, 2), generator=gen, device=dev)
                   if self.padding else torch.zeros(b, 2, dtype=torch.long, device=dev))
        flips = (torch.rand(b, generator=gen, device=dev) < 0.5 if self.flip
                 else torch.zeros(b, dtype=torch.bool, device=dev))
        return offsets, flips

    def _cut(self, idx, draws) -> torch.Tensor:
        """The batch's images, augmented with `draws`, as floats on the uint8 scale."""
        x = self._images[idx]
        return (crop_flip(x, *draws, self.padding) if draws else x).float()

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

    def _options(self) -> dict:
        return dict(bs=self.bs, mean=self.norm_stats[0], std=self.norm_stats[1], shuffle=self.shuffle,
                    drop_last=self.drop_last, padding=self.padding, flip=self.flip, device=self.device, shard=self.shard)

    def new(self, dataset=None, cls=None, **kwargs):
        """A copy with other loader options (fastai's `get_preds` asks for an unshuffled one)."""
        options = self._options()
        options.update({k: v for k, v in kwargs.items() if k in options})
        return type(self)(self.dataset if dataset is None else dataset, **options, seed=self.rng.randint(0, 2**31))


class DeviceResizedCropDL(DeviceImageDL):
    """`DeviceImageDL` over images of many sizes (`sddlib.data.build.VariableSizeImages`: a uint8 canvas of one
    short side, each image's size and orientation) with ImageNet's training augmentation done for the whole batch
    on the device: a random resized crop to `size` (`random_resized_boxes`, `resized_crops`) and, with `flip`, a
    horizontal flip with probability 1/2."""

    def __init__(self, dataset, *, bs: int, mean, std, size: int, flip: bool = True, shuffle=False, drop_last=False,
                 device=None, seed: int = 0, shard=None):
        self.size = int(size)
        super().__init__(dataset, bs=bs, mean=mean, std=std, shuffle=shuffle, drop_last=drop_last, flip=flip,
                         device=device, seed=seed, shard=shard)

    def _move(self, device):
        super()._move(device)
        self._sizes, self._transposed = self.dataset.sizes.to(device), self.dataset.transposed.to(device)

    def _draw(self, idx, gen) -> tuple:
        boxes = random_resized_boxes(self._sizes[idx], gen)
        flips = (torch.rand(len(idx), generator=gen, device=idx.device) < 0.5 if self.flip
                 else torch.zeros(len(idx), dtype=torch.bool, device=idx.device))
        return boxes, flips

    def _cut(self, idx, draws) -> torch.Tensor:
        boxes, flips = draws
        x = resized_crops(self._images[idx], self._transposed[idx], boxes, self.size)
        return torch.where(flips[:, None, None, None], x.flip(-1), x)

    def _options(self) -> dict:
        options = super()._options()
        del options["padding"]
        return {**options, "size": self.size}
