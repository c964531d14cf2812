"""The paper's three datasets read from their standard on-disk layouts: CIFAR-100 (torchvision's
python version, downloaded when missing), ImageNet (ILSVRC-2012 class folders) and CUB-200-2011 (the
official archive, downloaded when missing).

Augmentation follows the authors' code (mdistiller) exactly; `dls.train` shuffles (and drops the
last incomplete batch only where the reference does: CUB-200), `dls.valid` keeps dataset order.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .build import (FILE_PIPELINES, IN_MEMORY_PIPELINES, DatasetNotFoundError, ImageListDataset, TensorImageDataset,
                    check_pipeline, default_workers, hold_out,
                    make_dataloaders, need_dir, short_error, subset_size)
from .info import DatasetInfo

__all__ = ["CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD", "cifar100", "imagenet", "cub200"]


CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"
CUB_ARCHIVE = "CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"


# ----------------------------------------------------------------------------------------------
# CIFAR-100


def _cifar100_reader():
    from torchvision.datasets import CIFAR100

    class _CIFAR100(CIFAR100):
        """torchvision's CIFAR-100 reader minus its per-file md5 check on read: the download path
        (the real `CIFAR100(download=True)`) verifies the archive's md5, and re-encoded or reduced
        copies in the same format (tests, mirrors) stay readable."""
        train_list = [[f, None] for f, _ in CIFAR100.train_list]
        test_list = [[f, None] for f, _ in CIFAR100.test_list]
        meta = {**CIFAR100.meta, "md5": None}

    return CIFAR100, _CIFAR100


def cifar100(data_dir, *, bs=64, subset=0, num_workers=None, seed=0, device=None, download=True,
             pipeline="device", tune_fraction=0.0):
    """CIFAR-100 from torchvision's on-disk format (`data_dir/cifar-100-python/{train,test,meta}`),
    downloaded with torchvision when missing. Augmentation as mdistiller: RandomCrop(32, padding=4),
    RandomHorizontalFlip, ToTensor, Normalize(CIFAR100_MEAN, CIFAR100_STD); test: ToTensor + Normalize.
    Train shuffles and keeps the last incomplete batch (reference: shuffle=True, no drop_last).
    pipeline="device" (default) keeps the uint8 images on `device` and crops, flips and normalises whole
    batches there (same distribution, `sddlib.data.device`); "workers" transforms per image, as the reference.
    `tune_fraction` > 0: the test file is not read and that share of the training images (`hold_out`) is scored."""
    from torchvision import transforms as T

    root = need_dir(data_dir, "cifar100")
    folder = root / "cifar-100-python"
    where = f"CIFAR-100 not found under {root} (expected {folder}/ with train, test and meta)"
    real, reader = _cifar100_reader()
    if not folder.is_dir():
        if not download:
            raise DatasetNotFoundError(f"{where}; run with download=True or put the python version archive "
                                       f"(cifar-100-python.tar.gz) there and extract it.")
        try:
            real(str(root), train=True, download=True)
        except Exception as e:  # network, disk, checksum: one sentence, not a urllib traceback
            raise DatasetNotFoundError(f"{where}; download failed: {short_error(e)}; put the python version "
                                       f"archive (cifar-100-python.tar.gz) there or run with network access.") from e
    try:
        tr, te = reader(str(root), train=True), None if tune_fraction else reader(str(root), train=False)
    except Exception as e:
        raise DatasetNotFoundError(f"CIFAR-100 under {folder} is incomplete or unreadable ({short_error(e)}); delete "
                                   f"that folder and run with download=True.") from e

    def tensors(ds):
        n = subset_size(len(ds.data), subset)
        return torch.from_numpy(np.ascontiguousarray(ds.data[:n])).permute(0, 3, 1, 2).contiguous(), ds.targets[:n]

    classes = list(tr.classes)
    train_tfm = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    (x, y), split_record = tensors(tr), None
    if tune_fraction:
        keep, held, split_record = hold_out(y, tune_fraction, seed)
        (x, y), held_out = (x[keep], [y[i] for i in keep]), (x[held], [y[i] for i in held])
    train_ds = TensorImageDataset(x, y, transform=train_tfm, mean=CIFAR100_MEAN, std=CIFAR100_STD, classes=classes)
    valid_ds = TensorImageDataset(*(held_out if tune_fraction else tensors(te)), transform=None, mean=CIFAR100_MEAN,
                                  std=CIFAR100_STD, classes=classes)
    nw = default_workers(False) if num_workers is None else num_workers
    info = DatasetInfo("cifar100", classes, CIFAR100_MEAN, CIFAR100_STD, image_size=32)
    return make_dataloaders(train_ds, valid_ds, info, bs=bs, drop_last=False, num_workers=nw, seed=seed,
                            device=device, pipeline=check_pipeline(pipeline, "cifar100", IN_MEMORY_PIPELINES),
                            augment=dict(padding=4, flip=True), tune_split=split_record)


def _held_out_samples(train: list, test: list, tune_fraction: float, seed: int):
    """(train, scored, record) file lists: the test list itself, or with `tune_fraction` a share of the training
    list (`hold_out`; the test files are never opened)."""
    if not tune_fraction:
        return train, test, None
    keep, held, record = hold_out([t for _, t in train], tune_fraction, seed)
    return [train[i] for i in keep], [train[i] for i in held], record


# ----------------------------------------------------------------------------------------------
# ImageNet


def _file_transforms(pipeline: str, train_steps: list, test_steps: list):
    """The train and test transforms of an image-file set: the geometric steps, then (in workers) ToTensor and
    the ImageNet normalisation; on the device the loader scales and normalises whole batches itself."""
    from torchvision import transforms as T
    if pipeline == "device_decode":
        return T.Compose(train_steps), T.Compose(test_steps)
    tail = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(train_steps + tail), T.Compose(test_steps + tail)


def _imagenet_class_names(root: Path, wnids):
    """First word-name per synset from a mapping shipped with the data, else the folder names."""
    for fname in ("LOC_synset_mapping.txt", "synset_words.txt"):
        p = root / fname
        if p.is_file():
            names = {}
            for line in p.read_text().splitlines():
                wnid, _, rest = line.strip().partition(" ")
                if wnid:
                    names[wnid] = rest.split(",")[0].strip() or wnid
            return [names.get(w, w) for w in wnids]
    p = root / "meta.bin"  # torchvision.datasets.ImageNet: torch.save((wnid_to_classes, val_wnids))
    if p.is_file():
        try:
            wnid_to_classes = torch.load(p, weights_only=True)[0]
            return [(wnid_to_classes.get(w) or (w,))[0] for w in wnids]
        except Exception as e:
            warnings.warn(f"could not read {p} ({short_error(e)}); using folder names as class names")
    return list(wnids)


def imagenet(data_dir, *, bs=256, subset=0, num_workers=None, seed=0, device=None, download=True,
             pipeline="workers", tune_fraction=0.0):
    """ImageNet (ILSVRC-2012) from `data_dir/train/<wnid>/*` and `data_dir/val/<wnid>/*` (ImageFolder).
    Train: RandomResizedCrop(224) + RandomHorizontalFlip; test: Resize(256) + CenterCrop(224); ImageNet
    mean/std. It cannot be downloaded automatically (`download` is accepted for a uniform API)."""
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    check_pipeline(pipeline, "imagenet (image files)", FILE_PIPELINES)
    root = need_dir(data_dir, "imagenet")
    tr_dir, va_dir = root / "train", root / "val"

    def has_classes(d):
        return d.is_dir() and any(p.is_dir() for p in d.iterdir())

    if not (has_classes(tr_dir) and has_classes(va_dir)):
        flat = va_dir.is_dir() and not has_classes(va_dir) and any(va_dir.iterdir())
        how = ("val/ holds flat images: sort them into <wnid>/ class folders (e.g. torchvision.datasets.ImageNet "
               "does it from the devkit)" if flat else
               f"ImageNet cannot be downloaded automatically{' even with download=True' if download else ''}; get "
               "ILSVRC-2012 from image-net.org and put train/ and val/ class folders there")
        raise DatasetNotFoundError(f"ImageNet not found under {root} (expected {tr_dir}/<wnid>/*.JPEG and "
                                   f"{va_dir}/<wnid>/*.JPEG); {how}.")
    train_tfm, test_tfm = _file_transforms(pipeline, [T.RandomResizedCrop(224), T.RandomHorizontalFlip()],
                                           [T.Resize(256), T.CenterCrop(224)])
    tr, va = ImageFolder(str(tr_dir)), ImageFolder(str(va_dir))
    if tr.classes != va.classes:
        raise DatasetNotFoundError(f"ImageNet under {root} has different class folders in train/ ({len(tr.classes)}) "
                                   f"and val/ ({len(va.classes)}); both need the same <wnid>/ folders.")
    classes = _imagenet_class_names(root, tr.classes)
    train, valid, split_record = _held_out_samples(tr.samples[:subset_size(len(tr.samples), subset)],
                                                   va.samples[:subset_size(len(va.samples), subset)],
                                                   tune_fraction, seed)
    train_ds, valid_ds = ImageListDataset(train, train_tfm, classes), ImageListDataset(valid, test_tfm, classes)
    nw = default_workers(False) if num_workers is None else num_workers
    info = DatasetInfo("imagenet", classes, IMAGENET_MEAN, IMAGENET_STD, image_size=224)
    return make_dataloaders(train_ds, valid_ds, info, bs=bs, drop_last=False, num_workers=nw, seed=seed,
                            device=device, pipeline=pipeline, tune_split=split_record)


# ----------------------------------------------------------------------------------------------
# CUB-200-2011


def _cub_class_name(folder: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black footed Albatross'."""
    return folder.split(".", 1)[-1].replace("_", " ").strip()


def _read_id_table(path: Path):
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[int(parts[0])] = parts[1]
    return out


def cub200(data_dir, *, bs=64, subset=0, num_workers=None, seed=0, device=None, download=True,
           pipeline="workers", tune_fraction=0.0):
    """CUB-200-2011 from the official archive layout `data_dir/CUB_200_2011/` with its official
    train/test split (`train_test_split.txt`); downloaded from CaltechDATA when missing.
    Train: Resize((256, 256)) + RandomCrop(224) + RandomHorizontalFlip; test: Resize((256, 256)) +
    CenterCrop(224); ImageNet mean/std. Items are in ImageFolder order (sorted paths) as the authors'
    ImageFolder-based reader; train drops the last incomplete batch (reference: drop_last=True)."""
    from torchvision import transforms as T

    check_pipeline(pipeline, "cub200 (image files)", FILE_PIPELINES)
    root = need_dir(data_dir, "cub200")
    base = root / "CUB_200_2011"
    needed = ["images.txt", "train_test_split.txt", "image_class_labels.txt", "classes.txt"]
    missing = lambda: not (base / "images").is_dir() or not all((base / f).is_file() for f in needed)  # noqa: E731
    where = f"CUB-200-2011 not found under {root} (expected {base}/images/ and {', '.join(needed)})"
    if missing():
        if not download:
            raise DatasetNotFoundError(f"{where}; run with download=True or put {CUB_ARCHIVE} from "
                                       f"https://data.caltech.edu/records/65de6-vp158 there and extract it.")
        try:
            from torchvision.datasets import utils as tv_utils
            tv_utils.download_and_extract_archive(CUB_URL, download_root=str(root), filename=CUB_ARCHIVE,
                                                  md5=CUB_MD5)
        except Exception as e:
            raise DatasetNotFoundError(f"{where}; download failed: {short_error(e)}; put {CUB_ARCHIVE} "
                                       f"(https://data.caltech.edu/records/65de6-vp158) there or run with "
                                       f"network access.") from e
        if missing():
            raise DatasetNotFoundError(f"{where}; the downloaded {CUB_ARCHIVE} did not contain them; delete "
                                       f"{root / CUB_ARCHIVE} and retry.")
    try:
        images = _read_id_table(base / "images.txt")
        is_train = {k: v == "1" for k, v in _read_id_table(base / "train_test_split.txt").items()}
        labels = {k: int(v) - 1 for k, v in _read_id_table(base / "image_class_labels.txt").items()}
        class_ids = sorted((int(k), v) for k, v in _read_id_table(base / "classes.txt").items())
        classes = [_cub_class_name(v) for _, v in class_ids]
        split = {True: [], False: []}
        for i, rel in images.items():
            split[is_train[i]].append((str(base / "images" / rel), labels[i]))
    except (KeyError, ValueError) as e:
        raise DatasetNotFoundError(f"CUB-200-2011 metadata under {base} is inconsistent ({short_error(e)}); re-extract "
                                   f"{CUB_ARCHIVE} there.") from e
    tr, te = sorted(split[True]), sorted(split[False])  # ImageFolder order, as the authors' reader
    train_tfm, test_tfm = _file_transforms(pipeline, [T.Resize((256, 256)), T.RandomCrop(224),
                                                      T.RandomHorizontalFlip()],
                                           [T.Resize((256, 256)), T.CenterCrop(224)])
    train, valid, split_record = _held_out_samples(tr[:subset_size(len(tr), subset)], te[:subset_size(len(te), subset)],
                                                   tune_fraction, seed)
    train_ds, valid_ds = ImageListDataset(train, train_tfm, classes), ImageListDataset(valid, test_tfm, classes)
    nw = default_workers(False) if num_workers is None else num_workers
    info = DatasetInfo("cub200", classes, IMAGENET_MEAN, IMAGENET_STD, image_size=224)
    return make_dataloaders(train_ds, valid_ds, info, bs=bs, drop_last=True, num_workers=nw, seed=seed,
                            device=device, pipeline=pipeline, tune_split=split_record)

