"""Time the README's main job: the quickstart notebook executed headlessly with its defaults, from an empty
output folder (the mosaics generated, then the student alone, KD and SD-KD trained under the full
digit_mosaic schedule with the teacher that ships with sddlib).

    .venv/bin/python benchmarks/quickstart.py            # adds a row to the quickstart table of benchmarks/results.md

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


TABLE_HEADER = "| date | job | wall time | machine | best top-1 per run |"


def record(line: str) -> None:
    """Add `line` as the last row of the quickstart table in benchmarks/results.md (made when missing), above
    whatever sections follow it."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    if TABLE_HEADER not in lines:
        lines[1:1] = ["", TABLE_HEADER, "|---|---|---|---|---|"]
    end = lines.index(TABLE_HEADER) + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines.insert(end, line)
    RESULTS.write_text("\n".join(lines) + "\n")


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="keep the outputs in this folder instead of a temporary one")
    parser.add_argument("--no-record", action="store_true", help="do not add the row to benchmarks/results.md")
    args = parser.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="sdd-quickstart-"))
    shutil.rmtree(work / "outputs", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pm.execute_notebook(str(REPO / "notebooks" / "quickstart.ipynb"), str(work / "quickstart.ipynb"), cwd=str(REPO),
                        parameters={"output_dir": str(work / "outputs"), "data_dir": str(work / "data")},
                        kernel_name="python3", progress_bar=False)
    seconds = time.perf_counter() - start
    runs = [json.loads(p.read_text()) for p in sorted(work.glob("outputs/digit_mosaic/*/metrics.json"))]
    accuracy = {m["run_name"]: round(m["best_top1"], 2) for m in runs}
    distilled = [m for m in runs if m.get("teacher_source")]
    if distilled:  # the teacher's test top-1, and where it came from (shipped with sddlib, or trained here)
        teacher = f"teacher {distilled[0]['teacher']} ({distilled[0]['teacher_source']['source']})"
        accuracy[teacher] = round(distilled[0]["teacher_top1"], 2)
    epochs = "/".join(str(e) for e in sorted({m["params"]["epochs"] for m in runs}))
    line = (f"| {datetime.date.today()} | quickstart.ipynb (defaults, {epochs} epochs) | {seconds:.0f} s | "
            f"{os.cpu_count()} CPU cores, "
            f"{platform.processor() or platform.machine()}, torch {torch.__version__} | "
            f"{'; '.join(f'{k}: {v}' for k, v in accuracy.items())} |")
    print(line)
    if not args.no_record:
        record(line)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return seconds


if __name__ == "__main__":
    main()
