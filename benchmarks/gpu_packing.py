"""Several CIFAR-100 runs on one GPU (issue 37): images/s of 1, 2 and 4 concurrent runs of the same training step,
to tell how many runs `--per-gpu` should put on one GPU.

    .venv/bin/python benchmarks/gpu_packing.py                     # a GPU: 1, 2, 4 runs, 300 timed steps each
    .venv/bin/python benchmarks/gpu_packing.py --json packing.json --record
    .venv/bin/python benchmarks/gpu_packing.py --dry-run           # the CPU, seconds: small models, 1 and 2 runs

Each run is throughput.py's path (a), this project's default training step: ResNet32x4 -> ShuffleV1, SD-DKD
M [1,2,4], batch 64, the fastai Learner on device-resident synthetic data of CIFAR-100's shape. The K runs of a
round are processes of their own (forked from one that imported the training code), started together; each warms
up, waits for the others, then times its steps. The table gives each round's images/s in all (K x steps x batch
over the wall time from the first timed step to the last), per run, the peak memory of one run, and the speed-up
over one run. Results are printed and, with `--record`, appended to benchmarks/results.md.
"""
from __future__ import annotations

import argparse
import multiprocessing
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (benchmarks/throughput.py: the timed step)

import torch  # noqa: E402

CONTEXT = multiprocessing.get_context("forkserver")  # each run a fork of a process that never touched CUDA
CONTEXT.set_forkserver_preload(["sddlib.experiment", "torch._dynamo"])  # as tests/forked.py: one server for both


def _one_run(args, barrier, answers) -> None:
    """A child: warm up, wait for the round's other runs, time `args.steps` steps; answer with its figures."""
    device = torch.device(args.device)
    images, labels = throughput.synthetic_cifar((args.warmup + args.steps + 2) * args.batch_size)
    start = []
    out = throughput.run_project(args, device, images, labels, reference_style=False,
                                 ready=lambda: (barrier.wait(), start.append(time.time())))
    answers.put({"start": start[0], "end": time.time(), "seconds": out["seconds"],
                 "peak_device_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None})


def packing_round(args, runs: int) -> dict:
    """`runs` concurrent runs on the device: images/s in all and per run."""
    barrier, answers = CONTEXT.Barrier(runs), CONTEXT.Queue()
    children = [CONTEXT.Process(target=_one_run, args=(args, barrier, answers)) for _ in range(runs)]
    for child in children:
        child.start()
    results = [answers.get(timeout=args.timeout) for _ in children]
    for child in children:
        child.join()
        if child.exitcode:
            raise SystemExit(f"a run of the {runs}-run round failed (exit {child.exitcode}); see its output above.")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    images = runs * args.steps * args.batch_size
    peaks = [r["peak_device_mib"] for r in results if r["peak_device_mib"] is not None]
    return {"runs": runs, "images_per_s": images / wall, "per_run": [args.steps * args.batch_size / r["seconds"]
                                                                      for r in results],
            "wall_s": wall, "peak_device_mib_per_run": max(peaks) if peaks else None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="the CPU, small models, few steps, 1 and 2 runs")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", default="1,2,4", help="the round sizes, e.g. 1,2,4,8")
    ap.add_argument("--steps", type=int, default=300, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--student", default="ShuffleV1")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=600, help="seconds a round may take")
    ap.add_argument("--json", help="write the figures as JSON here")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/results.md")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.device, args.runs, args.steps, args.warmup = "cpu", "1,2", 3, 1
        args.teacher, args.student, args.batch_size = "resnet8", "resnet8", 16
    # throughput.run_project's switches: the project's defaults
    args.channels_last, args.precision, args.compile = False, "fp32", "off"
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {platform.machine()}"
    rounds = [packing_round(args, int(k)) for k in args.runs.split(",")]
    summary = {"device": device_name, "teacher": args.teacher, "student": args.student,
               "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__,
               "rounds": rounds}
    throughput.publish("gpu_packing.py", argv, summary, _table(summary), args.json, args.record)
    return summary


def _table(s: dict) -> str:
    one = s["rounds"][0]["images_per_s"]
    lines = [f"{s['teacher']} -> {s['student']}, SD-DKD M [1,2,4], batch {s['batch_size']}, {s['steps']} timed steps "
             f"per run after {s['warmup']}, on {s['device']} (torch {s['torch']})", "",
             "| concurrent runs | images/s in all | images/s per run | peak MiB per run | vs 1 run | wall s |",
             "|---|---|---|---|---|---|"]
    for r in s["rounds"]:
        peak = "-" if r["peak_device_mib_per_run"] is None else f"{r['peak_device_mib_per_run']:.0f}"
        lines.append(f"| {r['runs']} | {r['images_per_s']:.0f} | "
                     f"{', '.join(f'{x:.0f}' for x in r['per_run'])} | {peak} | {r['images_per_s'] / one:.2f}x | "
                     f"{r['wall_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
