"""How big a run's region file is and how fast the explorer is, on a CIFAR-100-sized run: the figures' sample of
512 test images of 32x32 pixels, 100 classes, scales 1, 2, 4 (21 regions), teacher, SD student and plain-method
student (random logits: the sizes and times do not depend on the values), and a CUB-200-sized one (224 px
images, 200 classes).

    .venv/bin/python benchmarks/explorer.py            # prints the file sizes, the open time, the redraw times
    .venv/bin/python benchmarks/explorer.py --record   # and appends them to benchmarks/results.md

Goals (issue 21): opening under 3 s, each control change redrawn under 300 ms, the file under 20 MB.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from recording import heading, publish

from sddlib import viz
from sddlib.viz.predictions import RegionPredictions

def fake_run(folder: Path, classes: int, size: int, n: int = 512) -> Path:
    g = torch.Generator().manual_seed(0)
    targets = torch.arange(n) % classes
    def regions():
        return torch.randn(n, classes, 21, generator=g)
    preds = RegionPredictions(torch.rand(n, 3, size, size, generator=g), targets, regions(), regions(), (1, 2, 4),
                              [f"class {i}" for i in range(classes)])
    plain = RegionPredictions(preds.images, targets, preds.teacher_regions, regions(), (1, 2, 4), preds.class_names)
    path = viz.save_region_file(preds, folder / "figures" / viz.REGION_FILE, baseline=plain)
    (folder / "metrics.json").write_text(json.dumps({"status": "complete", "variant": "sd_kd"}))
    return path


def measure(folder: Path) -> dict:
    start = time.perf_counter()
    app = viz.explore(folder)
    opened = time.perf_counter() - start
    changes = [(app.scale, 2), (app.scale, 1), (app.scale, 4), (app.model, "both"), (app.model, "student"),
               (app.shown_class, "top1"), (app.shown_class, "target"), (app.ranking, "complementary"),
               (app.class_filter, 3), (app.class_filter, -1), (app.position, 5), (app.position, 9)]
    times = []
    for control, value in changes:
        start = time.perf_counter()
        control.value = value
        times.append(time.perf_counter() - start)
    return {"open_s": opened, "redraw_median_ms": 1000 * statistics.median(times), "redraw_max_ms": 1000 * max(times)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    rows = []
    for name, classes, size in (("CIFAR-100-sized", 100, 32), ("CUB-200-sized", 200, 224)):
        with tempfile.TemporaryDirectory() as tmp:
            path = fake_run(Path(tmp), classes, size)
            result = measure(Path(tmp))
            rows.append(f"| {name} | {path.stat().st_size / 1e6:.2f} | {result['open_s']:.2f} | "
                        f"{result['redraw_median_ms']:.0f} | {result['redraw_max_ms']:.0f} |")
            print(rows[-1], flush=True)
    table = (heading("Region explorer", load) + "`.venv/bin/python benchmarks/explorer.py`: a run's "
             "`figures/region_predictions.npz` (512 test images, 21 regions, top-5 of teacher, SD and plain-method "
             "students), the time `explore(run_dir)` takes to open, and the time 12 control changes take to "
             "redraw (goals: 20 MB, 3 s, 300 ms).\n\n| run | file (MB) | open (s) | redraw median (ms) | "
             "redraw max (ms) |\n|---|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n")
    publish(table, args.record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
