"""Where a detached sweep stands, read from its record and its run folders: complete, running, failed, waiting.

    python -m sddlib.sweep params/cifar100/*.yaml --seeds 0 1 2 --executor slurm --per-gpu 4 --detach
    python -m sddlib.sweep --status outputs

`--detach` writes `<output_dir>/sweeps/<UTC time>/plan.json` (the plan, `Plan.to_json`) and `jobs.json` (the
executor, the log folder, and each job: its id, the run folders it holds, its host for local jobs) and returns.
`--status OUTPUT_DIR` lists every run of every recorded plan (the latest record of a run folder wins) from its run
folder: complete (a complete metrics.json), running (its run lock is held: the holder, the last epoch its log.txt
shows), failed (metrics.json's or failure.txt's sentence, or a job that ended without either), waiting (its job is
queued, or nothing holds it). The scheduler is asked about a job where it can be: a local job is its controller's
process on the recorded host, a Slurm job is what `sacct` says (through submitit).
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from collections import Counter
from pathlib import Path

from .console import LOG_FILE
from .locks import holder
from .plan import Plan, run_state

__all__ = ["SWEEPS", "STATUSES", "record_sweep", "recorded_runs", "job_alive", "run_status", "status_lines"]

SWEEPS = "sweeps"
STATUSES = ("complete", "running", "failed", "waiting")
_ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
          "PREEMPTED", "FINISHED", "INTERRUPTED")
_EPOCH = re.compile(r"^epoch (\d+)/(\d+)\b.*?(?:([\d.]+) images/s)?$")


def record_sweep(output_dir, plan: Plan, jobs: list[dict], executor: str, log_dir) -> Path:
    """Write the plan and its jobs ({"job_id", "runs": [run folder, ...]}) into a new folder of
    `<output_dir>/sweeps/`; return that folder."""
    folder = Path(output_dir) / SWEEPS / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    while folder.exists():  # two sweeps in one second
        folder = folder.with_name(folder.name + "+")
    folder.mkdir(parents=True)
    plan.write(folder / "plan.json")
    record = {"executor": executor, "log_dir": str(log_dir), "host": socket.gethostname(), "jobs": jobs}
    (folder / "jobs.json").write_text(json.dumps(record, indent=1))
    return folder


def recorded_runs(output_dir) -> list[tuple]:
    """(planned run, its job's record or None) of every run the sweeps of `output_dir` planned, in plan order; a
    run folder planned by several sweeps is listed once, with its latest plan and job."""
    runs, jobs = {}, {}
    for folder in sorted((Path(output_dir) / SWEEPS).glob("*/")):
        if not (folder / "plan.json").is_file():
            continue
        for run in Plan.from_json((folder / "plan.json").read_text()).runs:
            runs.pop(run.folder, None)
            runs[run.folder] = run
        record = json.loads((folder / "jobs.json").read_text()) if (folder / "jobs.json").is_file() else {}
        for job in record.get("jobs", ()):
            for run_folder in job["runs"]:
                jobs[run_folder] = {**{k: v for k, v in record.items() if k != "jobs"}, **job}
    return [(run, jobs.get(folder)) for folder, run in runs.items()]


def job_alive(job: dict | None) -> bool | None:
    """Whether the scheduler still holds `job` (queued or running); None where it cannot be asked (a local job of
    another host, a Slurm without sacct)."""
    if not job:
        return False
    if job["executor"] == "local":
        if job.get("host") != socket.gethostname():
            return None
        try:
            os.kill(int(job["job_id"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return _local_result(job) is None
    import submitit
    state = submitit.SlurmJob(folder=Path(job["log_dir"]) / "%j", job_id=job["job_id"]).state.upper()
    return None if state == "UNKNOWN" else not state.startswith(_ENDED)


def _local_result(job: dict) -> Path | None:
    """The result submitit's local job left (it ended), or None (a zombie controller still has the pid)."""
    found = list((Path(job["log_dir"]) / str(job["job_id"])).glob("*_result.pkl"))
    return found[0] if found else None


def run_status(run, job: dict | None) -> tuple[str, str]:
    """(one of STATUSES, what it says) of a planned run and its job, read now."""
    state, reason, _ = run_state(run.folder)
    if state == "complete":
        return "complete", ""
    owner = holder(run.folder)
    if owner:
        return "running", ", ".join(filter(None, (_progress(Path(run.folder)), owner)))
    if state == "failed before":
        return "failed", reason
    alive = job_alive(job)
    if alive:
        return "waiting", f"job {job['job_id']} ({job['executor']}) holds it"
    if job and alive is False:
        return "failed", f"its job {job['job_id']} ended without a result (log: {job['log_dir']}/{job['job_id']})"
    return "waiting", "" if job is None else f"job {job['job_id']}: the scheduler cannot be asked"


def _progress(folder: Path) -> str:
    """The last epoch the run's log.txt shows ("epoch 12/240", with its images/s where the line has them)."""
    try:
        lines = (folder / LOG_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if found := _EPOCH.match(line.strip()):
            rate = f", {found[3]} images/s" if found[3] else ""
            return f"epoch {found[1]}/{found[2]}{rate}"
    return "starting"


def status_lines(output_dir) -> tuple[list[str], Counter]:
    """One line per recorded run ("running   <run>: epoch 3/240, process 12 on node7"), and the counts."""
    lines, counts = [], Counter()
    for run, job in recorded_runs(output_dir):
        status, said = run_status(run, job)
        counts[status] += 1
        lines.append(f"{status:<9} {run.kind:<8} {run.run}" + (f": {said}" if said else ""))
    return lines, counts
