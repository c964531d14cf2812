"""A sixth dataset, registered here and nowhere else: `stripes`, 16 x 16 images whose class is the row band that
holds a bright stripe. tests/test_spine.py runs it through every part of sddlib (a run, a sweep with memory
planning, the tables and the results page); a sweep's notebook kernel and the memory probe import this module
to know it, as they would a user's own dataset module."""
from pathlib import Path

import torch

from sddlib.data.build import TensorImageDataset, check_pipeline, make_dataloaders
from sddlib.data.info import DatasetInfo
from sddlib.data.spec import DatasetSpec, register_dataset

CLASSES = ("top", "upper", "lower", "bottom")
SIDE, N_TRAIN, N_TEST = 16, 48, 16
PIPELINES = ("device", "workers")


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    images = torch.randint(0, 96, (n, 3, SIDE, SIDE), generator=gen, dtype=torch.uint8)
    band = SIDE // len(CLASSES)
    for i, label in enumerate(labels.tolist()):
        images[i, :, label * band:(label + 1) * band] += 150
    return images, labels


def stripes(data_dir=None, *, bs=8, subset=0, num_workers=None, seed=0, device=None, download=True,
            pipeline="device"):
    """The stripes as fastai DataLoaders (nothing is read from `data_dir`: the images are made here)."""
    mean, std = (0.4,) * 3, (0.25,) * 3
    sets = []
    for n, data_seed in ((N_TRAIN, 1), (N_TEST, 2)):
        images, labels = _images(n, data_seed)
        n = min(subset, n) if subset else n
        sets.append(TensorImageDataset(images[:n], labels[:n].tolist(), mean=mean, std=std, classes=CLASSES))
    info = DatasetInfo("stripes", CLASSES, mean, std, image_size=SIDE)
    return make_dataloaders(*sets, info, bs=bs, drop_last=False, num_workers=num_workers or 0, seed=seed,
                            device=device, pipeline=check_pipeline(pipeline, "stripes", PIPELINES),
                            augment=dict(padding=1, flip=False))


SPEC = register_dataset(DatasetSpec(
    "stripes", "Stripes", stripes, dict(epochs=2, batch_size=8, lr=0.05, lr_decay_stages=(1,), lr_decay_rate=0.1,
                                        weight_decay=5e-4, momentum=0.9),
    ("resnet8", "resnet8"), "cifar", PIPELINES, classes=len(CLASSES), sizes=(N_TRAIN, N_TEST, SIDE),
    notebook=str(Path(__file__).with_suffix(".ipynb"))))
