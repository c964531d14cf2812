"""The estimate against the runs it estimates: one plan (the quickstart protocol by default: digit mosaics, resnet14
shipped teacher -> resnet8, KD and SD-KD at M=[1,2,4] and the student alone, 8 epochs, seed 0) estimated by
`sddlib.run_cost` (what `python -m sddlib.sweep ... --seeds 0 --estimate` prints), then each run trained in a fresh
process of its own, as a job of a sweep trains it (`python -m sddlib -f <its params>`, `--alone` for the student
alone), and compared with what it recorded: the fit's `wall_time_s` against the estimate's epochs, and the whole
process against the run's estimate in all (its fixed costs too: start, imports, data, models, teacher evaluation).

    .venv/bin/python benchmarks/estimate.py                      # prints the comparison
    .venv/bin/python benchmarks/estimate.py --record             # ... and adds it to benchmarks/results.md

Timings are recorded here, never asserted by tests. On a shared machine say so (the load is recorded beside them).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sddlib import experiment
from sddlib.plan import build_plan
from sddlib.run_cost import describe_total, device_name, estimate_plan

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results.md"
QUICKSTART = {"dataset": "digit_mosaic", "teacher": "resnet14", "student": "resnet8", "method": "kd",
              "M": "[1,2,4]", "channels_last": True, "figures": False, "progress": False}


def run_in_fresh_process(planned, folder: Path) -> float:
    """Train one planned run in a fresh process, as its job would; the seconds the process took."""
    if planned.kind == "teacher":
        raise SystemExit("this benchmark times plans whose teachers are shipped or published (no teacher runs).")
    file = folder / f"{planned.run}.yaml"
    file.write_text(yaml.safe_dump(planned.params))
    command = [sys.executable, "-m", "sddlib", "-f", str(file)] + (["--alone"] if planned.kind == "alone" else [])
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(REPO / "data"), help="where the mosaics are (generated when missing)")
    ap.add_argument("--epochs", type=int, help="shorten the protocol (default: its 8 epochs)")
    ap.add_argument("--record", action="store_true", help="add the result to benchmarks/results.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        params = {**QUICKSTART, **({"epochs": args.epochs} if args.epochs else {})}
        file = Path(tmp) / "quickstart-sd_kd.yaml"
        file.write_text(yaml.safe_dump(params))
        plan = build_plan([file], {"data_dir": args.data_dir, "output_dir": str(Path(tmp) / "out")}, seeds=[0])
        experiment.run_vanilla({**plan.runs[0].params, "epochs": 1, "subset": 64,
                                "output_dir": str(Path(tmp) / "warm")})  # the mosaics generated, not timed
        load = [os.getloadavg()[0]]
        start = time.perf_counter()
        costs = estimate_plan(plan.runs)
        estimate_seconds = time.perf_counter() - start
        totals = describe_total(plan.runs, costs, 1, device_name(plan.runs[0].params))
        rows = []
        for planned in plan.runs:
            seconds = run_in_fresh_process(planned, Path(tmp))
            load.append(os.getloadavg()[0])
            metrics = experiment.load_metrics(Path(planned.folder) / "metrics.json")
            cost = costs[planned.folder]
            rows.append((planned.run, cost.seconds - cost.fixed, metrics["wall_time_s"], cost.seconds, seconds))
    lines = ["| run | estimated epochs (s) | recorded wall_time_s | ratio | estimated in all (s) | its process (s) "
             "| ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, fit, wall, total, call in rows:
        lines.append(f"| {name} | {fit:.0f} | {wall:.0f} | {fit / wall:.2f} | {total:.0f} | {call:.0f} | "
                     f"{total / call:.2f} |")
    fit, wall, total, call = (sum(r[i] for r in rows) for i in (1, 2, 3, 4))
    lines.append(f"| all | {fit:.0f} | {wall:.0f} | {fit / wall:.2f} | {total:.0f} | {call:.0f} | {total / call:.2f} |")
    text = "\n".join(lines)
    print(totals, f"(the estimate took {estimate_seconds:.0f} s; load average {min(load):.1f} to {max(load):.1f})",
          text, sep="\n")
    if args.record:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        epochs = f"--epochs {args.epochs}" if args.epochs else "its 8 epochs"
        RESULTS.write_text(RESULTS.read_text().rstrip("\n") + f"""

## The plan's estimate against its runs (`benchmarks/estimate.py`, issue 36)

{stamp}, `.venv/bin/python benchmarks/estimate.py --record` ({epochs}), {platform.platform()},
{os.cpu_count()} CPU cores, load average {min(load):.1f} to {max(load):.1f} while it ran (about 2 is the benchmark
itself on 2 cores; more means others shared the machine). The estimate took {estimate_seconds:.0f} s; {totals}.

{text}
""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
