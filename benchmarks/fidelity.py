"""Does the fast path train as well as the reference-style path? Full digit-mosaic runs, several seeds each.

    .venv/bin/python benchmarks/fidelity.py --seeds 0 1 2 --record
    .venv/bin/python benchmarks/fidelity.py --subset 2000 --record      # a quarter of the mosaics (CPU)
    .venv/bin/python benchmarks/fidelity.py --device cuda -p precision bf16 -p channels_last true --record

Both paths run the same experiment (`--method`, M [1,2,4], the digit_mosaic protocol, the same cached
teacher) through `sddlib.experiment.run`; they differ only in how a step is computed:
  fast       the project's defaults: the device-resident pipeline (batched crop/flip on the training
             device), plus any speed switches given with -p (precision, channels_last, compile);
  reference  per-image torchvision transforms in DataLoader workers, fp32, no switches.
The two pipelines draw different augmentations, so single runs differ; what must agree is the accuracy
over seeds. The table gives best and last top-1 per seed, mean ± std per path, and the difference of
the means beside the seeds' spread. Results are printed and, with --record, appended to
benchmarks/results.md; tests never assert them.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results.md"


def _mean_std(values) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.2f} ± {std:.2f}"


def main(argv=None) -> dict:
    from sddlib import experiment
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--method", default="dkd", choices=("kd", "dkd", "nkd"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--subset", type=int, default=0, help="first n train and test mosaics (0: all 8000 / 2000)")
    ap.add_argument("--output-dir", default=str(REPO / "outputs" / "benchmarks" / "fidelity"))
    ap.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), default=[],
                    help="a speed switch of the fast path, e.g. -p precision bf16")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/results.md")
    args = ap.parse_args(argv)
    switches = {key: yaml.safe_load(value) for key, value in args.parameter}
    common = dict(dataset="digit_mosaic", method=args.method, M="[1,2,4]", device=args.device, subset=args.subset,
                  output_dir=args.output_dir, figures=False, progress=False)
    paths = {"fast": dict(pipeline="auto", **switches), "reference": dict(pipeline="workers")}
    results = {name: [] for name in paths}
    for seed in args.seeds:
        for name, extra in paths.items():
            params = {**common, **extra, "seed": seed, "run_name": f"{name}-{args.method}-seed{seed}"}
            metrics = experiment.run(params)
            results[name].append((metrics["best_top1"], metrics["last_top1"], metrics["wall_time_s"]))

    cfg = experiment.RunConfig.from_params({**common, **paths["fast"]})
    device = torch.cuda.get_device_name(0) if cfg.device != "cpu" and torch.cuda.is_available() else \
        f"{os.cpu_count()} CPU cores, {platform.machine()}"
    switch_text = ", ".join(f"{k}={v}" for k, v in switches.items()) or "default switches"
    lines = [f"{cfg.teacher} -> {cfg.student}, SD-{args.method.upper()} M [1,2,4], digit_mosaic protocol "
             f"({cfg.epochs} epochs, {'all' if not args.subset else f'first {args.subset}'} mosaics), "
             f"seeds {args.seeds}, on {device} (torch {torch.__version__}); "
             f"fast = device pipeline, {switch_text}; reference = worker transforms, fp32", "",
             "| path | best top-1 per seed | last top-1 per seed | best mean ± std | last mean ± std | s per run |",
             "|---|---|---|---|---|---|"]
    for name, rows in results.items():
        best, last, wall = zip(*rows)
        lines.append(f"| {name} | {' / '.join(f'{v:.2f}' for v in best)} | {' / '.join(f'{v:.2f}' for v in last)} "
                     f"| {_mean_std(best)} | {_mean_std(last)} | {statistics.fmean(wall):.0f} |")
    diff = {k: statistics.fmean(r[k] for r in results["fast"]) - statistics.fmean(r[k] for r in results["reference"])
            for k in (0, 1)}
    lines += ["", f"fast - reference: best {diff[0]:+.2f}, last {diff[1]:+.2f} points (mean over seeds)"]
    table = "\n".join(lines)
    print(table)
    if args.record:
        command = " ".join(["benchmarks/fidelity.py", *(argv if argv is not None else sys.argv[1:])])
        with RESULTS.open("a") as f:
            f.write(f"\n### fidelity.py, {datetime.date.today()}, {device}\n\n`{command}`\n\n{table}\n")
    return {"results": results, "difference": diff}


if __name__ == "__main__":
    main()
