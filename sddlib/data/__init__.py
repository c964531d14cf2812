"""fastai `DataLoaders` for the paper's datasets (CIFAR-100, ImageNet, CUB-200-2011) and for the
embedded *digit mosaics*, a small CPU-sized set that needs no download.

Every loader returns a `fastai.data.core.DataLoaders` of two fastai `DataLoader`s over plain
torch datasets that yield `(image tensor, int label)`, so batches are `(x, y)` with `x` a float
B x 3 x H x W tensor (already normalised) and `y` a LongTensor. The dataset's facts travel with it
as `dls.info`, a `DatasetInfo` (name, class_names, num_classes, mean, std, image_size); fastai's own
`dls.c` is the class count.

    paper_datasets  cifar100, imagenet, cub200 (the authors' augmentation, exactly)
    mosaics         the digit-mosaic generator and its loader
    folder          any folder of class folders (ImageFolder layout, or split here), checked before any work
    memory          a folder kept in memory when it fits a budget: the decision, the parallel decoding pass
    device          batched augmentation on the training device for the in-memory sets
    build           the datasets and DataLoaders every loader shares
    info            DatasetInfo, (de)normalisation
    spec            every dataset described once (`DatasetSpec`, `register_dataset`): the loader and the rest

`seed` fixes the shuffling order (and the digit mosaics' generation); augmentation draws from
torch's global RNG, as torchvision transforms do in the reference.
"""
from __future__ import annotations

from .build import DatasetNotFoundError
from .folder import ImageFolderError, image_folder, scan_folder
from .info import DatasetInfo, dataset_info, denormalize, unnormalize
from .mosaics import MosaicLayout, digit_mosaic, load_digit_mosaics, make_digit_mosaics, mosaic_cache_path
from .paper_datasets import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD, cifar100, cub200, imagenet
from .spec import DATASETS, DatasetLayoutError, DatasetSpec, dataset_spec, register_dataset

__all__ = ["DATASETS", "DatasetInfo", "DatasetNotFoundError", "MosaicLayout", "cifar100", "cub200", "dataset_info",
           "denormalize", "digit_mosaic", "get_dataloaders", "imagenet", "load_digit_mosaics", "make_digit_mosaics",
           "mosaic_cache_path", "unnormalize", "CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD",
           "ImageFolderError", "image_folder", "scan_folder", "DatasetSpec", "DatasetLayoutError", "dataset_spec",
           "register_dataset"]

_ALIASES = {"cifar_100": "cifar100", "cub_200": "cub200", "cub": "cub200", "cub_200_2011": "cub200",
            "digit_mosaics": "digit_mosaic"}


def get_dataloaders(name: str, data_dir=None, *, bs=None, subset=0, num_workers=None, seed=0, device=None,
                    download=True, **kw):
    """`DATASETS[name].loader(data_dir, ...)`; `kw` goes to that loader (e.g. n_train/n_test for digit_mosaic).
    `bs=None` keeps the dataset's reference batch size (64; ImageNet 256)."""
    key = str(name).lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    spec = dataset_spec(key)
    if bs is not None:
        kw["bs"] = bs
    return spec.loader(data_dir, subset=subset, num_workers=num_workers, seed=seed, device=device,
                         download=download, **kw)
