"""A process's start and end with and without `sddlib.startup.heavy_imports`: fresh interpreters that load the
modules `python -m sddlib` loads before a run (`sddlib.experiment`, `sddlib.training`, `sddlib.distributed`) and
exit, plainly or inside `heavy_imports()` (the collector paused while they load, then frozen), alternated so that
both meet the same load. Prints the median wall and CPU seconds of each, and the collector's own count of what it
froze.

    .venv/bin/python benchmarks/startup.py [--repeat 7]

Timings are recorded in benchmarks/results.md, never asserted by tests; an idle machine only (the load is printed).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

MODULES = "import sddlib.experiment, sddlib.training, sddlib.distributed"
PLAIN = MODULES
PAUSED = "from sddlib.startup import heavy_imports\nwith heavy_imports():\n    " + MODULES
COUNT = "\nimport gc, sys\nprint(gc.get_freeze_count(), file=sys.stderr)"


def one_process(code: str) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and the frozen objects' count of one fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + COUNT], capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, int(done.stderr.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    one_process(PLAIN)   # bytecode caches written, files in the page cache
    times = {"plain": [], "heavy_imports()": []}
    for _ in range(args.repeat):
        for name, code in (("plain", PLAIN), ("heavy_imports()", PAUSED)):
            times[name].append(one_process(code))
    for name, rows in times.items():
        wall, cpu = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        print(f"{name:16s} wall {wall:.2f} s, CPU {cpu:.2f} s (median of {len(rows)}), frozen objects {rows[0][2]:,}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
