"""JPEG decoding and augmentation on the training device for the image-file datasets (ImageNet, CUB-200).

With `pipeline="device_decode"` the DataLoader workers only read each file's bytes; the batch is decoded by
`torchvision.io.decode_jpeg` on the training device (nvJPEG on a GPU, so the CPU work per image shrinks to
a file read, which a 2-core host sustains where per-image PIL decoding does not) and cropped, resized and
flipped there by the dataset's own torchvision transforms applied to the decoded tensors, one image at a
time (each image has its own size and crop), then scaled and normalised as one batch.

The augmentation is the workers' transforms themselves (torchvision draws the same parameters for a tensor
as for a PIL image), so its distribution is the reference's; pixels differ from the PIL path only by the
resampler's rounding (tensor vs PIL antialiased bilinear). Files the device decoder refuses (CMYK JPEGs and
PNGs named .JPEG, which ImageNet has a few of) are decoded on the CPU instead.
torchvision 0.29 deprecates its image decoders in favour of TorchCodec's (with a DeprecationWarning); they
work in the versions this project installs, and this module is the one place to change when they go.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from fastai.data.load import DataLoader
from torch.utils.data import Dataset

__all__ = ["EncodedFiles", "DeviceDecodeDL"]


class EncodedFiles(Dataset):
    """The `(file bytes, label)` of an `ImageListDataset`'s samples: all a worker process does per image.
    The bytes are a numpy array, which fastai leaves on the host when it moves a batch to the device."""

    def __init__(self, images):
        self.images, self.samples, self.vocab = images, images.samples, images.vocab

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, target = self.samples[i]
        return np.fromfile(path, dtype=np.uint8), target


class DeviceDecodeDL(DataLoader):
    """A fastai `DataLoader` over an `ImageListDataset` whose `transform` holds only tensor-capable steps
    (crops, resizes, flips: no ToTensor/Normalize); decoding, that transform, scaling to [0, 1] and
    normalising with `mean`/`std` run on the loader's device."""

    def __init__(self, dataset, *, bs: int, mean, std, shuffle=False, drop_last=False, num_workers=0, device=None,
                 seed: int = 0):
        super().__init__(EncodedFiles(dataset), bs=bs, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers,
                         persistent_workers=num_workers > 0, device=device)
        self.transform, self.norm_stats = dataset.transform, (tuple(mean), tuple(std))
        self.rng = random.Random(seed)

    def create_batch(self, items):
        return [data for data, _ in items], torch.tensor([target for _, target in items])

    def retain(self, batch, items):
        return batch  # fastai would recast the list of byte arrays to the items' types

    def _decode(self, files: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
        data = [torch.from_numpy(f) for f in files]
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one undecodable file fails the batch call: decode one by one, CPU where needed
            out = []
            for d in data:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(decode_image(d, mode=ImageReadMode.RGB).to(device))
            return out

    def after_batch(self, batch):
        files, targets = batch
        device = self.device if self.device is not None else torch.device("cpu")
        images = self._decode(files, device)
        x = torch.stack([self.transform(img) if self.transform is not None else img for img in images])
        mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in self.norm_stats)
        return x.float().div_(255).sub_(mean).div_(std), targets.to(device)

    def new(self, dataset=None, cls=None, **kwargs):
        """A copy with other loader options (fastai's `get_preds` asks for an unshuffled one)."""
        options = dict(bs=self.bs, mean=self.norm_stats[0], std=self.norm_stats[1], shuffle=self.shuffle,
                       drop_last=self.drop_last, num_workers=self.num_workers, device=self.device)
        options.update({k: v for k, v in kwargs.items() if k in options})
        return DeviceDecodeDL(self.dataset.images if dataset is None else dataset, **options,
                              seed=self.rng.randint(0, 2**31))
