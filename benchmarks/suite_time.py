"""How long CI takes on a fresh clone: `git clone` of a branch into a new temporary folder, then `bash .ci/run`
there (the virtual environment installed from nothing, then `make test`), timed as a whole and pytest's own wall
time read from its summary line; with the date, the machine's cores and its load average before and after, since a
time taken on a loaded machine says little (issue 30: at most 8 minutes in all, pytest at most 5, twice).

    .venv/bin/python benchmarks/suite_time.py --branch main --repeat 2 [--source .] [--json out.json]

Each repetition is a fresh clone (nothing carried over but what lives outside the clone: pip's cache, torch's
compile cache, ~/.cache/sddlib). Exits non-zero when a run fails; prints one line per run and, with --json, writes
every measurement there.
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTEST_SUMMARY = re.compile(r"^=* ?\d+ (?:passed|failed|errors?)\b.* in ([\d.]+)s\b")   # -q: no ==== around


def time_ci(source: str, branch: str) -> dict:
    """One fresh clone of `branch` and its `bash .ci/run`: wall times, pytest's summary line, load averages."""
    with tempfile.TemporaryDirectory(prefix="sdd-ci-") as folder:
        clone = Path(folder) / "repo"
        subprocess.run(["git", "clone", "--quiet", "--branch", branch, "--single-branch", source, str(clone)],
                       check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                                text=True, check=True).stdout.strip()
        load_before = os.getloadavg()
        start = time.perf_counter()
        done = subprocess.run(["bash", ".ci/run"], cwd=clone, capture_output=True, text=True)
        total = time.perf_counter() - start
        load_after = os.getloadavg()
    summary = [line for line in done.stdout.splitlines() if PYTEST_SUMMARY.search(line)]
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "branch": branch, "commit": commit, "cores": os.cpu_count(), "returncode": done.returncode,
            "total_s": round(total, 1),
            "pytest_s": float(PYTEST_SUMMARY.search(summary[-1]).group(1)) if summary else None,
            "pytest_summary": summary[-1].strip("= ") if summary else None,
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
            "output_tail": (done.stdout + done.stderr)[-3000:] if done.returncode else ""}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--branch", default="main", help="the branch to clone (default main)")
    parser.add_argument("--source", default=str(REPO), help="the repository to clone from (default this one)")
    parser.add_argument("--repeat", type=int, default=2, help="fresh clones timed one after the other (default 2)")
    parser.add_argument("--json", help="write every measurement to this file")
    args = parser.parse_args(argv)
    runs = []
    for i in range(args.repeat):
        run = time_ci(args.source, args.branch)
        runs.append(run)
        pytest_s = f"{run['pytest_s']:.1f} s" if run["pytest_s"] is not None else "no summary"
        print(f"run {i + 1}: {run['date']} {run['branch']}@{run['commit']} on {run['cores']} cores: "
              f"bash .ci/run {run['total_s']:.0f} s in all (rc {run['returncode']}), pytest {pytest_s} "
              f"[{run['pytest_summary']}]; load average before {run['load_before']}, after {run['load_after']}",
              flush=True)
        if run["returncode"]:
            print(run["output_tail"], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2) + "\n")
    return max(r["returncode"] for r in runs)


if __name__ == "__main__":
    sys.exit(main())
