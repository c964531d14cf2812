"""Does reading a dataset from a folder of image files lose anything? The digit mosaics written to disk as an
ImageFolder (PNG, lossless: the same pixels) and trained through `dataset: folder` with the mosaics' protocol,
KD and SD-KD over seeds, to compare with the built-in loader's numbers (`benchmarks/sd_gain.py`).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/folder_parity.py --seeds 0 1 2

The same settings as sd_gain.py's KD rows: resnet14 -> resnet8, the digit_mosaic protocol (8 epochs, batch 64,
SGD lr 0.05 x0.1 after epochs 5 and 7, weight decay 5e-4), KD's defaults (T 4, CE 0.1, KD 0.9, no warm-up), seed s
trained on seed s's mosaics (8,000 train / 2,000 test, written to <data-dir>/digit_mosaic_seed<s>/{train,test}/
<digit>/*.png). What the folder path sets to match the mosaics' loader: image_size 32, augment "crop" (pad 2, crop
32, no flip) and normalize "auto" (every train image is in the sample below 10,000 images, so the mean and std
are the train set's, as the built-in loader computes them). The teacher is the one sddlib ships for the mosaics
(`teacher_ckpt`: the resnet14 sd_gain.py trained, bit for bit), so both paths distil the same teacher. The folder
is kept in memory (`in_memory: true`, the default `--in-memory`): its images cropped in whole batches on the device
like the built-in loader's, in the folder's own random order and with its files listed class by class.
`--in-memory false --output-dir outputs/folder_parity` is the file path the first folder table in results.md
measured (PIL per image in a DataLoader worker). Runs go to `--output-dir`; complete runs are skipped, so a rerun
trains only what is missing. It prints per method best and last top-1, mean ± std over the seeds done.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout: this sddlib, not another one on the path
from sddlib import experiment  # noqa: E402
from sddlib.checkpoints import shipped_teacher_path  # noqa: E402
from sddlib.data import load_digit_mosaics  # noqa: E402

SD_SCALES = "[1,2,4]"


def write_mosaics(data_dir: Path, seed: int) -> Path:
    """Seed `seed`'s mosaics as PNG files in class folders (written once; a complete folder is reused)."""
    from PIL import Image
    root = data_dir / f"digit_mosaic_seed{seed}"
    done = root / ".complete"
    if done.is_file():
        return root
    d = load_digit_mosaics(data_dir, seed=seed)
    for split, folder in (("train", "train"), ("test", "test")):
        for i, (x, y) in enumerate(zip(d[f"x_{split}"], d[f"y_{split}"])):
            path = root / folder / str(int(y)) / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0))).save(path)
    done.write_text("")
    return root


def run_params(folder: Path, scales: str, seed: int, args) -> dict:
    return dict(dataset="folder", data_dir=str(folder), image_size=32, augment="crop", normalize="auto",
                teacher="resnet14", student="resnet8", method="kd", M=scales, seed=seed, epochs=8, lr=0.05,
                lr_decay_stages=[5, 7], teacher_ckpt=str(shipped_teacher_path("digit_mosaic", "resnet14")),
                output_dir=args.output_dir, num_workers=args.workers, figures=False, progress=False,
                subset=args.subset, in_memory=args.in_memory)


def summary(results: dict) -> str:
    lines = ["| Method | M | best top-1 | last top-1 | seeds |", "|:---|:---|---:|---:|---:|"]
    for (name, scales), runs in results.items():
        best = np.array([m["best_top1"] for m in runs])
        last = np.array([m["last_top1"] for m in runs])
        std = (lambda v: f" ± {v.std(ddof=1):.2f}" if len(v) > 1 else "")
        lines.append(f"| {name} | {scales} | {best.mean():.2f}{std(best)} | {last.mean():.2f}{std(last)} | "
                     f"{', '.join(str(m['seed']) for m in runs)} |")
    gains = [sd["best_top1"] - kd["best_top1"] for kd, sd in zip(*results.values())]
    if gains:
        lines.append(f"\nSD-KD − KD paired by seed (best top-1): {', '.join(f'{g:+.2f}' for g in gains)}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", default=str(REPO / "data" / "folder_parity"))
    parser.add_argument("--output-dir", default=str(REPO / "outputs" / "folder_parity_in_memory"))
    parser.add_argument("--in-memory", default="true", choices=["true", "false", "auto"],
                        help="the folder kept in memory (device pipeline) or read from its files (workers)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per run (the file path)")
    parser.add_argument("--subset", type=int, default=0, help="first n images only: a smoke test")
    args = parser.parse_args(argv)
    args.in_memory = {"true": True, "false": False}.get(args.in_memory, args.in_memory)
    results = {("KD", "[1]"): [], ("SD-KD", SD_SCALES): []}
    for seed in args.seeds:  # seed by seed, KD then SD-KD: a call stopped early leaves complete pairs
        folder = write_mosaics(Path(args.data_dir), seed)
        for (name, scales), runs in results.items():
            metrics = experiment.run(run_params(folder, scales, seed, args))
            runs.append(metrics)
            print(f"{name} seed {seed}: best {metrics['best_top1']:.2f}, last {metrics['last_top1']:.2f}, "
                  f"{metrics['wall_time_s']:.0f} s", flush=True)
        print(summary(results), flush=True)


if __name__ == "__main__":
    main()
