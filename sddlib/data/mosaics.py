"""The embedded *digit mosaics*: a small CPU-sized dataset generated from scikit-learn's bundled
8 x 8 digit scans (nothing to download), and its fastai loaders.

Each 32 x 32 RGB image holds one large target digit (the label) and 1-3 smaller distractor digits of
other classes; train and test use disjoint scans. `MosaicLayout` records where every digit lies, so
figures can show which digit a region saw.
"""
from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .build import (IN_MEMORY_PIPELINES, TensorImageDataset, check_pipeline, default_workers, hold_out,
                    make_dataloaders, short_error, subset_size)
from .info import DatasetInfo

__all__ = ["MosaicLayout", "MosaicDataset", "make_digit_mosaics", "load_digit_mosaics", "mosaic_cache_path",
           "digit_mosaic"]

log = logging.getLogger(__name__)

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
            warnings.warn(f"digit mosaic cache {path} is unreadable ({short_error(e)}); regenerating it")
    d = make_digit_mosaics(n_train, n_test, seed)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")  # write + rename: never a half-written cache
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(tmp, **d)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not cache digit mosaics at {path} ({short_error(e)}); using them uncached")
    finally:
        tmp.unlink(missing_ok=True)
    return d


class MosaicDataset(TensorImageDataset):
    """Mosaic images and labels with their `layout` (a `MosaicLayout`, one row per item, same order)."""

    def __init__(self, images: torch.Tensor, targets, layout: MosaicLayout, **kwargs):
        super().__init__(images, targets, **kwargs)
        assert len(layout) == len(self), (len(layout), len(self))
        self.layout = layout


def digit_mosaic(data_dir=None, *, bs=64, subset=0, n_train=8000, n_test=2000, num_workers=None, seed=0,
                 device=None, download=True, pipeline="device", tune_fraction=0.0):
    """Digit mosaics: 32 x 32 RGB images, each with one large target digit (14-20 px, the label) and
    1-3 smaller distractor digits of other classes (8-12 px) on a noisy coloured background, built
    from scikit-learn's 1,797 real 8 x 8 scans; train and test mosaics use disjoint scans.
    Cached as .npz under `data_dir` (default ~/.cache/sddlib/digit_mosaic/). Train augmentation:
    RandomCrop(32, padding=2) only (no flips: they change digits); normalised with the train set's
    own per-channel mean/std. Both datasets expose `.layout` (a `MosaicLayout`; via fastai's
    attribute delegation also `dls.valid.layout`); `download` is unused (nothing to download).
    pipeline="device" (default) draws the same crops batched on `device`; "workers" per image, as the reference.
    `tune_fraction` > 0: the test mosaics are left out and that share of the training ones (`hold_out`) is scored."""
    from torchvision import transforms as T

    d = load_digit_mosaics(data_dir, n_train, n_test, seed)
    mean, std = tuple(d["mean"].tolist()), tuple(d["std"].tolist())
    classes = [str(i) for i in range(10)]
    rows = {split: ("train" if tune_fraction else split, np.arange(subset_size(len(d[f"x_{split}"]), subset)))
            for split in ("train", "test")}  # (the split an item comes from, its rows there)
    split_record = None
    if tune_fraction:
        keep, held, split_record = hold_out(d["y_train"][rows["train"][1]], tune_fraction, seed)
        rows = {"train": ("train", np.asarray(keep, dtype=np.int64)),
                "test": ("train", np.asarray(held, dtype=np.int64))}
    dss = {}
    for split, tfm in (("train", T.RandomCrop(MOSAIC_SIZE, padding=2)), ("test", None)):
        source, take = rows[split]
        layout = MosaicLayout(scan_pool=d[f"{source}_scan_pool"], **{k: d[f"{source}_{k}"][take] for k in _LAYOUT_KEYS})
        dss[split] = MosaicDataset(torch.from_numpy(d[f"x_{source}"][take]), d[f"y_{source}"][take], layout,
                                   transform=tfm, mean=mean, std=std, classes=classes)
    nw = default_workers(True) if num_workers is None else num_workers
    info = DatasetInfo("digit_mosaic", classes, mean, std, image_size=MOSAIC_SIZE)
    return make_dataloaders(dss["train"], dss["test"], info, bs=bs, drop_last=False, num_workers=nw, seed=seed,
                            device=device, pipeline=check_pipeline(pipeline, "digit_mosaic", IN_MEMORY_PIPELINES),
                            augment=dict(padding=2, flip=False), tune_split=split_record)

