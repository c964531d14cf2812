"""fastai `DataLoaders` for the paper's datasets (CIFAR-100, ImageNet, CUB-200-2011) and for the
embedded *digit mosaics*, a small CPU-sized set that needs no download.

Every loader returns a `fastai.data.core.DataLoaders` of two fastai `DataLoader`s over plain
torch datasets that yield `(image tensor, int label)`, so batches are `(x, y)` with `x` a float
B x 3 x H x W tensor (already normalised) and `y` a LongTensor. The returned object also carries:

    class_names  list[str], len == num_classes
    num_classes  int (also as fastai's `c`)
    mean, std    per-channel tuples used by the normalisation (see `denormalize`)
    image_size   int, side of the (square) training/test images
    dataset      the dataset's name (a key of `DATASETS`)

Augmentation follows the authors' code (mdistiller) exactly; `dls.train` shuffles (and drops the
last incomplete batch only where the reference does: CUB-200), `dls.valid` keeps dataset order.
`seed` fixes the shuffling order (and the digit mosaics' generation); augmentation draws from
torch's global RNG, as torchvision transforms do in the reference.
"""
from __future__ import annotations

import functools
import logging
import os
import random
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["DATASETS", "DatasetNotFoundError", "MosaicLayout", "cifar100", "cub200", "denormalize", "unnormalize",
           "digit_mosaic", "get_dataloaders", "imagenet", "make_digit_mosaics"]

log = logging.getLogger(__name__)

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"
CUB_ARCHIVE = "CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing (or unreadable) where it was looked for; the message says how to get it."""


# ----------------------------------------------------------------------------------------------
# shared pieces


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

    def __getitem__(self, i):
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        x = x.float().div(255)
        if self.normalize is not None:
            x = self.normalize(x)
        return x, int(self.targets[i])


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


def _default_workers(in_memory: bool) -> int:
    return 0 if in_memory else min(8, os.cpu_count() or 1)


def _make_dls(train_ds, valid_ds, *, name, bs, val_bs=None, drop_last, num_workers, seed, device,
              class_names, mean, std, image_size):
    """The fastai DataLoaders every loader returns, with the documented attributes set."""
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.torch_core import default_device

    device = default_device() if device is None else torch.device(device)
    pin = device.type == "cuda" and num_workers > 0
    train = DataLoader(train_ds, bs=bs, shuffle=True, drop_last=drop_last, num_workers=num_workers,
                       pin_memory=pin)
    valid = DataLoader(valid_ds, bs=val_bs or bs, shuffle=False, drop_last=False, num_workers=num_workers,
                       pin_memory=pin)
    train.rng = random.Random(seed)  # fastai re-derives its per-epoch RNG from this one: seeded order
    valid.rng = random.Random(seed + 1)
    dls = DataLoaders(train, valid, device=device)
    dls.class_names = list(class_names)
    dls.num_classes = dls.c = len(dls.class_names)
    dls.mean, dls.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    dls.image_size = int(image_size)
    dls.dataset = name
    return dls


def _subset(n, subset):
    return n if not subset else min(int(subset), n)


def _short(e: BaseException, limit=160) -> str:
    msg = str(e).strip().splitlines()
    msg = msg[0] if msg else ""
    s = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _need_dir(data_dir, name):
    if data_dir is None:
        raise ValueError(f"{name} needs data_dir (the folder that holds or will hold the dataset); "
                         f"pass it, e.g. get_dataloaders({name!r}, '/data/{name}').")
    return Path(data_dir).expanduser()


def denormalize(x: torch.Tensor, dls) -> torch.Tensor:
    """Undo the loaders' normalisation: (B x) C x H x W normalised -> images in [0, 1] (for figures)."""
    return unnormalize(x, dls.mean, dls.std)


def unnormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """x * std + mean per channel (C x H x W or B x C x H x W), clamped to [0, 1]."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x.as_subclass(torch.Tensor) * std + mean).clamp(0, 1)


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


def cifar100(data_dir, *, bs=64, subset=0, num_workers=None, seed=0, device=None, download=True):
    """CIFAR-100 from torchvision's on-disk format (`data_dir/cifar-100-python/{train,test,meta}`),
    downloaded with torchvision when missing. Augmentation as mdistiller: RandomCrop(32, padding=4),
    RandomHorizontalFlip, ToTensor, Normalize(CIFAR100_MEAN, CIFAR100_STD); test: ToTensor + Normalize.
    Train shuffles and keeps the last incomplete batch (reference: shuffle=True, no drop_last)."""
    from torchvision import transforms as T

    root = _need_dir(data_dir, "cifar100")
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
            raise DatasetNotFoundError(f"{where}; download failed: {_short(e)}; put the python version "
                                       f"archive (cifar-100-python.tar.gz) there or run with network access.") from e
    try:
        tr, te = reader(str(root), train=True), reader(str(root), train=False)
    except Exception as e:
        raise DatasetNotFoundError(f"CIFAR-100 under {folder} is incomplete or unreadable ({_short(e)}); delete "
                                   f"that folder and run with download=True.") from e

    def tensors(ds):
        n = _subset(len(ds.data), subset)
        return torch.from_numpy(np.ascontiguousarray(ds.data[:n])).permute(0, 3, 1, 2).contiguous(), ds.targets[:n]

    classes = list(tr.classes)
    train_tfm = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    train_ds = TensorImageDataset(*tensors(tr), transform=train_tfm, mean=CIFAR100_MEAN, std=CIFAR100_STD,
                                  classes=classes)
    valid_ds = TensorImageDataset(*tensors(te), transform=None, mean=CIFAR100_MEAN, std=CIFAR100_STD,
                                  classes=classes)
    nw = _default_workers(False) if num_workers is None else num_workers
    return _make_dls(train_ds, valid_ds, name="cifar100", bs=bs, drop_last=False, num_workers=nw, seed=seed,
                     device=device, class_names=classes, mean=CIFAR100_MEAN, std=CIFAR100_STD, image_size=32)


# ----------------------------------------------------------------------------------------------
# ImageNet


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
            warnings.warn(f"could not read {p} ({_short(e)}); using folder names as class names")
    return list(wnids)


def imagenet(data_dir, *, bs=256, subset=0, num_workers=None, seed=0, device=None, download=True):
    """ImageNet (ILSVRC-2012) from `data_dir/train/<wnid>/*` and `data_dir/val/<wnid>/*` (ImageFolder).
    Train: RandomResizedCrop(224) + RandomHorizontalFlip; test: Resize(256) + CenterCrop(224); ImageNet
    mean/std. It cannot be downloaded automatically (`download` is accepted for a uniform API)."""
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    root = _need_dir(data_dir, "imagenet")
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
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tfm = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tfm = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    tr, va = ImageFolder(str(tr_dir)), ImageFolder(str(va_dir))
    if tr.classes != va.classes:
        raise DatasetNotFoundError(f"ImageNet under {root} has different class folders in train/ ({len(tr.classes)}) "
                                   f"and val/ ({len(va.classes)}); both need the same <wnid>/ folders.")
    classes = _imagenet_class_names(root, tr.classes)
    train_ds = ImageListDataset(tr.samples[:_subset(len(tr.samples), subset)], train_tfm, classes)
    valid_ds = ImageListDataset(va.samples[:_subset(len(va.samples), subset)], test_tfm, classes)
    nw = _default_workers(False) if num_workers is None else num_workers
    return _make_dls(train_ds, valid_ds, name="imagenet", bs=bs, drop_last=False, num_workers=nw, seed=seed,
                     device=device, class_names=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=224)


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


def cub200(data_dir, *, bs=64, subset=0, num_workers=None, seed=0, device=None, download=True):
    """CUB-200-2011 from the official archive layout `data_dir/CUB_200_2011/` with its official
    train/test split (`train_test_split.txt`); downloaded from CaltechDATA when missing.
    Train: Resize((256, 256)) + RandomCrop(224) + RandomHorizontalFlip; test: Resize((256, 256)) +
    CenterCrop(224); ImageNet mean/std. Items are in ImageFolder order (sorted paths) as the authors'
    ImageFolder-based reader; train drops the last incomplete batch (reference: drop_last=True)."""
    from torchvision import transforms as T

    root = _need_dir(data_dir, "cub200")
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
            raise DatasetNotFoundError(f"{where}; download failed: {_short(e)}; put {CUB_ARCHIVE} "
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
        raise DatasetNotFoundError(f"CUB-200-2011 metadata under {base} is inconsistent ({_short(e)}); re-extract "
                                   f"{CUB_ARCHIVE} there.") from e
    tr, te = sorted(split[True]), sorted(split[False])  # ImageFolder order, as the authors' reader
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tfm = T.Compose([T.Resize((256, 256)), T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tfm = T.Compose([T.Resize((256, 256)), T.CenterCrop(224), T.ToTensor(), norm])
    train_ds = ImageListDataset(tr[:_subset(len(tr), subset)], train_tfm, classes)
    valid_ds = ImageListDataset(te[:_subset(len(te), subset)], test_tfm, classes)
    nw = _default_workers(False) if num_workers is None else num_workers
    return _make_dls(train_ds, valid_ds, name="cub200", bs=bs, drop_last=True, num_workers=nw, seed=seed,
                     device=device, class_names=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=224)


# ----------------------------------------------------------------------------------------------
# Digit mosaics (embedded, generated from scikit-learn's bundled 8x8 digit scans)

MOSAIC_VERSION = 2
MOSAIC_SIZE = 32
MOSAIC_TARGET_PX = (14, 20)  # inclusive range of the target digit's side
MOSAIC_DISTRACTOR_PX = (8, 12)
MOSAIC_MAX_DISTRACTORS = 3
MOSAIC_TRAIN_FRACTION = 0.75  # of each class's scans; the rest are test-only scans
MOSAIC_SPLIT_SEED = 2024  # fixed: the scan split does not move with `seed`
MOSAIC_NOISE_STD = 0.06
_LAYOUT_KEYS = ("labels", "target_box", "target_scan", "distractor_boxes", "distractor_labels", "distractor_scans")
_generation_count = 0  # how many times mosaics were generated in this process (cache tests read it)


@dataclass
class MosaicLayout:
    """Where each digit of a mosaic lies (numpy arrays, one row per image, in dataset order).

    Boxes are `(x0, y0, x1, y1)` pixel coordinates in the 32 x 32 image (x1, y1 exclusive): the
    square the 8 x 8 scan was scaled into (the ink lies inside it). They are exact for
    `dls.valid` (no augmentation); a training item is the image shifted by its random crop.

    labels            (N,)      target digit (== the item's label)
    target_box        (N, 4)    box of the target digit (painted last, so it is never occluded)
    target_scan       (N,)      index into `sklearn.datasets.load_digits()` of the target's scan
    distractor_boxes  (N, 3, 4) boxes of up to 3 smaller distractors (-1 in unused slots)
    distractor_labels (N, 3)    their digits, always != labels (-1 in unused slots)
    distractor_scans  (N, 3)    their scan indices (-1 in unused slots)
    scan_pool         (M,)      the scans this split may draw from (train and test pools are disjoint)
    """
    labels: np.ndarray
    target_box: np.ndarray
    target_scan: np.ndarray
    distractor_boxes: np.ndarray
    distractor_labels: np.ndarray
    distractor_scans: np.ndarray
    scan_pool: np.ndarray

    def __len__(self):
        return len(self.labels)

    @property
    def n_distractors(self) -> np.ndarray:
        return (self.distractor_labels >= 0).sum(1)

    def __getitem__(self, i):
        """Per-image dict for an int index; a sliced `MosaicLayout` for a slice (scan_pool kept)."""
        if isinstance(i, slice):
            return MosaicLayout(**{f.name: getattr(self, f.name)[i] if f.name != "scan_pool" else self.scan_pool
                                   for f in fields(self)})
        k = int(self.n_distractors[i])
        return dict(label=int(self.labels[i]), target_box=tuple(int(v) for v in self.target_box[i]),
                    target_scan=int(self.target_scan[i]),
                    distractors=[dict(label=int(self.distractor_labels[i, j]),
                                      box=tuple(int(v) for v in self.distractor_boxes[i, j]),
                                      scan=int(self.distractor_scans[i, j])) for j in range(k)])


@functools.lru_cache(maxsize=1)
def _digit_scans():
    """The 1,797 8 x 8 scans scaled to [0, 1] and their digits (cached: do not modify)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    scans, y = d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)
    return scans, y


def _split_scans(y):
    """Per class, a fixed MOSAIC_TRAIN_FRACTION of the scans for training, the rest for test."""
    rng = np.random.default_rng(MOSAIC_SPLIT_SEED)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(MOSAIC_TRAIN_FRACTION * len(idx)))
        train.append(idx[:k])
        test.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _pick_scans(rng, classes, pool, y):
    """A uniformly drawn scan of the given class for every entry of `classes` (-1 stays -1)."""
    u = rng.random(classes.shape)
    out = np.full(classes.shape, -1, dtype=np.int64)
    for c in range(10):
        pc = pool[y[pool] == c]
        m = classes == c
        out[m] = pc[np.minimum((u[m] * len(pc)).astype(np.int64), len(pc) - 1)]
    return out


def _render(scans, y, pool, n, rng, chunk=2048):
    """n mosaics from the scans in `pool`: images uint8 (n, 3, 32, 32) and their layout."""
    S, L = MOSAIC_SIZE, MOSAIC_MAX_DISTRACTORS
    labels = rng.permutation(np.arange(n) % 10)  # balanced classes
    t_size = rng.integers(MOSAIC_TARGET_PX[0], MOSAIC_TARGET_PX[1] + 1, n)
    t_xy = (rng.random((n, 2)) * (S - t_size + 1)[:, None]).astype(np.int64)
    n_d = rng.integers(1, L + 1, n)
    used = np.arange(L)[None] < n_d[:, None]
    d_labels = np.where(used, (labels[:, None] + rng.integers(1, 10, (n, L))) % 10, -1)  # any other class
    d_size = rng.integers(MOSAIC_DISTRACTOR_PX[0], MOSAIC_DISTRACTOR_PX[1] + 1, (n, L))
    d_xy = (rng.random((n, L, 2)) * (S - d_size + 1)[..., None]).astype(np.int64)
    t_scan = _pick_scans(rng, labels, pool, y)
    d_scan = _pick_scans(rng, d_labels, pool, y)
    # a dark coloured background and bright coloured digits: every hue, but ink always lighter than
    # paper, as in the scans, so a small CPU model learns the task in a few epochs
    bg = rng.uniform(0.0, 0.45, (n, 3)).astype(np.float32)
    fg = rng.uniform(0.55, 1.0, (n, L + 1, 3)).astype(np.float32)

    # layers: distractors first, target last; (n, L+1) sizes / corners / scans
    size = np.concatenate([d_size, t_size[:, None]], 1).astype(np.float32)
    xy = np.concatenate([d_xy, t_xy[:, None]], 1).astype(np.float32)
    scan = np.concatenate([d_scan, t_scan[:, None]], 1)
    visible = np.concatenate([used, np.ones((n, 1), bool)], 1)

    # bilinear upscaling (align_corners=False, zero padding, as grid_sample) is separable: the alpha
    # map of a layer is Ry @ scan @ Rx^T with triangle-kernel weights R (S x 8) per layer and axis
    k = np.arange(scans.shape[-1], dtype=np.float32)
    u = np.arange(S, dtype=np.float32) + 0.5

    def weights(x0, s):  # x0, s: (m,) -> (m, S, 8)
        p = (u[None] - x0[:, None]) * (scans.shape[-1] / s[:, None]) - 0.5
        return torch.from_numpy(np.maximum(0.0, 1.0 - np.abs(p[:, :, None] - k)).astype(np.float32))

    out = np.empty((n, 3, S, S), np.uint8)
    scans_t = torch.from_numpy(scans)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        m = (b - a) * (L + 1)
        s, x0 = size[a:b].reshape(m), xy[a:b].reshape(m, 2)
        src = scans_t[torch.from_numpy(np.maximum(scan[a:b].reshape(m), 0))]
        alpha = weights(x0[:, 1], s) @ src @ weights(x0[:, 0], s).transpose(1, 2)  # (m, S, S), rows = y
        alpha = alpha.view(b - a, L + 1, 1, S, S) * torch.from_numpy(visible[a:b]).float()[:, :, None, None, None]
        img = torch.from_numpy(bg[a:b])[:, :, None, None].expand(b - a, 3, S, S).clone()
        col = torch.from_numpy(fg[a:b].astype(np.float32))[..., None, None]  # (k, L+1, 3, 1, 1)
        for layer in range(L + 1):  # img <- img + alpha * (colour - img)
            img.add_(alpha[:, layer] * (col[:, layer] - img))
        img.add_(torch.from_numpy(rng.standard_normal(img.shape, dtype=np.float32)), alpha=MOSAIC_NOISE_STD)
        out[a:b] = img.clamp_(0, 1).mul_(255).round_().to(torch.uint8).numpy()

    box = lambda xy_, s_: np.concatenate([xy_, xy_ + s_[..., None]], -1)  # noqa: E731
    d_box = np.where(used[..., None], box(d_xy, d_size), -1)
    layout = dict(labels=labels.astype(np.int64), target_box=box(t_xy, t_size).astype(np.int16),
                  target_scan=t_scan, distractor_boxes=d_box.astype(np.int16),
                  distractor_labels=d_labels.astype(np.int64), distractor_scans=d_scan)
    return out, layout


def make_digit_mosaics(n_train=8000, n_test=2000, seed=0) -> dict:
    """Generate the mosaics (deterministic in `seed`): a dict of numpy arrays, the cache file's content.

    Keys: x_train/x_test uint8 (N, 3, 32, 32); y_train/y_test; mean/std (per channel, of the train
    images in [0, 1]); train_scan_pool/test_scan_pool (disjoint indices into load_digits()); and
    for each split `<split>_<key>` for every `MosaicLayout` field; version, n_train, n_test, seed.
    """
    global _generation_count
    t0 = time.perf_counter()
    scans, y = _digit_scans()
    pools = dict(zip(("train", "test"), _split_scans(y)))
    out = dict(version=np.int64(MOSAIC_VERSION), n_train=np.int64(n_train), n_test=np.int64(n_test),
               seed=np.int64(seed))
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        rng = np.random.default_rng([MOSAIC_VERSION, int(seed), i])  # own stream: test set independent of n_train
        x, layout = _render(scans, y, pools[split], int(n), rng)
        out[f"x_{split}"], out[f"y_{split}"] = x, layout["labels"]
        out[f"{split}_scan_pool"] = pools[split]
        out.update({f"{split}_{k}": v for k, v in layout.items()})
    xt = out["x_train"]
    mean = np.array([xt[:, c].mean(dtype=np.float64) for c in range(3)]) / 255
    std = np.array([xt[:, c].std(dtype=np.float64) for c in range(3)]) / 255
    out["mean"], out["std"] = mean.astype(np.float32), std.astype(np.float32)
    _generation_count += 1
    log.info("generated %d + %d digit mosaics in %.2f s", n_train, n_test, time.perf_counter() - t0)
    return out


def mosaic_cache_path(data_dir, n_train, n_test, seed) -> Path:
    return Path(data_dir).expanduser() / f"digit_mosaic_v{MOSAIC_VERSION}_train{n_train}_test{n_test}_seed{seed}.npz"


def _load_mosaic_cache(path: Path, n_train, n_test):
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    ok = (int(d["version"]) == MOSAIC_VERSION and d["x_train"].shape == (n_train, 3, MOSAIC_SIZE, MOSAIC_SIZE)
          and d["x_test"].shape == (n_test, 3, MOSAIC_SIZE, MOSAIC_SIZE)
          and all(len(d[f"{s}_{k}"]) == n for s, n in (("train", n_train), ("test", n_test)) for k in _LAYOUT_KEYS))
    if not ok:
        raise ValueError("unexpected content")
    return d


def load_digit_mosaics(data_dir=None, n_train=8000, n_test=2000, seed=0) -> dict:
    """The mosaic arrays from the cache under `data_dir` (generated and cached when missing or corrupt)."""
    data_dir = Path(data_dir).expanduser() if data_dir is not None else Path.home() / ".cache/sddlib/digit_mosaic"
    path = mosaic_cache_path(data_dir, n_train, n_test, seed)
    if path.is_file():
        try:
            return _load_mosaic_cache(path, n_train, n_test)
        except Exception as e:  # BadZipFile, zlib.error, KeyError, ValueError, ...: any unreadable cache
            warnings.warn(f"digit mosaic cache {path} is unreadable ({_short(e)}); regenerating it")
    d = make_digit_mosaics(n_train, n_test, seed)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")  # write + rename: never a half-written cache
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(tmp, **d)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not cache digit mosaics at {path} ({_short(e)}); using them uncached")
    finally:
        tmp.unlink(missing_ok=True)
    return d


def digit_mosaic(data_dir=None, *, bs=64, subset=0, n_train=8000, n_test=2000, num_workers=None, seed=0,
                 device=None, download=True):
    """Digit mosaics: 32 x 32 RGB images, each with one large target digit (14-20 px, the label) and
    1-3 smaller distractor digits of other classes (8-12 px) on a noisy coloured background, built
    from scikit-learn's 1,797 real 8 x 8 scans; train and test mosaics use disjoint scans.
    Cached as .npz under `data_dir` (default ~/.cache/sddlib/digit_mosaic/). Train augmentation:
    RandomCrop(32, padding=2) only (no flips: they change digits); normalised with the train set's
    own per-channel mean/std. Both datasets expose `.layout` (a `MosaicLayout`; via fastai's
    attribute delegation also `dls.valid.layout`); `download` is unused (nothing to download)."""
    from torchvision import transforms as T

    d = load_digit_mosaics(data_dir, n_train, n_test, seed)
    mean, std = tuple(d["mean"].tolist()), tuple(d["std"].tolist())
    classes = [str(i) for i in range(10)]
    dss = {}
    for split, tfm in (("train", T.RandomCrop(MOSAIC_SIZE, padding=2)), ("test", None)):
        n = _subset(len(d[f"x_{split}"]), subset)
        ds = TensorImageDataset(torch.from_numpy(d[f"x_{split}"][:n]), d[f"y_{split}"][:n], transform=tfm,
                                mean=mean, std=std, classes=classes)
        ds.layout = MosaicLayout(scan_pool=d[f"{split}_scan_pool"], **{k: d[f"{split}_{k}"][:n] for k in _LAYOUT_KEYS})
        dss[split] = ds
    nw = _default_workers(True) if num_workers is None else num_workers
    return _make_dls(dss["train"], dss["test"], name="digit_mosaic", bs=bs, drop_last=False, num_workers=nw,
                     seed=seed, device=device, class_names=classes, mean=mean, std=std, image_size=MOSAIC_SIZE)


# ----------------------------------------------------------------------------------------------

DATASETS = {"cifar100": cifar100, "imagenet": imagenet, "cub200": cub200, "digit_mosaic": digit_mosaic}


def get_dataloaders(name: str, data_dir=None, *, bs=None, subset=0, num_workers=None, seed=0, device=None,
                    download=True, **kw):
    """`DATASETS[name](data_dir, ...)`; `kw` goes to that loader (e.g. n_train/n_test for digit_mosaic).
    `bs=None` keeps the dataset's reference batch size (64; ImageNet 256)."""
    key = str(name).lower().replace("-", "_")
    key = {"cifar_100": "cifar100", "cub_200": "cub200", "cub": "cub200", "cub_200_2011": "cub200",
           "digit_mosaics": "digit_mosaic"}.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}.")
    if bs is not None:
        kw["bs"] = bs
    return DATASETS[key](data_dir, subset=subset, num_workers=num_workers, seed=seed, device=device,
                         download=download, **kw)
