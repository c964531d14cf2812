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
    """`dls.info` of loaders made by `sddlib.data`; one sentence saying what to do for any others."""
    info = getattr(dls, "info", None)
    if not isinstance(info, DatasetInfo):
        raise ValueError(f"{type(dls).__name__} carries no DatasetInfo as .info; make the loaders with "
                         "sddlib.data.get_dataloaders, or set dls.info = sddlib.data.DatasetInfo(...).")
    return info


def denormalize(x: torch.Tensor, dls) -> torch.Tensor:
    """Undo the loaders' normalisation: (B x) C x H x W normalised -> images in [0, 1] (for figures)."""
    info = dataset_info(dls)
    return unnormalize(x, info.mean, info.std)


def unnormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """x * std + mean per channel (C x H x W or B x C x H x W), clamped to [0, 1]."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x.as_subclass(torch.Tensor) * std + mean).clamp(0, 1)
