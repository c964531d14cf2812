"""Time the README's main job: the quickstart notebook executed headlessly, from an empty output
folder (teacher, student alone and six distillations trained; mosaics generated unless cached).

    .venv/bin/python benchmarks/quickstart.py            # appends a row to benchmarks/results.md

The goal is under 10 minutes on a 2-core CPU machine. Timings are recorded here, never asserted by tests.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import papermill as pm
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results.md"


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="keep the outputs in this folder instead of a temporary one")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.md")
    args = parser.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="sdd-quickstart-"))
    shutil.rmtree(work / "outputs", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pm.execute_notebook(str(REPO / "notebooks" / "quickstart.ipynb"), str(work / "quickstart.ipynb"), cwd=str(REPO),
                        parameters={"output_dir": str(work / "outputs"), "data_dir": str(work / "data")},
                        kernel_name="python3", progress_bar=False)
    seconds = time.perf_counter() - start
    runs = sorted(work.glob("outputs/digit_mosaic/*/metrics.json"))
    accuracy = {json.loads(p.read_text())["run_name"]: round(json.loads(p.read_text())["best_top1"], 2) for p in runs}
    line = (f"| {datetime.date.today()} | quickstart.ipynb (defaults) | {seconds:.0f} s | {os.cpu_count()} CPU cores, "
            f"{platform.processor() or platform.machine()}, torch {torch.__version__} | "
            f"{'; '.join(f'{k}: {v}' for k, v in accuracy.items())} |")
    print(line)
    if not args.no_record:
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmark results\n\n| date | job | wall time | machine | best top-1 per run |\n"
                               "|---|---|---|---|---|\n")
        with RESULTS.open("a") as f:
            f.write(line + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return seconds


if __name__ == "__main__":
    main()
