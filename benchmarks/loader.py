"""Images/s the ImageNet, CUB-200 and image-folder training loaders sustain on this machine (no model: the loader
alone).

    .venv/bin/python benchmarks/loader.py --record
    .venv/bin/python benchmarks/loader.py --dataset imagenet --workers 2 4 8 --batches 40
    .venv/bin/python benchmarks/loader.py --device cuda --pipeline workers device_decode   # nvJPEG on a GPU
    .venv/bin/python benchmarks/loader.py --dataset folder --pipeline workers --folder path/to/your/images

The datasets cannot be downloaded here, so the script writes each one's real on-disk layout
(tests/fake_datasets.py) with photo-like JPEGs of the datasets' typical size (500 x 375, quality 90,
smooth content with texture, about the bytes per image of the real sets) and times the project's own
training loader (`sddlib.data.get_dataloaders`: decoding, RandomResizedCrop(224), flip, normalisation in
DataLoader worker processes, persistent workers, pinned memory on CUDA; or, with `device_decode`, workers
that only read the bytes and decoding plus augmentation on `--device`) for each worker count, after one
warm-up batch, until the batch is on the device. A GPU trains ResNet-50 -> MobileNetV1 at some thousands of images/s; a loader slower than
that leaves it idle, which this table makes visible before a user pays for the GPU hours.

`--dataset folder` times `dataset: folder` (sddlib.data.image_folder, the ImageNet recipe at 224 px) on an
ImageFolder written the same way, or on `--folder`, a folder of your own; its table also gives the seconds the
loader takes to be built, which includes decoding every image once (the check for unreadable files).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
RESULTS = REPO / "benchmarks" / "results.md"


def _photo_like(path: Path, rng) -> int:
    """Replace a JPEG's pixels by smooth, textured content of the same size; return its new size in bytes."""
    from PIL import Image
    w, h = Image.open(path).size
    coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    texture = rng.normal(0, 20, (h, w, 3))  # ~105 KiB at 500 x 375: about ImageNet's mean file size
    img = Image.fromarray(np.clip(np.asarray(img) + texture, 0, 255).astype(np.uint8))
    img.save(path, "JPEG", quality=90)
    return path.stat().st_size


def write_dataset(name: str, root: Path, n_images: int) -> float:
    """The dataset's layout with `n_images` training images; returns the mean JPEG size in KiB."""
    from fake_datasets import write_tiny_cub200, write_tiny_imagenet
    n_classes = 10
    if name in ("imagenet", "folder"):  # the folder: ImageNet's layout, train/<class>/ + val/<class>/
        write_tiny_imagenet(root, n_classes=n_classes, per_class=n_images // n_classes, size=500)
    else:
        write_tiny_cub200(root, n_classes=n_classes, per_class=2 * n_images // n_classes, size=500)  # half are train
    rng = np.random.default_rng(0)
    sizes = [_photo_like(p, rng) for p in sorted(root.rglob("*")) if p.suffix.lower() in (".jpeg", ".jpg")]
    return float(np.mean(sizes)) / 1024


def loader_rate(name: str, root: Path, pipeline: str, workers: int, batch_size: int, batches: int,
                device: str) -> tuple[float, float, int]:
    """Images/s, the seconds building the loader took, and the training images of one epoch."""
    import torch

    from sddlib.data import get_dataloaders
    built = time.perf_counter()
    dls = get_dataloaders(name, root, bs=batch_size, num_workers=workers, device=device, pipeline=pipeline,
                          **({"image_size": 224} if name == "folder" else {}))
    built = time.perf_counter() - built
    it = iter(dls.train)
    next(it)  # workers started, first batch decoded
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(dls.train)
            x, _ = next(it)
        seen += len(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start), built, len(dls.train.dataset)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", nargs="+", default=["imagenet", "cub200"], choices=("imagenet", "cub200", "folder"))
    ap.add_argument("--folder", help="--dataset folder: time this folder of yours instead of written images")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pipeline", nargs="+", default=["workers", "device_decode"],
                    choices=("workers", "device_decode"))
    ap.add_argument("--device", default="cpu", help="where batches go (and device_decode decodes)")
    ap.add_argument("--images", type=int, default=640, help="training images written per dataset")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/results.md")
    args = ap.parse_args(argv)
    import torch
    machine = f"{os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}"
    if args.device.startswith("cuda"):
        machine += f", batches to {torch.cuda.get_device_name(0)}"
    lines = [f"training loader alone, batch {args.batch_size}, {args.batches} timed batches after one, on {machine}",
             "", "| dataset | mean JPEG KiB | pipeline | worker processes | images/s | one epoch of the real set | "
             "loader built in |", "|---|---|---|---|---|---|---|"]
    epoch_images = {"imagenet": 1_281_167, "cub200": 5_994}
    rates = {}
    with tempfile.TemporaryDirectory(prefix="sdd-loader-") as tmp:
        for name in args.dataset:
            root = Path(args.folder) if name == "folder" and args.folder else Path(tmp) / name
            kib = write_dataset(name, root, args.images) if root.is_relative_to(tmp) else float("nan")
            for pipeline in args.pipeline if name != "folder" else ["workers"]:
                for workers in args.workers:
                    rate, built, n_train = loader_rate(name, root, pipeline, workers, args.batch_size, args.batches,
                                                       args.device)
                    rates[(name, pipeline, workers)] = rate
                    epoch = epoch_images.get(name, n_train) / rate   # a folder: its own training images
                    lines.append(f"| {name} | {kib:.0f} | {pipeline} | {workers} | {rate:.0f} | "
                                 + (f"{epoch / 3600:.1f} h |" if epoch > 3600 else f"{epoch:.0f} s |")
                                 + f" {built:.1f} s |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        command = " ".join(["benchmarks/loader.py", *(argv if argv is not None else sys.argv[1:])])
        with RESULTS.open("a") as f:
            f.write(f"\n### loader.py, {datetime.date.today()}, {os.cpu_count()} CPU cores\n\n`{command}`\n\n{table}\n")
    return rates


if __name__ == "__main__":
    main()
