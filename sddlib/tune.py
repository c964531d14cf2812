"""Which settings for my data: an Optuna study over run parameters, scored on training images only.

    python -m sddlib.tune -f params/your_data.yaml -p data_dir ~/my_images --trials 40
    python -m sddlib.tune -f my.yaml --trials 40 --workers 4                       # 4 processes on this machine
    python -m sddlib.tune -f my.yaml --trials 200 --workers 16 --executor slurm --partition gpu \\
        --storage journal:/shared/tune/study.log                                   # jobs on a cluster
    python -m sddlib -f outputs/<data>/tune/best.yaml                                # the winner, full protocol

Every trial is a run (`experiment.run`) of the `-f`/`-p` parameters with the trial's values of the search space
(`sddlib.tune_space`), trained on the training images minus a split held out of them (`tune_fraction` of each
class, stratified and seeded: `sddlib.data.build.hold_out`) and scored by its best top-1 on that split; the test
split is not read. A pruner (median or Hyperband) stops a poor trial after any epoch (`PruneTrial`), and the
stopped run says so ("stopped", never "complete"). The teacher comes from the run's teacher source, or is trained
once for the study (on the same training images) and cached for every trial.

The study is data in a storage: by default a SQLite file in the output folder; `--storage` takes any Optuna RDB URL
(PostgreSQL, MySQL) or `journal:PATH`, a journal file that works on a shared filesystem. The same command again
continues the study (`--trials` is the study's total), several processes or jobs (`--workers`, `--executor`)
share it, and a trial whose tuner was killed is marked failed when a tuner starts on the same machine.

After the trials: `best.yaml` (the parameters, ready for `python -m sddlib -f`), `trials.csv`, the figures
(`figures/*.png`, each with its CSV) and the confirmation: the best settings and the method's default recipe
trained over `--confirm-seeds` seeds on the full training images and scored on the test split, paired by seed
(`sddlib.tune_outputs`).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import optuna
import yaml
from fastai.callback.core import Callback, CancelFitException

from . import experiment
from .__main__ import add_run_parameters, load_params
from .checkpoints import CheckpointError
from .locks import RunLockedError, process_alive, run_lock
from .config import ConfigError, RunConfig
from .data import DatasetNotFoundError
from .startup import freeze_imports
from .training import RunFailedError, RunStopped
from .tune_outputs import confirm, write_outputs
from .tune_space import check_space, default_space, load_space, recipe_trial, suggest

__all__ = ["PruneTrial", "plan_study", "open_study", "run_study", "work", "main", "DEFAULT_TUNE_FRACTION"]

DEFAULT_TUNE_FRACTION = 0.2  # of each class of the training images, when the run gives no tune_fraction
_PRUNERS = ("median", "hyperband", "none")
_HOST = socket.gethostname()


class PruneTrial(Callback):
    """After every epoch: the epoch's top-1 on the held-out split goes to the Optuna trial, and the fit is cancelled
    when the study's pruner says so (the run is then recorded as "stopped", `training.fit_resumable`)."""
    order = 97  # after RunRecorder has kept the epoch

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def after_epoch(self):
        values = dict(zip(self.recorder.metric_names[1:-1], self.recorder.values[-1]))
        self.trial.report(100 * float(values["accuracy"]), self.epoch + 1)
        if self.trial.should_prune():
            raise CancelFitException


# --- the study ------------------------------------------------------------------------------------------------
def _storage(url: str):
    """An Optuna storage from `url`: an RDB URL (SQLite waits for its lock instead of failing), or journal:PATH."""
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
            path = str(Path(url[len("journal:"):]).expanduser())
            return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
        engine = {"connect_args": {"timeout": 300}} if url.startswith("sqlite") else None
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as err:  # noqa: BLE001 - a driver, a path, a server: said in one sentence
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(f"storage {url!r} cannot be opened ({reason}); give sqlite:///PATH, postgresql://..., "
                          "mysql://... or journal:PATH (a file on a shared filesystem).") from None


def open_study(job: dict, seed_offset: int = 0) -> optuna.Study:
    """The study of `job` (created, or loaded to continue it), with a seeded TPE sampler and the job's pruner."""
    pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
              "hyperband": optuna.pruners.HyperbandPruner(min_resource=1, max_resource=job["epochs"]),
              "none": optuna.pruners.NopPruner()}[job["pruner"]]
    return optuna.create_study(storage=_storage(job["storage"]), study_name=job["study"], direction="maximize",
                               sampler=optuna.samplers.TPESampler(seed=job["seed"] + seed_offset), pruner=pruner,
                               load_if_exists=True)


def fail_abandoned(study: optuna.Study) -> list[int]:
    """Mark failed the running trials of a tuner on this machine that is no longer alive (killed mid-trial)."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if host == _HOST and pid.isdigit() and not process_alive(int(pid)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
    return failed


def work(job: dict, seed_offset: int = 0) -> int:
    """One tuner process (or job): trials until the study holds `job["trials"]` (or `job["timeout"]` seconds have
    passed); returns how many it ran."""
    study = open_study(job, seed_offset)
    base = RunConfig.from_params(job["base"])
    deadline = time.time() + job["timeout"] if job.get("timeout") else None
    ran = 0
    while deadline is None or time.time() < deadline:
        trials = study.get_trials(deepcopy=False)
        if sum(t.state.is_finished() or t.state == optuna.trial.TrialState.RUNNING for t in trials) >= job["trials"]:
            break
        trial = study.ask()
        trial.set_user_attr("worker", f"{_HOST}:{os.getpid()}")
        try:
            value, state = _run_trial(trial, job, suggest(trial, job["space"], base))
        except BaseException:  # an error of sddlib's, Ctrl-C: the trial is failed, not left running
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        study.tell(trial, value, state=state)
        ran += 1
    return ran


def _run_trial(trial: optuna.Trial, job: dict, values: dict):
    """(value, state) of one trial: its run's best top-1 on the held-out split, pruned, or failed (and why)."""
    params = {**job["base"], **values, "run_name": f"trial-{trial.number:04d}", "output_dir": job["trials_dir"],
              "figures": False, "feature_figures": False}
    print(f"trial {trial.number}: {values}", flush=True)
    try:
        metrics = experiment.run(params, callbacks=[PruneTrial(trial)])
    except RunStopped as err:
        print(f"trial {trial.number} pruned: {err}", flush=True)
        return None, optuna.trial.TrialState.PRUNED
    except (RunFailedError, ConfigError, CheckpointError, ValueError) as err:
        trial.set_user_attr("reason", str(err))
        print(f"trial {trial.number} failed: {err}", flush=True)
        return None, optuna.trial.TrialState.FAIL
    trial.set_user_attr("tune_split", metrics.get("tune_split"))
    return metrics["best_top1"], optuna.trial.TrialState.COMPLETE


def plan_study(base_params: dict, args) -> dict:
    """Everything a tuner process needs (`args`: `parse`'s options), checked before any training: the run's
    parameters, the search space, the bounds of the study (one sentence per problem). The storage is opened by
    `open_study`."""
    params = dict(base_params)
    if not params.get("tune_fraction"):
        params["tune_fraction"] = DEFAULT_TUNE_FRACTION
    base = RunConfig.from_params(params)
    space = check_space(load_space(args.space) if args.space else default_space(base), base)
    out = Path(args.out or Path(base.output_dir) / base.data_name / args.study).expanduser().absolute()
    if args.trials < 1:
        raise ConfigError(f"--trials {args.trials} is not a positive number of trials; give e.g. --trials 20.")
    if args.pruner not in _PRUNERS:
        raise ConfigError(f"--pruner {args.pruner!r} is unknown; give one of {', '.join(_PRUNERS)}.")
    return {"base": params, "space": space, "out": str(out), "trials_dir": str(out / "trials"),
            "storage": args.storage or f"sqlite:///{out / 'study.db'}", "study": args.study, "trials": args.trials,
            "timeout": args.timeout, "seed": args.seed, "pruner": args.pruner, "epochs": base.epochs}


def run_study(base_params: dict, args) -> dict:
    """The whole tuning: study (continued if it exists), trials in this process or as `args.workers` jobs, outputs,
    confirmation. Returns {out, best, confirmation}."""
    job = plan_study(base_params, args)
    Path(job["out"]).mkdir(parents=True, exist_ok=True)
    study = open_study(job)
    _check_same_study(study, job)
    for number in fail_abandoned(study):
        print(f"trial {number} marked failed: its tuner ended during it", flush=True)
    if not study.trials:
        base = RunConfig.from_params(job["base"])
        study.enqueue_trial(recipe_trial(base, job["space"]), user_attrs={"recipe": base.method})
    if args.workers > 1 or args.executor:
        _submit(job, args)
    else:
        work(job)
    with run_lock(job["out"], wait=True, name=".outputs.lock"):  # tuners that end together write them in turn
        return {"out": job["out"], **write_outputs(open_study(job), job),
                "confirmation": confirm(job, args.confirm_seeds) if args.confirm_seeds else None}


def _check_same_study(study: optuna.Study, job: dict) -> None:
    """A study continues only under the parameters and space it started with (said in one sentence otherwise)."""
    recorded = {"base": job["base"], "space": job["space"]}
    if not study.user_attrs:
        for key, value in recorded.items():
            study.set_user_attr(key, value)
        return
    for key, value in recorded.items():
        if study.user_attrs.get(key) != value:
            raise ConfigError(f"study {job['study']!r} in {job['storage']} was started with other {key} "
                              f"parameters ({study.user_attrs.get(key)!r}); run the same command, or give another "
                              "--study name.")


def _submit(job: dict, args) -> None:
    """`args.workers` tuner jobs through submitit (local processes, or a Slurm array), waited for."""
    import submitit
    executor = submitit.AutoExecutor(folder=Path(job["out"]) / "submitit" / "%j", cluster=args.executor or "local")
    executor.update_parameters(name="sddlib-tune", timeout_min=args.timeout_min, gpus_per_node=args.gpus_per_job,
                               cpus_per_task=args.cpus_per_job, tasks_per_node=1, nodes=1,
                               slurm_partition=args.partition)
    handles = executor.map_array(work, [job] * args.workers, list(range(args.workers)))
    print(f"{args.workers} tuner job(s) on {args.executor or 'local'} (first: {handles[0].job_id}); logs in "
          f"{Path(job['out']) / 'submitit'}", flush=True)
    for handle in handles:
        try:
            handle.result()
        except Exception as err:  # noqa: BLE001 - a job that died: its last words; the study holds what it did
            print(f"tuner job {handle.job_id} ended: {(str(err).strip().splitlines() or [''])[-1][:300]} "
                  f"(log: {handle.paths.stderr})", file=sys.stderr, flush=True)


# --- the command line -----------------------------------------------------------------------------------------
def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sddlib.tune", description=__doc__.split("\n\n")[0])
    add_run_parameters(ap)  # the run to tune, e.g. -p epochs 20 -p subset 5000 -p tune_fraction 0.2
    ap.add_argument("--trials", type=int, default=20, help="the study's total number of trials (default 20)")
    ap.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    ap.add_argument("--space", help="a YAML search space (default: method, M, T, weights, lr, warm-up)")
    ap.add_argument("--study", default="tune", help="the study's name (default 'tune')")
    ap.add_argument("--out", help="the study's folder (default <output_dir>/<data>/<study>)")
    ap.add_argument("--storage", help="an Optuna storage URL, or journal:PATH (default: sqlite in the folder)")
    ap.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed (worker i: seed + i)")
    ap.add_argument("--pruner", default="median", help="median (default), hyperband or none")
    ap.add_argument("--confirm-seeds", type=int, default=3,
                    help="seeds of the confirmation on the test split, best vs default recipe (0: none)")
    cluster = ap.add_argument_group("workers (submitit)")
    cluster.add_argument("--workers", type=int, default=1, help="tuner processes or jobs on the study (default 1)")
    cluster.add_argument("--executor", choices=("local", "slurm"), help="run the workers as submitit jobs")
    cluster.add_argument("--partition", help="Slurm partition")
    cluster.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per tuner job")
    cluster.add_argument("--cpus-per-job", type=int, default=8, help="CPU cores per tuner job")
    cluster.add_argument("--timeout-min", type=int, default=24 * 60, help="time limit of one tuner job in minutes")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if str(Path.cwd()) not in sys.path:  # a run's `imports` from the folder the tuner starts in
        sys.path.insert(0, str(Path.cwd()))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        result = run_study(load_params(args.parameters_file, args.parameter), args)
    except (ConfigError, CheckpointError, DatasetNotFoundError, RunLockedError, FileNotFoundError,
            yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"study folder: {result['out']}")
    return 0


if __name__ == "__main__":
    freeze_imports()   # its modules, loaded above, out of the collector's reach (sddlib.startup)
    sys.exit(main())
