"""The facts about a dataset that models and figures need (`DatasetInfo`), and undoing the loaders'
normalisation with them.

Every loader of `sddlib.data` returns a fastai `DataLoaders` with one typed attribute, `dls.info`,
instead of loose attributes: code that needs the class names or the normalisation reads them there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DatasetInfo", "dataset_info", "denormalize", "unnormalize"]


@dataclass(frozen=True)
class DatasetInfo:
    """name         the dataset's key in `sddlib.data.DATASETS` (e.g. "cifar100")
    class_names  one name per class, in label order
    mean, std    per-channel values of the loaders' `Normalize` (images in [0, 1] before it)
    image_size   side of the square images the loaders yield"""
    name: str
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int

    def __post_init__(self):
        # frozen: set the normalised values through object.__setattr__ (lists in, tuples out)
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "image_size", int(self.image_size))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def dataset_info(dls) -> DatasetInfo:
    """`dls.info` of loaders made by `sddlib.data`; for any other fastai DataLoaders, derived from what fastai
    records: class names from `dls.vocab`, mean and std from the `Normalize` among the test loader's batch
    transforms (none: images taken as they come, in [0, 1]), the size from one test batch. One sentence when the
    class names are not there."""
    info = getattr(dls, "info", None)
    if isinstance(info, DatasetInfo):
        return info
    vocab = getattr(dls, "vocab", None)
    if getattr(dls, "valid", None) is None or vocab is None:
        raise ValueError(f"{type(dls).__name__} names no classes (no dls.vocab, no dls.info); build it with a "
                         "fastai DataBlock whose targets are a CategoryBlock, or set "
                         "dls.info = sddlib.data.DatasetInfo(name, class_names, mean, std, image_size).")
    x = dls.valid.one_batch()[0]
    from fastai.data.transforms import Normalize
    norm = next((t for t in getattr(dls.valid.after_batch, "fs", ()) if isinstance(t, Normalize)), None)
    channels = x.shape[1]
    mean = norm.mean.flatten().tolist() if norm is not None else [0.0] * channels
    std = norm.std.flatten().tolist() if norm is not None else [1.0] * channels
    return DatasetInfo("custom", [str(v) for v in vocab], mean, std, x.shape[-1])


def denormalize(x: torch.Tensor, dls) -> torch.Tensor:
    """Undo the loaders' normalisation: (B x) C x H x W normalised -> images in [0, 1] (for figures)."""
    info = dataset_info(dls)
    return unnormalize(x, info.mean, info.std)


def unnormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """x * std + mean per channel (C x H x W or B x C x H x W), clamped to [0, 1]."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x.as_subclass(torch.Tensor) * std + mean).clamp(0, 1)
