"""Any folder of images as a dataset (torchvision's ImageFolder layout): `train/<class>/*` beside `val/<class>/*`
(or `test/<class>/*`), or one folder of class folders split here into train and validation.

`scan_folder` reads only the file names: the classes (folder names, sorted: the same list and order on both
sides), the split and the refusals (one sentence each, `ImageFolderError`), so a run can be checked before any
work. `image_folder` then decodes every image once (a truncated or unreadable file stops there, naming it, or is
skipped and counted with `skip_bad_images=True`: never a PIL traceback mid-epoch, never a silently shorter epoch),
computes the normalisation when asked (`normalize="auto"`) and returns the fastai DataLoaders with the ImageNet
recipe scaled to `image_size`, or the CIFAR one (pad-and-crop) for small images. When the decoded images fit the
memory budget (`sddlib.data.memory`) that pass keeps them, and training runs from uint8 tensors augmented in
batches on the device like the built-in datasets; otherwise every epoch decodes the files again in DataLoader
workers. What the loader decided (split, class counts, normalisation, skipped files, memory or files and why, the
check pass's time) is `dls.folder`, which a run records in its metrics.
"""
from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .build import ImageListDataset, TensorImageDataset, VariableSizeImages, check_pipeline, default_workers, \
    hold_out, make_dataloaders
from .info import DatasetInfo
from .memory import (DEFAULT_MEMORY_BUDGET, CanvasStore, MemoryPlan, SquareStore, available_memory, decode_threads,
                     folder_bytes, kept_side, parallel_map, plan_memory)
from .paper_datasets import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ImageFolderError", "FolderScan", "scan_folder", "image_folder", "plan_folder_memory", "folder_transforms", "AUGMENTS",
           "NORMALIZE", "IMAGE_EXTENSIONS", "SPLIT_SEED", "STATS_IMAGES"]

# torchvision's ImageFolder extensions
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Train augmentations: the ImageNet recipe (random resized crop + flip), the CIFAR one (pad by 1/8 of the side,
# crop, flip) and the digit mosaics' one (pad by 1/16, crop, no flip: for images a mirror changes, digits, text).
AUGMENTS = ("auto", "imagenet", "cifar", "crop")
# "model": the mean/std the trained model's ImageNet weights were trained with, given by the run (`model_stats`).
NORMALIZE = ("imagenet", "auto", "model")
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


def _kept_steps(image_size: int, augment: str):
    """(kept, eval_of_kept): the resize an image is kept at in memory (PIL in and out) and the eval crop of that;
    composed they are the recipe's eval steps, so the normalisation sample is the same in memory and from files."""
    from torchvision import transforms as T
    if augment == "imagenet":
        return T.Resize(kept_side(image_size, augment)), T.CenterCrop(image_size)
    return T.Compose([T.Resize(image_size), T.CenterCrop(image_size)]), (lambda img: img)


def _read(path: str, steps, stats: bool, store=None, slot=None, store_eval=False):
    """Decode one image (RGB: grey, palette and alpha images converted); keep it in `store` at `slot` (its eval
    crop with `store_eval`) and return its eval-size pixel sums for the normalisation when `stats`; or the reason
    it cannot be read."""
    from PIL import Image
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            img = img.convert("RGB")
    except Exception as err:  # PIL's UnidentifiedImageError, OSError (truncated), ...: named in one sentence
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    if not stats and store is None:
        return None, None
    kept_step, eval_step = steps
    kept = kept_step(img)
    evaluated = eval_step(kept)
    if store is not None:
        store.put(slot, np.asarray(evaluated if store_eval else kept))
    if not stats:
        return None, None
    x = np.asarray(evaluated, dtype=np.float64).reshape(-1, 3) / 255
    return (len(x), x.sum(0), (x ** 2).sum(0)), None


def _header_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding; (0, 0) when it cannot be read (the check pass
    then names the file)."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - refused, with its reason, by the check pass
        return 0, 0


def _check_images(scan: FolderScan, steps, normalize: str, skip_bad: bool, threads: int, stores=None):
    """Decode every image once on `threads` threads, keeping the pixels in `stores` ({"train", "valid"}) when
    given; return the normalisation, what was skipped and the seconds it took. The normalisation sample is a
    SPLIT_SEED-drawn sample of up to STATS_IMAGES training images, at the eval size."""
    train_paths = [p for p, _ in scan.train]
    sample = set(random.Random(SPLIT_SEED).sample(train_paths, min(STATS_IMAGES, len(train_paths)))) \
        if normalize == "auto" else set()
    paths = train_paths + [p for p, _ in scan.valid]
    n_train = len(train_paths)

    def work(k, path):
        if stores is None:
            return _read(path, steps, path in sample)
        split, slot = ("train", k) if k < n_train else ("valid", k - n_train)
        return _read(path, steps, path in sample, stores[split], slot, store_eval=split == "valid")

    results, seconds = parallel_map(work, paths, threads, "decoding")
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
    return norm, set(bad), seconds


def _footprint(scan: FolderScan, image_size: int, augment: str, in_memory, threads: int):
    """Bytes the decoded images take in memory (None with in_memory=False: not worked out), and the training
    images' header sizes (ImageNet recipe only: kept at their own aspect ratio, read from the files' headers)."""
    if in_memory is False:   # nothing to plan: the files are read
        return None, None
    if augment == "imagenet":
        sizes, _ = parallel_map(lambda _, p: _header_size(p), [p for p, _ in scan.train], threads, "reading headers")
        return folder_bytes(sizes, len(scan.valid), image_size, augment), sizes
    return folder_bytes(len(scan.train), len(scan.valid), image_size, augment), None


def plan_folder_memory(data_dir, *, image_size=224, augment="auto", val_fraction=0.2, in_memory="auto",
                       memory_budget=DEFAULT_MEMORY_BUDGET, device="cpu", **_) -> MemoryPlan:
    """What `image_folder` would decide for this folder now (`run_memory` plans a sweep with it): from the file
    names and, for the ImageNet recipe, the headers; no image decoded. Other loader keywords are ignored."""
    scan = scan_folder(data_dir, val_fraction)
    recipe = resolve_augment(augment, image_size)
    footprint, _ = _footprint(scan, image_size, recipe, in_memory, decode_threads())
    return plan_memory(in_memory, memory_budget, footprint, available_memory(device))


def _memory_plan(scan: FolderScan, image_size: int, augment: str, in_memory, memory_budget, device, threads):
    """The decision (`sddlib.data.memory.plan_memory`) and, in memory, the stores the check pass fills: every
    image's slot sized in advance."""
    footprint, sizes = _footprint(scan, image_size, augment, in_memory, threads)
    plan = plan_memory(in_memory, memory_budget, footprint, available_memory(device))
    if not plan.in_memory:
        return plan, None
    side = kept_side(image_size, augment)
    train = CanvasStore(sizes, side) if sizes is not None else SquareStore(len(scan.train), side)
    return plan, {"train": train, "valid": SquareStore(len(scan.valid), image_size)}


def _kept(samples: list, bad: set, subset: int) -> list[int]:
    """Indices of the samples trained on: the readable ones, then a SPLIT_SEED sample of `subset` of them."""
    kept = [i for i, (path, _) in enumerate(samples) if path not in bad]
    if subset:
        kept = random.Random(SPLIT_SEED).sample(kept, min(int(subset), len(kept)))
    return kept


def _in_memory_sets(stores: dict, scan: FolderScan, kept: dict, augment: str, image_size: int, norm: dict):
    """The train and valid datasets over the kept pixels, and the device augmentation of the recipe."""
    from torchvision import transforms as T
    stats = dict(mean=norm["mean"], std=norm["std"], classes=scan.classes)
    targets = {split: [samples[i][1] for i in kept[split]] for split, samples in (("train", scan.train),
                                                                                 ("valid", scan.valid))}
    valid = TensorImageDataset(stores["valid"].select(kept["valid"]), targets["valid"], **stats)
    if augment == "imagenet":
        per_item = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()])
        train = VariableSizeImages(*stores["train"].select(kept["train"]), targets["train"], per_item, **stats)
        return train, valid, {"size": image_size, "flip": True}
    padding = max(1, image_size // (8 if augment == "cifar" else 16))
    flip = augment == "cifar"
    per_item = T.Compose([T.RandomCrop(image_size, padding=padding)] + ([T.RandomHorizontalFlip()] if flip else []))
    train = TensorImageDataset(stores["train"].select(kept["train"]), targets["train"], per_item, **stats)
    return train, valid, {"padding": padding, "flip": flip}


def _held_out_scan(scan: FolderScan, tune_fraction: float, seed: int) -> tuple[FolderScan, dict | None]:
    """The scan a tuner's run reads: its training images split by `hold_out` (the held-out split never listed)."""
    if not tune_fraction:
        return scan, None
    keep, held, record = hold_out([t for _, t in scan.train], tune_fraction, seed)
    train, valid = [scan.train[i] for i in keep], [scan.train[i] for i in held]
    counts = {split: np.bincount([t for _, t in samples], minlength=len(scan.classes)).tolist()
              for split, samples in (("train", train), ("valid", valid))}
    return dataclasses.replace(scan, train=train, valid=valid, counts=counts), record


def image_folder(data_dir, *, bs=64, subset=0, num_workers=None, seed=0, device=None, download=True,
                 pipeline="workers", image_size=224, augment="auto", normalize="imagenet", val_fraction=0.2,
                 skip_bad_images=False, in_memory="auto", memory_budget=DEFAULT_MEMORY_BUDGET, model_stats=None,
                 tune_fraction=0.0):
    """A folder of class folders as fastai DataLoaders (`dls.info`, and `dls.folder`: what was decided).

    `in_memory` 'auto' keeps the decoded images in memory and trains through the device pipeline when they take
    at most `memory_budget` of the memory available (`sddlib.data.memory`), else reads the files through
    `pipeline` ('workers'); True insists on memory (refusing a folder over the budget), False reads the files.
    `subset` keeps the first n images of a SPLIT_SEED shuffle of each split (all classes mixed); `download` is
    unused (there is nothing to download). `normalize="model"` normalises with `model_stats` (mean, std), those
    of the model these loaders train (None: ImageNet's). `tune_fraction` > 0: the held-out split is left unopened
    and that share of the training images (`hold_out`) is scored."""
    from fastai.torch_core import default_device
    from torchvision import transforms as T

    check_pipeline(pipeline, "folder (image files decoded per image)", ("workers",))
    scan, split_record = _held_out_scan(scan_folder(data_dir, val_fraction), tune_fraction, seed)
    recipe = resolve_augment(augment, image_size)
    train_steps, eval_steps = folder_transforms(image_size, augment)
    device = default_device() if device is None else torch.device(device)
    threads = decode_threads()
    plan, stores = _memory_plan(scan, image_size, recipe, in_memory, memory_budget, device, threads)
    norm, bad, seconds = _check_images(scan, _kept_steps(image_size, recipe), normalize, skip_bad_images, threads,
                                       stores)
    if normalize == "model":
        mean, std = model_stats or (IMAGENET_MEAN, IMAGENET_STD)
        norm = {"normalize": "model", "mean": list(mean), "std": list(std)}
    kept = {"train": _kept(scan.train, bad, subset), "valid": _kept(scan.valid, bad, subset)}
    if stores is not None:
        train_ds, valid_ds, device_augment = _in_memory_sets(stores, scan, kept, recipe, image_size, norm)
        pipeline, nw = "device", 0
    else:
        tail = [T.ToTensor(), T.Normalize(norm["mean"], norm["std"])]
        train_ds, valid_ds = (ImageListDataset([samples[i] for i in kept[split]], T.Compose(steps + tail),
                                               scan.classes)
                              for split, samples, steps in (("train", scan.train, train_steps),
                                                            ("valid", scan.valid, eval_steps)))
        device_augment, nw = None, default_workers(False) if num_workers is None else num_workers
    info = DatasetInfo(scan.root.name, scan.classes, norm["mean"], norm["std"], image_size=image_size)
    dls = make_dataloaders(train_ds, valid_ds, info, bs=bs, drop_last=False, num_workers=nw, seed=seed,
                           device=device, pipeline=pipeline, augment=device_augment, tune_split=split_record)
    dls.folder = {"data_dir": str(scan.root), "layout": scan.layout, "val_fraction": scan.val_fraction,
                  "split_seed": SPLIT_SEED, "classes": scan.classes, "class_counts": scan.counts,
                  "image_size": image_size, "augment": recipe, **norm,
                  "skipped_images": len(bad), "skipped_files": sorted(bad)[:20],
                  "pipeline": pipeline, "memory": plan.record(),
                  "kept_side": kept_side(image_size, recipe) if stores is not None else None,
                  "decode_s": round(seconds, 3), "decode_threads": threads}
    if os.environ.get("RANK", "0") == "0":  # said once, by the first process of a torchrun job
        print(f"data: {plan.reason}; {len(scan.train) + len(scan.valid)} images decoded in {seconds:.1f} s on "
              f"{threads} thread(s)", flush=True)
    return dls
