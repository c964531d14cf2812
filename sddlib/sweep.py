"""Run many params files through their dataset's notebook with papermill.

    python -m sddlib.sweep params/cifar100/*.yaml --jobs 2              # the SD runs
    python -m sddlib.sweep params/cifar100/*.yaml --jobs 2 -p M "[1]"   # their plain baselines (CIFAR-100, CUB-200;
                                                                       # ImageNet baselines are their own files)
    python -m sddlib.sweep params/cifar100/*.yaml -p seed 1 -p subset 200 -p epochs 2 --dry-run
    python -m sddlib.sweep params/cifar100/*.yaml --executor slurm --partition gpu --gpus-per-job 1  # a cluster

Each file runs `notebooks/<dataset>.ipynb` (or `--notebook`) with the file's parameters plus the `-p`
overrides (values parsed as YAML; text parameters such as M stay text), writing the executed notebook to
`run_dir(params)/notebook.ipynb`. A key that the notebook's parameters cell does not set is refused before any run
(`check_notebook_takes`; papermill would only warn and the notebook would run without it). A run's `imports`
modules are found from the folder the sweep starts in (every job's notebook kernel has it on its path) and
PYTHONPATH. Runs whose metrics.json is complete are skipped unless
`--force` (which moves the old metrics.json aside to metrics.previous.json); an interrupted run resumes from its last
completed epoch. A failed run (an error, or a notebook that ends without a complete metrics.json) does not
stop the others; all failures are listed at the end and the exit status is 1. Each finished run says
"as published" or how it departs from its published experiment (`sddlib.departures`), and the summary
counts the runs as published. Jobs never share a run
folder: two files that name the same one are refused, and a run folder is locked while it trains.

`--jobs N` runs N experiments at once on the same device (small CIFAR models leave most of a large GPU
idle). Before any starts, each distinct configuration's memory is measured (`sddlib.run_memory`: two real
steps in a fresh process) and a job count whose runs would not fit the device's free memory is refused in
one sentence; the summary gives the aggregate training images/s of the sweep.

`--executor slurm` submits every run as a job of one Slurm job array through submitit (`--jobs`: how many
run at once, `--timeout-min` per attempt); a job that is preempted or reaches its time limit is requeued
and its run resumes from its last completed epoch. `--gpus-per-job N` > 1 gives each job N GPUs and runs
its notebook with `nproc=N` (torchrun on that node). `--executor local` takes the same path with local
processes (`--jobs` at a time). Failed jobs are listed with their log files (`--log-dir`).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import submitit
import yaml

from .shipped import checkout, shipped_folder
from .validators import ConfigError

# Notebooks run in the repository root (relative defaults such as outputs/ and data/ are there); sddlib installed from
# a wheel has no repository: they run in the folder the sweep starts in.
ROOT = checkout() or Path.cwd()
NOTEBOOK_DIR = shipped_folder("notebooks")
PATH_KEYS = ("output_dir", "data_dir", "teacher_ckpt", "teachers_dir", "teacher_weights_file", "student_weights_file")


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
    from .config import DEFAULTS
    from .experiment import RESUME_FILE, load_metrics, run_dir
    params = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path} is not a flat YAML mapping of parameters.")
    params.update(overrides)
    given = list(params)
    params.setdefault("output_dir", str(ROOT / DEFAULTS["output_dir"]))  # what the notebook would use
    for key in PATH_KEYS:  # relative paths mean "from where the sweep was started"
        if params.get(key):
            params[key] = str(Path(params[key]).expanduser().absolute())
    dataset = params.get("dataset", DEFAULTS["dataset"])
    nb = Path(notebook) if notebook else _notebook(dataset)
    if not nb.is_file():
        raise FileNotFoundError(f"notebook {nb} does not exist; pass --notebook to choose one.")
    out = run_dir(params)
    check_notebook_takes(given, nb, dataset)
    return {"file": str(path), "params": params, "notebook": str(nb), "out": str(out / "notebook.ipynb"),
            "complete": load_metrics(out / "metrics.json") is not None,
            "resumes": (out / RESUME_FILE).is_file(), "import_path": str(Path.cwd())}


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
    why = "its parameters cell does not set it" if cell is not None else "it has no cell tagged 'parameters'"
    raise ConfigError(f"parameter {', '.join(map(repr, untaken))} is not taken by notebook {notebook} ({why}; "
                      "papermill would only warn and the run would ignore it): remove it from the params file and "
                      "-p, or give a notebook that takes it with --notebook.")


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
    """Run one planned job's notebook; return None when it ran through, or a one-line reason."""
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sddlib.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="params/<dataset>/*.yaml files")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), default=[],
                    help="override a parameter in every file, e.g. -p M \"[1]\" -p seed 1")
    ap.add_argument("--jobs", type=int, help="runs at once (default: 1; with --executor slurm: no limit)")
    ap.add_argument("--notebook", help="run this notebook instead of notebooks/<dataset>.ipynb")
    ap.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's)")
    ap.add_argument("--force", action="store_true", help="re-run runs whose metrics.json is complete")
    ap.add_argument("--dry-run", action="store_true", help="list what would run and exit")
    cluster = ap.add_argument_group("cluster (submitit)")
    cluster.add_argument("--executor", choices=("slurm", "local"),
                         help="submit each run as a job: slurm (a job array) or local processes; default: this process")
    cluster.add_argument("--partition", help="Slurm partition")
    cluster.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per run; > 1 trains it with torchrun")
    cluster.add_argument("--cpus-per-job", type=int, default=8, help="CPU cores per run (data loading workers)")
    cluster.add_argument("--timeout-min", type=int, default=24 * 60,
                         help="time limit of one attempt in minutes; a run that reaches it is requeued and resumes")
    cluster.add_argument("--log-dir", help="where the jobs' logs go (default: <output_dir>/submitit)")
    args = ap.parse_args(argv)
    if str(Path.cwd()) not in sys.path:  # a run's `imports` from the folder the sweep starts in, as `python -m` does
        sys.path.insert(0, str(Path.cwd()))

    failures, jobs, seen, skipped = [], [], {}, 0
    overrides = parse_overrides(args.parameter)
    for path in args.files:
        try:
            job = plan(path, overrides, args.notebook)
        except Exception as err:  # noqa: BLE001 - a bad file is a failure of that file only
            failures.append((path, f"{type(err).__name__}: {err}"))
            continue
        if job["out"] in seen:
            failures.append((path, f"same run directory as {seen[job['out']]}; change its seed or run_name"))
            continue
        seen[job["out"]] = path
        if job["complete"] and not args.force:
            skipped += 1
            print(f"skip (complete)  {path} -> {Path(job['out']).parent}")
        else:
            verb = ("would " if args.dry_run else "") + ("resume" if job["resumes"] and not args.force else "run")
            print(f"{verb}  {path} -> {job['out']}  [{job['notebook']}]")
            jobs.append(job)

    start, done = time.time(), (0, 0, 0)
    if not args.dry_run and jobs and args.executor != "slurm" and (args.jobs or 1) > 1 and len(jobs) > 1:
        from .run_memory import check_jobs_fit  # the runs share this machine's device
        try:
            print(check_jobs_fit([job["params"] for job in jobs], min(args.jobs, len(jobs))), flush=True)
        except ValueError as err:
            print(f"FAILED  nothing ran: {err}", file=sys.stderr)
            return 1
    if not args.dry_run and jobs:
        if args.executor:
            done = _report(submit(jobs, args, overrides), failures)
        elif (args.jobs or 1) > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(min(args.jobs, len(jobs))) as pool:
                futures = {pool.submit(execute, job, args.kernel): job for job in jobs}
                results = ((futures[f], _outcome(f)) for f in as_completed(futures))
                done = _report(results, failures)
        else:
            done = _report(((job, execute(job, args.kernel)) for job in jobs), failures)
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


class RunJob(submitit.helpers.Checkpointable):
    """One params file's run as a submitit job. Preempted or out of time, it is requeued (submitit calls
    `checkpoint`) and the notebook resumes the run from its last completed epoch."""

    def __call__(self, job: dict, kernel=None) -> str | None:
        return execute(job, kernel)

    def checkpoint(self, job: dict, kernel=None):
        # the first attempt already set a --force run's old metrics aside; the next one continues the run
        return submitit.helpers.DelayedSubmission(self, {**job, "complete": False}, kernel)


def submit(jobs: list[dict], args, overrides: dict):
    """Submit the runs through submitit (one job array on Slurm, `--jobs` local processes at a time) and yield
    (job, None or a reason naming its log) as they finish."""
    from .config import DEFAULTS
    log_dir = Path(args.log_dir or Path(overrides.get("output_dir") or ROOT / DEFAULTS["output_dir"]) / "submitit")
    executor = submitit.AutoExecutor(folder=log_dir / "%j", cluster=args.executor)
    executor.update_parameters(name="sddlib-sweep", timeout_min=args.timeout_min, gpus_per_node=args.gpus_per_job,
                               cpus_per_task=args.cpus_per_job, tasks_per_node=1, nodes=1,
                               slurm_partition=args.partition, slurm_array_parallelism=args.jobs)
    for job in jobs:
        job["nproc"] = args.gpus_per_job
    wave = max(args.jobs or 1, 1) if args.executor == "local" else len(jobs)  # Slurm limits the array itself
    for first in range(0, len(jobs), wave):
        batch = jobs[first:first + wave]
        submitted = executor.map_array(RunJob(), batch, [args.kernel] * len(batch))
        print(f"submitted {len(batch)} job(s) to {args.executor} (first: {submitted[0].job_id}); logs in {log_dir}",
              flush=True)
        for job, handle in zip(batch, submitted):
            try:
                reason = handle.result()
            except Exception as err:  # noqa: BLE001 - a job that died (killed, out of memory, ...): its last words
                reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1][:300]}"
            yield job, reason and f"{reason} (log: {handle.paths.stderr})"


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
        metrics = None if reason else load_metrics(Path(job["out"]).parent / "metrics.json")
        if metrics is None:  # never count a run that did not say "complete"
            reason = reason or f"the notebook finished without a complete metrics.json (see {job['out']})"
            print(f"failed  {job['file']}: {reason}", flush=True)
            failures.append((job["file"], reason))
            continue
        print(f"done  {job['file']}: {describe(metrics.get('departures'))}", flush=True)
        done += 1
        published += metrics.get("departures") == {}
        if not job["resumes"]:
            images += train_images(metrics["params"]) * len(metrics["history"])
    return done, published, images


if __name__ == "__main__":
    sys.exit(main())
