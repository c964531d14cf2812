"""A CUB-200-sized folder in memory against the same folder read from its files, and how long a 50,000-image
small-image folder takes to load.

    .venv/bin/python benchmarks/folder_memory.py --record                       # the idle machine
    .venv/bin/python benchmarks/folder_memory.py --device cuda --record         # a GPU: the same on it
    .venv/bin/python benchmarks/folder_memory.py --classes 4 --per-class 6 --val-per-class 2 --small 500 \\
        --batches 2 --rounds 1                                                  # a smoke test

Part 1 writes 200 classes x 30 training and 29 validation photo-like JPEGs (smooth content with texture, 500 x 375
or 375 x 500, quality 90: CUB-200-2011's 5,994 / 5,794 images and typical size) as train/<class>/ + val/<class>/,
and loads it with `dataset: folder`'s ImageNet recipe at 224 px twice: in memory (in_memory=True: kept at a short
side of 256, the device pipeline's batched random resized crop) and from the files (in_memory=False: PIL per
image in `--workers` DataLoader workers). For each: the load time (the check pass that decodes every image, and
its threads), the memory the decoded images take (the loader's own figure, and the process's resident memory
growth), and the training images/s of the loader alone and through a ResNet-18 student step (SGD, batch 64,
cross-entropy), the two paths alternating. Part 2 writes `--small` 32 x 32 PNGs in 10 class folders and times
loading them in memory (the CIFAR recipe at 32 px). `--record` appends both tables to benchmarks/results.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def _photo(args) -> None:
    """One photo-like JPEG: coarse random colours upsampled smoothly, plus texture noise."""
    from PIL import Image
    path, seed, small = args
    rng = np.random.default_rng(seed)
    if small:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        return
    w, h = (500, 375) if rng.random() < 0.75 else (375, 500)
    coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float64)
    img = np.clip(img + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, "JPEG", quality=90)


def write_folder(root: Path, splits: dict, small: bool) -> Path:
    """`root/<split>/<class>/<i>.(jpg|png)` for {split: (classes, per class)}, written once on every core."""
    if (root / ".complete").is_file():
        return root
    jobs = []
    for split, (classes, per_class) in splits.items():
        for c in range(classes):
            folder = root / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs += [(str(folder / f"{i}.{'png' if small else 'jpg'}"), len(jobs), small) for i in range(per_class)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_photo, jobs, chunksize=64))
    (root / ".complete").write_text("")
    return root


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def load(root: Path, in_memory: bool, args, **kw):
    from sddlib.data import image_folder
    before, start = resident_bytes(), time.perf_counter()
    dls = image_folder(root, bs=64, num_workers=args.workers, device=args.device, in_memory=in_memory, **kw)
    seconds = time.perf_counter() - start
    return dls, {"load_s": seconds, "decode_s": dls.folder["decode_s"], "threads": dls.folder["decode_threads"],
                 "kept_bytes": dls.folder["memory"]["footprint_bytes"] if in_memory else 0,
                 "resident_growth": resident_bytes() - before}


def _sync(device):
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def images_per_second(dl, batches: int, step=None, device="cpu") -> float:
    """Training images/s over `batches` batches after one warm-up batch (the loader alone, or with `step`)."""
    it = iter(dl)
    x, y = next(it)
    if step is not None:
        step(x, y)
    _sync(device)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(dl)
            x, y = next(it)
        if step is not None:
            step(x, y)
        images += len(y)
    _sync(device)
    return images / (time.perf_counter() - start)


def resnet18_step(num_classes: int, device):
    import torch
    from torch import nn

    from sddlib.models import create_model
    model = create_model("ResNet18", num_classes=num_classes, stem="torchvision").to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss_func = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss_func(model(x.to(device)), y.to(device)).backward()
        opt.step()
    return step


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def cub_sized(args, load_avg: float) -> str:
    from recording import heading
    root = write_folder(Path(args.data_dir) / f"cub_sized_{args.classes}x{args.per_class}",
                        {"train": (args.classes, args.per_class), "val": (args.classes, args.val_per_class)}, False)
    dls, facts = {}, {}
    for name, in_memory in (("memory", True), ("files", False)):
        dls[name], facts[name] = load(root, in_memory, args, image_size=224, augment="imagenet")
    speeds = {(name, what): [] for name in dls for what in ("loader", "ResNet-18 step")}
    step = resnet18_step(args.classes, args.device)
    for r in range(args.rounds):
        for name in dls if r % 2 == 0 else reversed(list(dls)):
            speeds[(name, "loader")].append(images_per_second(dls[name].train, args.batches, device=args.device))
            speeds[(name, "ResNet-18 step")].append(images_per_second(dls[name].train, args.step_batches, step,
                                                                      args.device))
            print(f"round {r} {name}: loader {speeds[(name, 'loader')][-1]:.0f} images/s, ResNet-18 step "
                  f"{speeds[(name, 'ResNet-18 step')][-1]:.1f} images/s", flush=True)
    n = len(dls["memory"].train.dataset) + len(dls["memory"].valid.dataset)
    rows = ["| path | load (s) | check pass (s, threads) | decoded images kept | resident growth | loader images/s "
            "| ResNet-18 step images/s |", "|:---|---:|---:|---:|---:|---:|---:|"]
    for name in dls:
        f = facts[name]
        rows.append(f"| {name} | {f['load_s']:.1f} | {f['decode_s']:.1f} ({f['threads']}) | "
                    f"{gib(f['kept_bytes']) if f['kept_bytes'] else '-'} | {gib(f['resident_growth'])} | "
                    f"{statistics.median(speeds[(name, 'loader')]):.0f} | "
                    f"{statistics.median(speeds[(name, 'ResNet-18 step')]):.1f} |")
    return (heading(f"A CUB-200-sized folder in memory vs from files, {args.device} (benchmarks/folder_memory.py)",
                    load_avg)
            + f"{args.classes} classes x {args.per_class} train + {args.val_per_class} val photo-like JPEGs ({n} "
              f"images), ImageNet recipe at 224 px, batch 64; files: {args.workers} workers; medians of "
              f"{args.rounds} alternating rounds of {args.batches} (loader) and {args.step_batches} (step) batches. "
              f"Command: `.venv/bin/python benchmarks/folder_memory.py {' '.join(sys.argv[1:])}`.\n\n"
            + "\n".join(rows) + "\n")


def small_folder(args, load_avg: float) -> str:
    from recording import heading
    root = write_folder(Path(args.data_dir) / f"small_{args.small}", {"train": (10, args.small // 10 - 10),
                                                                      "val": (10, 10)}, True)
    dls, facts = load(root, True, args, image_size=32, augment="cifar")
    return (heading("Loading a small-image folder in memory (benchmarks/folder_memory.py)", load_avg)
            + f"{args.small} 32 x 32 PNGs in 10 class folders, the CIFAR recipe at 32 px, in memory.\n\n"
            + "| images | load (s) | check pass (s) | threads | decoded images kept |\n|---:|---:|---:|---:|---:|\n"
            + f"| {len(dls.train.dataset) + len(dls.valid.dataset)} | {facts['load_s']:.1f} | "
              f"{facts['decode_s']:.1f} | {facts['threads']} | {gib(facts['kept_bytes'])} |\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--per-class", type=int, default=30, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=29)
    parser.add_argument("--small", type=int, default=50_000, help="images of part 2's small-image folder (0: skip)")
    parser.add_argument("--batches", type=int, default=30, help="batches timed per round, the loader alone")
    parser.add_argument("--step-batches", type=int, default=5, help="batches timed per round, with the step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="the files path's workers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=str(REPO / "data" / "folder_memory"))
    parser.add_argument("--record", action="store_true", help="append the tables to benchmarks/results.md")
    args = parser.parse_args(argv)
    from recording import publish

    load_avg = os.getloadavg()[0]
    warm = write_folder(Path(args.data_dir) / "warm_up", {"train": (2, 2), "val": (2, 1)}, False)
    for in_memory in (True, False):   # the first load imports fastai and torchvision: not part of the load times
        load(warm, in_memory, args, image_size=224, augment="imagenet")
    tables = [cub_sized(args, load_avg)]
    if args.small:
        tables.append(small_folder(args, load_avg))
    publish("".join(tables), args.record)


if __name__ == "__main__":
    main()
