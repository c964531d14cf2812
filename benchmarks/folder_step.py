"""Does your own folder train as fast as the built-in data? The digit mosaics through the built-in loader against
the same mosaics written as a PNG folder (benchmarks/folder_parity.py's layout) and loaded by `dataset: folder`, a
full training step each: resnet8 student, batch 64, KD from the resnet14 sddlib ships (`sddlib.distill_learner`),
and the same student trained alone (cross-entropy, no teacher forward to hide the loader). Images per second of
the training epochs (validation skipped), the paths alternating round by round in one process.

    .venv/bin/python benchmarks/folder_step.py --record                   # the idle machine: every core
    .venv/bin/python benchmarks/folder_step.py --paths builtin memory files --rounds 3
    .venv/bin/python benchmarks/folder_step.py --device cuda --paths builtin memory files   # on a GPU
    .venv/bin/python benchmarks/folder_step.py --rounds 1 --steps 5 --n-train 640   # a smoke test

Paths: `builtin` (sddlib.data.digit_mosaic, uint8 tensors augmented in batches on the device), `memory` (the
folder kept in memory, in_memory=True: the same device pipeline), `files` (in_memory=False: PIL per image in
DataLoader workers, `--workers` of them). The folder uses the mosaics' recipe (image_size 32, augment "crop",
normalize "auto"). It prints the median images/s per path and mode and each folder path's ratio to the built-in
one (the goal: at least 0.9); `--record` appends the table to benchmarks/results.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

MODES = ("kd", "alone")


def loaders(path: str, args):
    from folder_parity import write_mosaics

    from sddlib.data import get_dataloaders, image_folder
    common = dict(bs=64, seed=0, device=args.device)
    if path == "builtin":
        return get_dataloaders("digit_mosaic", args.data_dir, n_train=args.n_train, n_test=args.n_test, **common)
    folder = write_mosaics(Path(args.data_dir), 0) if args.n_train == 8000 else _small_folder(args)
    return image_folder(folder, image_size=32, augment="crop", normalize="auto", num_workers=args.workers,
                        in_memory=path == "memory", **common)


def _small_folder(args) -> Path:
    """The first n_train / n_test mosaics of seed 0 as PNG class folders (a smoke test's folder)."""
    import numpy as np
    from PIL import Image

    from sddlib.data import load_digit_mosaics
    root = Path(args.data_dir) / f"digit_mosaic_seed0_{args.n_train}"
    if (root / ".complete").is_file():
        return root
    d = load_digit_mosaics(args.data_dir, args.n_train, args.n_test, 0)
    for split in ("train", "test"):
        for i, (x, y) in enumerate(zip(d[f"x_{split}"], d[f"y_{split}"])):
            file = root / split / str(int(y)) / f"{i:05d}.png"
            file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0))).save(file)
    (root / ".complete").write_text("")
    return root


def learner(dls, mode: str):
    from sddlib import distill_learner
    from sddlib.checkpoints import load_checkpoint, shipped_teacher_path
    from sddlib.models import create_model
    from sddlib.training import build_learner
    student = create_model("resnet8", num_classes=10, stem="cifar")
    if mode == "alone":
        return build_learner(dls, student, {"dataset": "digit_mosaic", "teacher": "resnet14", "student": "resnet8",
                                            "progress": False})
    teacher = create_model("resnet14", num_classes=10, stem="cifar")
    load_checkpoint(teacher, shipped_teacher_path("digit_mosaic", "resnet14"), arch="resnet14")
    return distill_learner(dls, student, teacher, method="kd", M="[1]", epochs=8, progress=False)


def timed_epoch(learn, steps: int) -> tuple[int, float]:
    """(images, seconds) of one training epoch (or its first `steps` batches), validation skipped."""
    from fastai.callback.core import Callback, CancelEpochException, CancelValidException

    class Timer(Callback):
        order = 100

        def before_train(self):
            self.images, self.start = 0, time.perf_counter()

        def after_batch(self):
            if self.training:
                self.images += len(self.yb[0])
                if steps and self.iter + 1 >= steps:
                    self.seconds = time.perf_counter() - self.start
                    raise CancelEpochException

        def after_train(self):
            self.seconds = time.perf_counter() - self.start

        def before_validate(self):
            raise CancelValidException

    timer = Timer()
    learn.fit(1, cbs=[timer])
    return timer.images, timer.seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", nargs="+", default=["builtin", "memory"], choices=["builtin", "memory", "files"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--rounds", type=int, default=3, help="epochs per path and mode, alternating")
    parser.add_argument("--steps", type=int, default=0, help="batches per epoch (0: the whole epoch)")
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="the files path's workers")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument("--data-dir", default=str(REPO / "data" / "folder_parity"))
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/results.md")
    args = parser.parse_args(argv)
    import torch

    from recording import heading, publish
    load = os.getloadavg()[0]
    dls = {path: loaders(path, args) for path in args.paths}
    speeds = {(mode, path): [] for mode in args.modes for path in args.paths}
    for mode in args.modes:
        learners = {path: learner(dls[path], mode) for path in args.paths}
        for path in args.paths:  # one untimed warm-up batch each (first-call allocations, worker start)
            timed_epoch(learners[path], 1)
        for r in range(args.rounds):
            for path in args.paths if r % 2 == 0 else reversed(args.paths):
                images, seconds = timed_epoch(learners[path], args.steps)
                speeds[(mode, path)].append(images / seconds)
                print(f"{mode} {path} round {r}: {images} images in {seconds:.1f} s, {images / seconds:.0f} images/s",
                      flush=True)
    rows = ["| step | path | images/s (median of rounds) | rounds | vs built-in |", "|:---|:---|---:|---:|---:|"]
    result = {}
    for (mode, path), values in speeds.items():
        median = statistics.median(values)
        base = statistics.median(speeds[(mode, "builtin")]) if (mode, "builtin") in speeds else None
        ratio = f"{median / base:.2f}x" if base and path != "builtin" else ""
        result[(mode, path)] = median
        step = "KD resnet14 -> resnet8" if mode == "kd" else "resnet8 alone"
        rows.append(f"| {step} | {path} | {median:.0f} | {len(values)} | {ratio} |")
    table = (heading("Folder vs built-in loader, a full training step (benchmarks/folder_step.py)", load)
             + f"Digit mosaics ({args.n_train} train) on {args.device}, batch 64, {args.steps or 'whole'} "
               f"{'steps' if args.steps else 'epochs'}, {torch.get_num_threads()} torch threads; paths alternating. "
               f"Command: `.venv/bin/python benchmarks/folder_step.py {' '.join(argv or sys.argv[1:])}`.\n\n"
             + "\n".join(rows) + "\n")
    publish(table, args.record)
    return result


if __name__ == "__main__":
    main()
