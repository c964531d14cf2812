"""Any folder of images as a dataset (torchvision's ImageFolder layout): `train/<class>/*` beside `val/<class>/*`
(or `test/<class>/*`), or one folder of class folders split here into train and validation.

`scan_folder` reads only the file names: the classes (folder names, sorted: the same list and order on both
sides), the split and the refusals (one sentence each, `ImageFolderError`), so a run can be checked before any
work. `image_folder` then decodes every image once (a truncated or unreadable file stops there, naming it, or is
skipped and counted with `skip_bad_images=True`: never a PIL traceback mid-epoch, never a silently shorter epoch),
computes the normalisation when asked (`normalize="auto"`) and returns the fastai DataLoaders with the ImageNet
recipe scaled to `image_size`, or the CIFAR one (pad-and-crop) for small images. What the loader decided (split,
class counts, normalisation, skipped files) is `dls.folder`, which a run records in its metrics.
"""
from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .build import ImageListDataset, check_pipeline, default_workers, make_dataloaders
from .info import DatasetInfo
from .paper_datasets import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ImageFolderError", "FolderScan", "scan_folder", "image_folder", "folder_transforms", "AUGMENTS",
           "NORMALIZE", "IMAGE_EXTENSIONS", "SPLIT_SEED", "STATS_IMAGES"]

# torchvision's ImageFolder extensions
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Train augmentations: the ImageNet recipe (random resized crop + flip), the CIFAR one (pad by 1/8 of the side,
# crop, flip) and the digit mosaics' one (pad by 1/16, crop, no flip: for images a mirror changes, digits, text).
AUGMENTS = ("auto", "imagenet", "cifar", "crop")
NORMALIZE = ("imagenet", "auto")
# The split and the normalisation sample do not depend on the run's seed: every seed (and the teacher) trains
# on the same images and sees them normalised alike.
SPLIT_SEED = 0
STATS_IMAGES = 10_000  # images in the normalisation sample (all of them when there are fewer)


class ImageFolderError(ValueError):
    """A folder that cannot be a dataset, or an image in it that cannot be read (one sentence, naming it)."""


@dataclass
class FolderScan:
    """A folder read by name only: classes, (path, label) per split, and where the split came from."""
    root: Path
    classes: list
    train: list
    valid: list
    layout: str                       # "train/val", "train/test" or "split"
    val_fraction: float | None = None  # the fraction held out, for layout "split"
    counts: dict = field(default_factory=dict)


def _images(folder: Path) -> list:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _class_folders(root: Path, name: str) -> dict:
    """{class name: sorted image paths} of `root`'s class folders; refuses a folder without them or an empty one."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ImageFolderError(f"{name} {str(root)!r} has no class folders; put the images of each class in "
                               f"their own folder ({root}/<class>/*.jpg).")
    found = {c: _images(root / c) for c in classes}
    empty = [c for c, files in found.items() if not files]
    if empty:
        raise ImageFolderError(f"class folder {str(root / empty[0])!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                               f"; add images to it or remove it.")
    return found


def _stratified_split(found: dict, val_fraction: float) -> tuple[list, list]:
    """Each class's images shuffled with SPLIT_SEED; round(n * fraction) of them (at least 1) held out."""
    rng = random.Random(SPLIT_SEED)
    train, valid = [], []
    for label, files in enumerate(found.values()):
        files = list(files)
        rng.shuffle(files)
        n_val = max(1, round(len(files) * val_fraction))
        if n_val >= len(files):
            raise ImageFolderError(f"class {list(found)[label]!r} has {len(files)} image(s): too few to hold out "
                                   f"val_fraction={val_fraction} and still train on one; add images or give "
                                   "train/ and val/ folders.")
        valid += [(f, label) for f in sorted(files[:n_val])]
        train += [(f, label) for f in sorted(files[n_val:])]
    return train, valid


def scan_folder(data_dir, val_fraction: float = 0.2) -> FolderScan:
    """Read the folder's layout and check it (file names only, no image opened)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ImageFolderError(f"data_dir={str(data_dir)!r} is not a folder; give the folder of your images "
                               "(train/<class>/ and val/<class>/, or <class>/ folders).")
    held_out = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        train, valid = _class_folders(root / "train", "train folder"), _class_folders(held_out, f"{held_out.name} "
                                                                                             "folder")
        if list(train) != list(valid):
            only = sorted(set(train) ^ set(valid))
            raise ImageFolderError(f"train/ and {held_out.name}/ under {str(root)!r} have different class folders "
                                   f"({', '.join(only[:5])}{' ...' if len(only) > 5 else ''} only on one side); "
                                   "give both the same <class>/ folders.")
        scan = FolderScan(root, list(train), [(f, i) for i, fs in enumerate(train.values()) for f in fs],
                          [(f, i) for i, fs in enumerate(valid.values()) for f in fs], f"train/{held_out.name}")
    else:
        found = _class_folders(root, "data_dir")
        if len(found) >= 2:
            train, valid = _stratified_split(found, val_fraction)
        scan = FolderScan(root, list(found), *((train, valid) if len(found) >= 2 else ([], [])), "split",
                          val_fraction)
    if len(scan.classes) < 2:
        raise ImageFolderError(f"data_dir={str(data_dir)!r} has {len(scan.classes)} class folder "
                               f"({scan.classes[0]!r}); a classifier needs at least 2 classes.")
    scan.counts = {split: np.bincount([t for _, t in samples], minlength=len(scan.classes)).tolist()
                   for split, samples in (("train", scan.train), ("valid", scan.valid))}
    return scan


def resolve_augment(augment: str, image_size: int) -> str:
    """'auto': the CIFAR recipe for small images (up to 64 px), the ImageNet one above."""
    return augment if augment != "auto" else ("cifar" if image_size <= 64 else "imagenet")


def folder_transforms(image_size: int, augment: str):
    """The train and eval geometric steps (PIL images in, PIL images out) of a recipe at `image_size`.

    imagenet: RandomResizedCrop + flip; eval Resize(size / 0.875) + CenterCrop (224 <- 256 at ImageNet's size).
    cifar / crop: every image resized (shorter side) and centre-cropped to the square size, then padded by 1/8
    (cifar, with a flip) or 1/16 (crop, no flip) of the side and cropped back; eval the resize and crop alone."""
    from torchvision import transforms as T
    augment = resolve_augment(augment, image_size)
    if augment == "imagenet":
        return ([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()],
                [T.Resize(round(image_size / 0.875)), T.CenterCrop(image_size)])
    square = [T.Resize(image_size), T.CenterCrop(image_size)]
    if augment == "cifar":
        return square + [T.RandomCrop(image_size, padding=max(1, image_size // 8)), T.RandomHorizontalFlip()], square
    return square + [T.RandomCrop(image_size, padding=max(1, image_size // 16))], square


def _read(path: str, eval_steps=None):
    """The decoded RGB image (grey, palette and alpha images converted), its eval-size pixel sums for the
    normalisation when `eval_steps` is given; or the reason it cannot be read."""
    from PIL import Image
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            img = img.convert("RGB")
    except Exception as err:  # PIL's UnidentifiedImageError, OSError (truncated), ...: named in one sentence
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    if eval_steps is None:
        return None, None
    x = np.asarray(eval_steps(img), dtype=np.float64).reshape(-1, 3) / 255
    return (len(x), x.sum(0), (x ** 2).sum(0)), None


def _check_images(scan: FolderScan, eval_steps, normalize: str, skip_bad: bool, threads: int) -> tuple[dict, set]:
    """Decode every image once; return the normalisation and what was skipped. The normalisation sample is a
    SPLIT_SEED-drawn sample of up to STATS_IMAGES training images, at the eval size."""
    train_paths = [p for p, _ in scan.train]
    sample = set(random.Random(SPLIT_SEED).sample(train_paths, min(STATS_IMAGES, len(train_paths)))) \
        if normalize == "auto" else set()
    paths = train_paths + [p for p, _ in scan.valid]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = list(pool.map(lambda p: _read(p, eval_steps if p in sample else None), paths))
    bad = {p: why for p, (_, why) in zip(paths, results) if why}
    if bad and not skip_bad:
        path, why = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ImageFolderError(f"image {path!r} cannot be read ({why}){more}; replace or delete it, or run with "
                               "skip_bad_images=True to skip unreadable images (they are counted in the metrics).")
    stats = [r for r, why in results if r is not None and not why]
    if normalize == "auto" and stats:
        n = sum(s[0] for s in stats)
        mean = sum(s[1] for s in stats) / n
        std = np.sqrt(np.maximum(sum(s[2] for s in stats) / n - mean ** 2, 0))
        norm = {"normalize": "auto", "mean": mean.tolist(), "std": std.tolist(), "sample_images": len(stats),
                "sample_seed": SPLIT_SEED}
    else:
        norm = {"normalize": "imagenet", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return norm, set(bad)


def image_folder(data_dir, *, bs=64, subset=0, num_workers=None, seed=0, device=None, download=True,
                 pipeline="workers", image_size=224, augment="auto", normalize="imagenet", val_fraction=0.2,
                 skip_bad_images=False):
    """A folder of class folders as fastai DataLoaders (`dls.info`, and `dls.folder`: what was decided).

    `subset` keeps the first n images of a SPLIT_SEED shuffle of each split (all classes mixed); `download` is
    unused (there is nothing to download)."""
    from torchvision import transforms as T

    check_pipeline(pipeline, "folder (image files decoded per image)", ("workers",))
    scan = scan_folder(data_dir, val_fraction)
    train_steps, eval_steps = folder_transforms(image_size, augment)
    nw = default_workers(False) if num_workers is None else num_workers
    norm, bad = _check_images(scan, T.Compose(eval_steps), normalize, skip_bad_images, max(1, nw))
    dss = {}
    tail = [T.ToTensor(), T.Normalize(norm["mean"], norm["std"])]
    for split, samples, steps in (("train", scan.train, train_steps), ("valid", scan.valid, eval_steps)):
        samples = [s for s in samples if s[0] not in bad]
        if subset:
            samples = random.Random(SPLIT_SEED).sample(samples, min(int(subset), len(samples)))
        dss[split] = ImageListDataset(samples, T.Compose(steps + tail), scan.classes)
    name = scan.root.name
    info = DatasetInfo(name, scan.classes, norm["mean"], norm["std"], image_size=image_size)
    dls = make_dataloaders(dss["train"], dss["valid"], info, bs=bs, drop_last=False, num_workers=nw, seed=seed,
                           device=device, pipeline=pipeline)
    dls.folder = {"data_dir": str(scan.root), "layout": scan.layout, "val_fraction": scan.val_fraction,
                  "split_seed": SPLIT_SEED, "classes": scan.classes, "class_counts": scan.counts,
                  "image_size": image_size, "augment": resolve_augment(augment, image_size), **norm,
                  "skipped_images": len(bad), "skipped_files": sorted(bad)[:20]}
    return dls
