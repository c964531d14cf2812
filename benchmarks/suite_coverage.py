"""Branch coverage of sddlib/ and the number of checks, for several commits of the suite (issue 30: coverage after
the suite's reorganisation at least what it was before, and no check lost).

    .venv/bin/python benchmarks/suite_coverage.py REF [REF ...] [--json out.json]

Each REF (a commit or branch of this repository) is cloned fresh into a temporary folder and run as its own
`make test` runs it (the Makefile's pytest command line: one process before issue 30, two xdist workers after),
with pytest-cov added through PYTEST_ADDOPTS and one coverage configuration for every REF: branch coverage of
sddlib, counting the processes the tests start (notebook kernels, torchrun workers, `python -m sddlib`, forked
children) -- coverage's `patch = subprocess, fork, _exit`. Prints, per REF: the tests that passed/failed, the
statements/branches covered, and the checks `benchmarks/count_checks.py` counts in that REF's tests/.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from count_checks import count  # noqa: E402

COVERAGE_RC = """[run]
branch = true
source = sddlib
parallel = true
patch = subprocess, fork, _exit
"""
SUMMARY = re.compile(r"^=* ?(\d+ (?:passed|failed).*) in ([\d.]+)s\b")


def measure(ref: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="sdd-cov-") as folder:
        clone = Path(folder) / "repo"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "checkout", "--quiet", ref], cwd=clone, check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True,
                                check=True).stdout.strip()
        subprocess.run(["make", ".venv/.installed-stamp"], cwd=clone, check=True, capture_output=True)
        subprocess.run([".venv/bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "pytest-cov>=6.0", "pytest-xdist>=3.5"], cwd=clone, check=True)
        rc, report = Path(folder) / "coveragerc", Path(folder) / "coverage.json"
        rc.write_text(COVERAGE_RC)
        env = {**os.environ, "PYTEST_ADDOPTS": f"-p no:cacheprovider --cov=sddlib --cov-config={rc} "
                                               f"--cov-report=json:{report} --cov-report=term"}
        start = time.perf_counter()
        done = subprocess.run(["make", "test"], cwd=clone, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        totals = json.loads(report.read_text())["totals"] if report.is_file() else {}
        summary = [m for m in map(SUMMARY.search, done.stdout.splitlines()) if m]
        return {"ref": ref, "commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"), "returncode": done.returncode, "make_test_s": round(wall, 1),
                "tests": summary[-1].group(1) if summary else None, "load_after": os.getloadavg(),
                "statements": (totals.get("covered_lines"), totals.get("num_statements")),
                "branches": (totals.get("covered_branches"), totals.get("num_branches")),
                "percent": totals.get("percent_covered"), "checks": count(clone / "tests"),
                "output_tail": (done.stdout + done.stderr)[-3000:] if done.returncode else ""}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("refs", nargs="+", help="commits or branches to measure, e.g. bd6f08c issue-30")
    parser.add_argument("--json", help="write every measurement to this file")
    args = parser.parse_args(argv)
    results = []
    for ref in args.refs:
        r = measure(ref)
        results.append(r)
        (ls, ns), (lb, nb) = r["statements"], r["branches"]
        print(f"{r['ref']}@{r['commit']} {r['date']}: make test {r['make_test_s']:.0f} s (rc {r['returncode']}), "
              f"{r['tests']}; sddlib statements {ls}/{ns}, branches {lb}/{nb}, {r['percent'] or 0:.2f} % "
              f"(coverage's branch-coverage total); checks {r['checks']}", flush=True)
        if r["returncode"]:
            print(r["output_tail"], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return max(r["returncode"] for r in results)


if __name__ == "__main__":
    sys.exit(main())
