"""Run a plan (`sddlib.plan`): many params files through their dataset's notebook with papermill.

    python -m sddlib.sweep params/cifar100/*.yaml --seeds 0 1 2 --dry-run   # the whole table: list it, then the counts
    python -m sddlib.sweep params/cifar100/*.yaml --seeds 0 1 2 --jobs 2    # ... and run it
    python -m sddlib.sweep params/cifar100/*.yaml --jobs 2                  # the files' runs only (no baselines)
    python -m sddlib.sweep params/cifar100/*.yaml -p seed 1 -p subset 200 -p epochs 2 --dry-run
    python -m sddlib.sweep params/cifar100/*.yaml --executor slurm --partition gpu --gpus-per-job 1  # a cluster

The plan is made first, printed one line per run (state, kind, run name, teacher source) with the counts, and
written with `--plan-file`; with `--seeds` it is the whole table (each file's run at each seed, its plain baseline,
its student trained alone), each run once. Every teacher is settled before anything runs: published ones are
downloaded where they can be, and a teacher that has to be trained here is trained first, once, before its students
(on CIFAR-100 and CUB-200 only with `allow_teacher_training`; without it the sweep stops in one sentence).
`--estimate` prints what the plan costs on this device (`sddlib.run_cost`) and runs nothing.

Each distillation run executes `notebooks/<dataset>.ipynb` (or `--notebook`) with the file's parameters plus the
`-p` overrides (values parsed as YAML; text parameters such as M stay text), writing the executed notebook to
`run_dir(params)/notebook.ipynb`; a model alone or a teacher trains in the job's process. A key that the notebook's
parameters cell does not set is refused before any run (`check_notebook_takes`; papermill would only warn and the
notebook would run without it).
A run's `imports` modules are found from the folder the sweep starts in (every
job's notebook kernel has it on its path) and PYTHONPATH. Runs whose metrics.json is complete are skipped unless
`--force` (which moves the old metrics.json aside to metrics.previous.json); an interrupted run resumes from its last
completed epoch. A failed run (an error, or a notebook that ends without a complete metrics.json) does not
stop the others; all failures are listed at the end (and kept in the run folder's failure.txt, which the next
plan shows) and the exit status is 1. Each finished run says
"as published" or how it departs from its published experiment (`sddlib.departures`), and the summary
counts the runs as published. Jobs never share a run
folder: a run two files need is planned once, two that would train one folder differently are refused, and a run
folder is locked while it trains.

`--jobs N` runs N experiments at once on the same device (small CIFAR models leave most of a large GPU
idle). Before any starts, each distinct configuration's memory is measured (`sddlib.run_memory`: two real
steps in a fresh process) and a job count whose runs would not fit the device's free memory is refused in
one sentence; the summary gives the aggregate training images/s of the sweep.

`--executor slurm` submits every run as a job of one Slurm job array through submitit (`--jobs`: how many
run at once, `--timeout-min` per attempt); a job that is preempted or reaches its time limit is requeued
and its run resumes from its last completed epoch. `--gpus-per-job N` > 1 gives each job N GPUs and runs
its notebook with `nproc=N` (torchrun on that node). `--executor local` takes the same path with local
processes (`--jobs` at a time). Failed jobs are listed with their log files (`--log-dir`).

`--per-gpu K` keeps every GPU busy: without an executor, runs start on the visible GPUs (`--devices` to name
them), each on one, the least loaded first, at most K at once on each (`sddlib.placement`); K runs of the largest
configuration that would not fit a GPU's free memory are refused in one sentence before any starts. Each run is
given its device as its `device` parameter (metrics.json records it). On a machine without a GPU it is `--jobs K`.
With an executor, each job holds K runs on its GPU (a job array of ceil(N / K) jobs, `per_job_groups`).

`--detach` (with an executor) submits the plan and returns: the plan and its job ids go to
`<output_dir>/sweeps/<UTC time>/` (`sddlib.sweep_status`), and `--status OUTPUT_DIR` says, run by run, what is
complete, running, failed and waiting. The same command again submits only what is neither complete nor running
(nor queued). A student whose teacher is trained here waits for it in its own job (on Slurm its job also starts only
after the teachers' jobs have ended, `afterany`), and is not run when the teacher failed.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import os
import socket
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import submitit
import yaml

from .locks import holder
from .placement import run_placed, visible_devices
from .plan import FAILURE_FILE, ROOT, PlannedRun, build_plan, read_params, run_state  # ROOT: notebooks run there
from .shipped import shipped_folder
from .startup import freeze_imports
from .sweep_status import job_alive, record_sweep, recorded_runs, status_lines
from .validators import ConfigError

NOTEBOOK_DIR = shipped_folder("notebooks")


def parse_overrides(pairs) -> dict:
    """`[("seed", "1"), ("M", "[1]")]` -> `{"seed": 1, "M": "[1]"}`: YAML values, text where the default is text."""
    from .config import DEFAULTS
    out = {}
    for key, text in pairs or ():
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text  # not YAML: the parameter's own check says what it accepts (`config.parse_list`)
        out[key] = text if isinstance(DEFAULTS.get(key), str) and not isinstance(value, str) else value
    return out


def plan(path, overrides: dict, notebook=None) -> dict:
    """What one params file would run: parameters, notebook, output notebook, and whether it is complete."""
    from .config import RunConfig
    params = read_params(path, overrides)
    cfg = RunConfig.from_params(params)
    state, reason, resumes = run_state(cfg.directory)
    kind = "sd" if cfg.decoupled else "baseline"
    return job_of(PlannedRun(cfg.name, kind, str(cfg.directory), str(path), params, "", state, reason, resumes),
                  notebook)


def job_of(run: PlannedRun, notebook=None) -> dict:
    """A planned run as a job of this sweep: a distillation run executes its dataset's notebook (or `notebook`),
    which must take every key of its parameters; a model alone or a teacher trains in the job's own process
    (`_train_alone`)."""
    job = {"file": run.file, "kind": run.kind, "run": run.run, "params": run.params, "folder": run.folder,
           "complete": run.state == "complete", "resumes": run.resumes, "after": list(run.after),
           "import_path": str(Path.cwd())}
    if run.kind in ("sd", "baseline"):
        dataset = run.params.get("dataset", "cifar100")
        nb = Path(notebook) if notebook else _notebook(dataset)
        if not nb.is_file():
            raise FileNotFoundError(f"notebook {nb} does not exist; pass --notebook to choose one.")
        check_notebook_takes(list(run.params), nb, dataset)
        job.update(notebook=str(nb), out=str(Path(run.folder) / "notebook.ipynb"))
    return job


def notebook_parameters(notebook: Path) -> frozenset | None:
    """The names `notebook`'s cell tagged `parameters` assigns (None: it has no such cell), read with `ast`, nothing
    run (papermill's `inspect_notebook` drops a line whose comment holds a quote, e.g. cifar100's `pipeline`)."""
    import nbformat
    cells = [c for c in nbformat.read(str(notebook), as_version=4).cells if "parameters" in c.metadata.get("tags", ())]
    if not cells:
        return None
    targets = [t for node in ast.parse(cells[0].source).body if isinstance(node, (ast.Assign, ast.AnnAssign))
               for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
    return frozenset(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))


def check_notebook_takes(keys, notebook: Path, dataset: str) -> None:
    """Refuse, before any run, a key that `notebook`'s parameters cell does not set: papermill would pass it with a
    warning only and the notebook would run something else (a folder params file's `seed` once ran seed 0).
    `dataset` chose the notebook, so the dataset's own notebook need not take it."""
    from .data.spec import dataset_spec
    notebook, own = Path(notebook).resolve(), dataset_spec(dataset).notebook
    cell = notebook_parameters(notebook)
    taken = (cell or frozenset()) | ({"dataset"} if own and (NOTEBOOK_DIR / own).resolve() == notebook else set())
    untaken = [key for key in keys if key not in taken]
    if not untaken:
        return
    it, what = ("it", f"parameter {untaken[0]!r} is") if len(untaken) == 1 else \
        ("them", f"parameters {', '.join(map(repr, untaken))} are")
    why = f"its parameters cell does not set {it}" if cell is not None else "it has no cell tagged 'parameters'"
    raise ConfigError(f"{what} not taken by notebook {notebook} ({why}; papermill would only warn and the run would "
                      f"ignore {it}): remove {it} from the params file and -p, or give a notebook that takes "
                      f"{it} with --notebook.")


@contextlib.contextmanager
def _importable_from(folder):
    """The notebook kernel, which starts in the repository root, finds a run's `imports` modules in `folder` (where the
    sweep started, as `python -m sddlib` finds them where it starts) before PYTHONPATH."""
    before = os.environ.get("PYTHONPATH")
    if folder:
        os.environ["PYTHONPATH"] = os.pathsep.join([folder, before] if before else [folder])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def _notebook(dataset: str) -> Path:
    """The notebook a sweep runs for `dataset` (`DatasetSpec.notebook`: a file in notebooks/, or a path)."""
    from .data.spec import dataset_spec
    spec = dataset_spec(dataset)
    if spec.notebook is None:
        raise FileNotFoundError(f"dataset {dataset!r} has no notebook of its own; pass --notebook to choose one.")
    return NOTEBOOK_DIR / spec.notebook


def execute(job: dict, kernel=None) -> str | None:
    """Run one planned job (its notebook, or a model trained alone): None when it ran through, else why, one line."""
    if "notebook" not in job:
        return _train_alone(job)
    import papermill
    out = Path(job["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if job["complete"]:  # --force: let the notebook's run() start afresh, keep the old result beside it
        (out.parent / "metrics.json").replace(out.parent / "metrics.previous.json")
    processes = {"nproc": job["nproc"]} if job.get("nproc", 1) > 1 else {}  # the notebook launches torchrun
    try:
        with _importable_from(job.get("import_path") if job["params"].get("imports") else None):
            papermill.execute_notebook(job["notebook"], str(out), parameters={**job["params"], **processes},
                                       cwd=str(ROOT), kernel_name=kernel, progress_bar=False)
    except Exception as err:  # noqa: BLE001 - any failure is reported, the sweep goes on
        text = f"{err.ename}: {err.evalue}" if hasattr(err, "ename") else f"{type(err).__name__}: {err}"
        return f"{(text.strip().splitlines() or [''])[0][:300]} (see {out})"
    return None  # `_report` checks the metrics.json, so a job process never imports the training code


def _train_alone(job: dict) -> str | None:
    """A teacher (its dataset's teacher protocol, cached for its students) or a student alone (the row's solver),
    trained in this process; None, or a one-line reason."""
    from . import experiment, teacher_source
    try:
        if job["kind"] == "teacher":
            teacher_source.train_teacher(job["params"])
        else:
            experiment.run_vanilla(job["params"], force=job["complete"])
    except Exception as err:  # noqa: BLE001 - any failure is reported, the sweep goes on
        return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sddlib.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="params/<dataset>/*.yaml files")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), default=[],
                    help="override a parameter in every file, e.g. -p M \"[1]\" -p seed 1")
    ap.add_argument("--jobs", type=int, help="runs at once (default: 1; with --executor slurm: no limit)")
    ap.add_argument("--notebook", help="run this notebook instead of notebooks/<dataset>.ipynb")
    ap.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's)")
    ap.add_argument("--force", action="store_true", help="re-run runs whose metrics.json is complete")
    ap.add_argument("--dry-run", action="store_true", help="list the plan, one line per run, then the counts, and exit")
    ap.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                    help="the whole table at these seeds: each file's run, its plain baseline and its student alone")
    ap.add_argument("--plan-file", metavar="PATH", help="write the plan as JSON to PATH before anything runs")
    ap.add_argument("--estimate", action="store_true", help="time a few steps of each distinct configuration on "
                    "this device and print each run's cost, the device-hours and the wall time at --jobs; runs nothing")
    ap.add_argument("--per-gpu", type=int, metavar="K", help="up to K runs at once on each GPU, every GPU used "
                    "(with --executor: K runs per job, on its GPU)")
    ap.add_argument("--devices", nargs="+", metavar="DEVICE", help="the devices --per-gpu places runs on "
                    "(default: every visible GPU, or cpu)")
    ap.add_argument("--status", metavar="OUTPUT_DIR", help="list every run the detached sweeps of OUTPUT_DIR "
                    "planned: complete, running (epoch, host), failed (why), waiting; then the totals")
    cluster = ap.add_argument_group("cluster (submitit)")
    cluster.add_argument("--executor", choices=("slurm", "local"),
                         help="submit each run as a job: slurm (a job array) or local processes; default: this process")
    cluster.add_argument("--partition", help="Slurm partition")
    cluster.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per run; > 1 trains it with torchrun")
    cluster.add_argument("--cpus-per-job", type=int, default=8, help="CPU cores per run (data loading workers)")
    cluster.add_argument("--timeout-min", type=int, default=24 * 60,
                         help="time limit of one attempt in minutes; a run that reaches it is requeued and resumes")
    cluster.add_argument("--log-dir", help="where the jobs' logs go (default: <output_dir>/submitit)")
    cluster.add_argument("--detach", action="store_true", help="submit and return; the plan and job ids go to "
                         "<output_dir>/sweeps/ (see --status); again: submits what is neither complete nor running")
    args = ap.parse_args(argv)
    if args.status:
        return _print_status(args.status)
    refusal = _refused(args)
    if refusal:
        ap.error(refusal)
    if str(Path.cwd()) not in sys.path:  # a run's `imports` from the folder the sweep starts in, as `python -m` does
        sys.path.insert(0, str(Path.cwd()))
    from .config import ConfigError

    overrides = parse_overrides(args.parameter)
    try:
        table = build_plan(args.files, overrides, args.seeds)
        if not (args.dry_run or args.estimate):  # about to run: every published teacher fetched first
            table = _settle_teachers(table, args, overrides)
    except ConfigError as err:  # a teacher nothing can give (CIFAR-100, CUB-200): nothing starts
        print(f"FAILED  nothing ran: {err}", file=sys.stderr)
        return 1
    if args.estimate:
        table, estimate = _estimate(table, args)
    for run in table.runs:
        print(run.line())
    print(f"plan: {table.counts()}", flush=True)
    if args.estimate:
        print(*estimate, sep="\n")
    if args.plan_file:
        print(f"plan written to {table.write(args.plan_file)}")
    if args.estimate:
        return 1 if table.problems else 0
    failures, jobs = list(table.problems), []
    skipped = sum(run.state == "complete" and not args.force for run in table.runs)
    for run in table.runs:
        if run.state == "complete" and not args.force:
            continue
        try:
            jobs.append(job_of(run, args.notebook))
        except (OSError, ValueError) as err:  # no notebook for its dataset: a failure of that run only
            failures.append((run.file, f"{type(err).__name__}: {err}"))

    start, done = time.time(), (0, 0, 0)
    if args.detach and not args.dry_run:
        return _detach(table, jobs, args, overrides, failures)
    if not args.dry_run and jobs and not args.executor and args.per_gpu:
        from .run_memory import check_per_gpu_fit  # each device holds up to --per-gpu runs
        devices = _devices(args)
        try:
            print(check_per_gpu_fit([job["params"] for job in jobs], min(args.per_gpu, -(-len(jobs) // len(devices))),
                                    devices), flush=True)
        except ValueError as err:
            print(f"FAILED  nothing ran: {err}", file=sys.stderr)
            return 1
    elif not args.dry_run and jobs and args.executor != "slurm" and (args.jobs or 1) > 1 and len(jobs) > 1:
        from .run_memory import check_jobs_fit  # the runs share this machine's device
        try:
            print(check_jobs_fit([job["params"] for job in jobs], min(args.jobs, len(jobs))), flush=True)
        except ValueError as err:
            print(f"FAILED  nothing ran: {err}", file=sys.stderr)
            return 1
    if not args.dry_run and jobs:
        teachers = [job for job in jobs if job["kind"] == "teacher"]
        done = _run_jobs(teachers, args, overrides, failures)   # teachers first: their students wait for them
        failed = {job["folder"] for job in teachers} - _complete_folders(teachers)
        students = []
        for job in jobs[len(teachers):]:
            missing = [Path(folder).name for folder in job["after"] if folder in failed]
            if missing:
                failures.append((job["file"], f"{job['run']} not run: its teacher run {missing[0]} failed"))
            else:
                students.append(job)
        done = tuple(a + b for a, b in zip(done, _run_jobs(students, args, overrides, failures)))
        seconds = time.time() - start
        print(f"{done[0]} done, {skipped} skipped, {len(failures)} failed in {seconds:.0f} s; "
              f"{done[1]} of {done[0]} done as published; {done[2] / seconds:.0f} training images/s in all "
              "(runs started afresh)")
        from .report_page import write_report
        for folder in sorted({Path(job["params"]["output_dir"]) for job in jobs}):
            print(f"results page: {write_report(folder)}")
    for path, reason in failures:
        print(f"FAILED  {path}: {reason}", file=sys.stderr)
    return 1 if failures else 0


def _refused(args) -> str | None:
    """The one sentence for options that cannot go together, or None."""
    if not args.files:
        return "give params files to sweep, or --status OUTPUT_DIR to see where a detached sweep stands."
    if args.detach and not args.executor:
        return "--detach submits jobs and returns, so it needs --executor slurm or --executor local."
    if args.per_gpu is not None and args.per_gpu < 1:
        return f"--per-gpu {args.per_gpu} would run nothing; give 1 or more runs per GPU."
    if args.per_gpu and args.gpus_per_job > 1:
        return (f"--per-gpu {args.per_gpu} shares one GPU between runs and --gpus-per-job {args.gpus_per_job} "
                "gives each run several: choose one of them.")
    return None


def _devices(args) -> list[str]:
    return args.devices or visible_devices()


def _print_status(output_dir) -> int:
    """`--status`: every recorded run's line, then the totals."""
    lines, counts = status_lines(output_dir)
    if not lines:
        print(f"no detached sweep recorded in {output_dir}/sweeps (run a sweep with --detach first)", file=sys.stderr)
        return 1
    print(*lines, sep="\n")
    print(f"status: {sum(counts.values())} runs: " + ", ".join(f"{counts[s]} {s}" for s in
                                                                 ("complete", "running", "failed", "waiting")))
    return 0


def _estimate(table, args):
    """The plan with each run still to run given its estimated seconds (`sddlib.run_cost`), and the estimate's
    totals in words."""
    from .run_cost import describe_total, device_name, estimate_plan
    runs = [run for run in table.runs if run.state != "complete" or args.force]
    if not runs:
        return table, ["estimate: nothing to run"]
    costs = estimate_plan(runs)
    lines = [describe_total(runs, costs, args.jobs or 1, device_name(runs[0].params))]
    return table.with_estimates({folder: (c.seconds, c.peak_bytes) for folder, c in costs.items()}), lines


def _settle_teachers(table, args, overrides):
    """Before anything runs: every published teacher still to be downloaded is fetched (one process downloads, the
    others wait); the plan made again knows which came and which could not (`build_plan`'s `unreachable`)."""
    from .checkpoints import CheckpointError
    from .config import RunConfig
    from .teacher_source import fetch_published_teacher
    if not table.downloads():
        return table
    unreachable = {}
    for run in table.downloads():
        cfg = RunConfig.from_params(run.params)
        if str(Path(cfg.data_dir)) not in unreachable:
            try:
                fetch_published_teacher(cfg)
            except CheckpointError as err:
                unreachable[str(Path(cfg.data_dir))] = str(err)
    return build_plan(args.files, overrides, args.seeds, unreachable)


def _run_jobs(jobs: list[dict], args, overrides: dict, failures: list) -> tuple[int, int, int]:
    """Run `jobs` (this process, `--jobs` local processes, or submitit) and report each: (done, as published,
    images)."""
    if not jobs:
        return 0, 0, 0
    if args.executor:
        return _report(submit(jobs, args, overrides), failures)
    if args.per_gpu:
        with ProcessPoolExecutor(args.per_gpu * len(_devices(args))) as pool:
            placed = run_placed(jobs, _devices(args), args.per_gpu, lambda job, device: pool.submit(
                execute, on_device(job, device), args.kernel))
            return _report(((job, _outcome(future)) for job, _, future in placed), failures)
    if (args.jobs or 1) > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(args.jobs, len(jobs))) as pool:
            futures = {pool.submit(execute, job, args.kernel): job for job in jobs}
            return _report(((futures[f], _outcome(f)) for f in as_completed(futures)), failures)
    return _report(((job, execute(job, args.kernel)) for job in jobs), failures)


def _complete_folders(jobs: list[dict]) -> set:
    from .runs import load_metrics
    return {job["folder"] for job in jobs if load_metrics(Path(job["folder"]) / "metrics.json") is not None}


def on_device(job: dict, device: str) -> dict:
    """The job given `device` as its run's `device` parameter (outside the fingerprint; metrics.json records it);
    as it is on a machine with no GPU ("cpu": what its "auto" is there)."""
    if device == "cpu":
        return job
    return {**job, "params": {**job["params"], "device": device}}


def per_job_groups(jobs: list, per_job: int) -> list[list]:
    """`jobs` in plan order, `per_job` to a group (the last may hold fewer): the runs of one job on one GPU."""
    return [jobs[first:first + per_job] for first in range(0, len(jobs), max(per_job, 1))]


class RunJob(submitit.helpers.Checkpointable):
    """One run (or a group of runs sharing the job's GPU, `--per-gpu`) as a submitit job. Preempted or out of time,
    it is requeued (submitit calls `checkpoint`) and the notebook resumes the run from its last completed epoch."""

    def __call__(self, job, kernel=None):
        if isinstance(job, list):  # --per-gpu: the group's runs at once, on the job's GPU(s)
            devices = visible_devices()
            with ProcessPoolExecutor(len(job)) as pool:
                placed = run_placed(job, devices, -(-len(job) // len(devices)), lambda one, device: pool.submit(
                    run_in_job, on_device(one, device), kernel))
                reasons = {one["folder"]: _outcome(future) for one, _, future in placed}
            return [reasons[one["folder"]] for one in job]
        return run_in_job(job, kernel)

    def checkpoint(self, job, kernel=None):
        # the first attempt already set a --force run's old metrics aside; the next one continues the run
        again = [{**one, "complete": False} for one in job] if isinstance(job, list) else {**job, "complete": False}
        return submitit.helpers.DelayedSubmission(self, again, kernel)


def run_in_job(job: dict, kernel=None, poll_s: float = 5.0) -> str | None:
    """A job's run: after its teachers trained here (it waits while one trains or its job is held), then the run;
    its failure's sentence is kept in the run folder (a detached sweep has no one else to write it)."""
    reason = _teachers_ready(job, poll_s)
    reason = reason or execute(job, kernel)
    _record_outcome(Path(job["folder"]), reason, job.get("out"))
    return reason


def _teachers_ready(job: dict, poll_s: float) -> str | None:
    """None once every teacher run the job waits for is complete; else why it is not run."""
    for folder in job.get("after", ()):
        while (state := run_state(folder)[0]) == "to run" and \
                (holder(folder) or job_alive(job.get("teacher_jobs", {}).get(folder))):
            time.sleep(poll_s)
        if state != "complete":
            why = "failed" if state == "failed before" else "ended without a result"
            return f"{job['run']} not run: its teacher run {Path(folder).name} {why}"
    return None


def _record_outcome(folder: Path, reason: str | None, out=None) -> str | None:
    """Keep a failed run's sentence in its folder's failure.txt (the plan's "failed before"); forget it once the
    run is complete. Returns the reason, or None for a complete run."""
    from .runs import load_metrics
    if not reason and load_metrics(folder / "metrics.json") is not None:
        (folder / FAILURE_FILE).unlink(missing_ok=True)
        return None
    reason = reason or f"the notebook finished without a complete metrics.json (see {out or folder})"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FAILURE_FILE).write_text(reason + "\n")
    return reason


def _log_dir(args, overrides: dict) -> Path:
    from .config import DEFAULTS
    return Path(args.log_dir or Path(overrides.get("output_dir") or ROOT / DEFAULTS["output_dir"]) / "submitit")


def _executor(args, log_dir: Path, after: list[str] = ()):
    """submitit's executor for these jobs (`after`: job ids whose end they wait for, on Slurm)."""
    executor = submitit.AutoExecutor(folder=log_dir / "%j", cluster=args.executor)
    executor.update_parameters(name="sddlib-sweep", timeout_min=args.timeout_min, gpus_per_node=args.gpus_per_job,
                               cpus_per_task=args.cpus_per_job, tasks_per_node=1, nodes=1,
                               slurm_partition=args.partition, slurm_array_parallelism=args.jobs)
    if after and args.executor == "slurm":
        executor.update_parameters(slurm_additional_parameters={
            "dependency": "afterany:" + ":".join(sorted({job_id.split("_")[0] for job_id in after}))})
    return executor


def _units(jobs: list[dict], args) -> list:
    """What each submitted job holds: one run, or `--per-gpu` runs (`per_job_groups`)."""
    for job in jobs:
        job["nproc"] = args.gpus_per_job
    return per_job_groups(jobs, args.per_gpu) if args.per_gpu else jobs


def submit(jobs: list[dict], args, overrides: dict):
    """Submit the runs through submitit (one job array on Slurm, `--jobs` local processes at a time) and yield
    (job, None or a reason naming its log) as they finish."""
    log_dir = _log_dir(args, overrides)
    executor, units = _executor(args, log_dir), _units(jobs, args)
    wave = max(args.jobs or 1, 1) if args.executor == "local" else len(units)  # Slurm limits the array itself
    for first in range(0, len(units), wave):
        batch = units[first:first + wave]
        submitted = executor.map_array(RunJob(), batch, [args.kernel] * len(batch))
        print(f"submitted {len(batch)} job(s) to {args.executor} (first: {submitted[0].job_id}); logs in {log_dir}",
              flush=True)
        for unit, handle in zip(batch, submitted):
            try:
                reasons = handle.result()
            except Exception as err:  # noqa: BLE001 - a job that died (killed, out of memory, ...): its last words
                reasons = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1][:300]}"
            group = unit if isinstance(unit, list) else [unit]
            reasons = reasons if isinstance(reasons, list) else [reasons] * len(group)
            for job, reason in zip(group, reasons):
                yield job, reason and f"{reason} (log: {handle.paths.stderr})"


def _detach(table, jobs: list[dict], args, overrides: dict, failures: list) -> int:
    """Submit what is neither complete nor running nor queued, teachers first, record the plan and the job ids in
    each output folder's sweeps/, and return without waiting."""
    last = {run.folder: job for run, job in recorded_runs(_output_dir(jobs, overrides))}
    todo = []
    for job in jobs:
        busy = holder(job["folder"]) or (job_alive(last.get(job["folder"])) and
                                         f"job {last[job['folder']]['job_id']} holds it")
        if busy:
            print(f"running  {job['run']}: {busy}; not submitted again")
        else:
            todo.append(job)
    log_dir, records = _log_dir(args, overrides), []
    teachers = [job for job in todo if job["kind"] == "teacher"]
    for wave in (teachers, todo[len(teachers):]):
        after = [r["job_id"] for r in records]
        for job in wave:
            job["teacher_jobs"] = {folder: next((dict(r, executor=args.executor, log_dir=str(log_dir),
                                                       host=socket.gethostname()) for r in records
                                                  if folder in r["runs"]), None) for folder in job["after"]}
        units = _units(wave, args)
        if not units:
            continue
        for unit, handle in zip(units, _executor(args, log_dir, after).map_array(RunJob(), units,
                                                                                  [args.kernel] * len(units))):
            records.append({"job_id": str(handle.job_id), "runs": [j["folder"] for j in
                                                                   (unit if isinstance(unit, list) else [unit])]})
    for output_dir in sorted({Path(job["params"]["output_dir"]) for job in jobs} or {_output_dir(jobs, overrides)}):
        folder = record_sweep(output_dir, table, records, args.executor, log_dir)
        print(f"detached: {len(records)} job(s) submitted to {args.executor} for {len(todo)} run(s); plan and job "
              f"ids in {folder}; see: python -m sddlib.sweep --status {output_dir}", flush=True)
    for path, reason in failures:
        print(f"FAILED  {path}: {reason}", file=sys.stderr)
    return 1 if failures else 0


def _output_dir(jobs: list[dict], overrides: dict) -> Path:
    from .config import DEFAULTS
    return Path(jobs[0]["params"]["output_dir"] if jobs else overrides.get("output_dir")
                or ROOT / DEFAULTS["output_dir"])


def _outcome(future) -> str | None:
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - e.g. a worker killed for memory
        return f"{type(err).__name__}: {err}"


def _report(results, failures) -> tuple[int, int, int]:
    """Print each finished job (a done run says "as published" or its departures); count done, as published,
    and the images trained by the runs that started afresh (resumed ones trained only part of theirs)."""
    from .departures import describe
    from .experiment import load_metrics
    from .run_memory import train_images
    done = published = images = 0
    for job, reason in results:
        folder = Path(job["folder"])
        metrics = None if reason else load_metrics(folder / "metrics.json")
        name = job["file"] if "notebook" in job else f"{job['run']} ({job['kind']})"
        if metrics is None:  # never count a run that did not say "complete"
            reason = reason or f"the notebook finished without a complete metrics.json (see {job.get('out', folder)})"
            print(f"failed  {name}: {reason}", flush=True)
            failures.append((name, _record_outcome(folder, reason)))  # the plan's "failed before", on the disk
            continue
        _record_outcome(folder, None)
        print(f"done  {name}: {describe(metrics.get('departures'))}", flush=True)
        done += 1
        published += metrics.get("departures") == {}
        if not job["resumes"]:
            images += train_images(metrics["params"]) * len(metrics["history"])
    return done, published, images


if __name__ == "__main__":
    freeze_imports()   # its modules, loaded above, out of the collector's reach (sddlib.startup)
    sys.exit(main())
