"""Run one experiment from its configuration (a papermill parameters cell or a params/ file):
check everything -> data -> teacher -> student -> fastai Learner with `DistillationCallback` ->
outputs/<dataset>/<run>/. `run` (distillation) and `run_vanilla` (a model alone) are entry points of the one run
pipeline, `sddlib.run_pipeline.train_and_record`; teachers come from `sddlib.teacher_source`.

The training protocol is the authors' (mdistiller trainer): SGD with momentum 0.9, no dampening,
no Nesterov, L2 weight decay on every parameter (BN and biases included), the LR multiplied by
rate^k from epoch stage_k + 1 on (epochs counted from 1), gradient-norm clipping at 40, test top-1 and
top-5 after every epoch; both the best epoch (what papers report) and the last are recorded
(`sddlib.training`).

A run is never lost or faked: every epoch ends with an atomic resume checkpoint (weights, optimizer,
epoch, every RNG, the callbacks' history, best-so-far) and a rerun of the same configuration continues
from it with the numbers an uninterrupted run gives; a checkpoint of another configuration is never
continued silently; a non-finite loss stops the run and records it as failed; `metrics.json` says
"complete" only when the run is; one process at a time trains a run folder.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .config import DEFAULTS, ConfigError, RunConfig
from .departures import published_file
from .models import file_name
from .run_pipeline import train_and_record
from .runs import load_metrics
from .teacher_source import get_teacher
from .training import RESUME_FILE, EpochLogger, RunFailedError, StepLR, build_learner, top5_accuracy

__all__ = ["DEFAULTS", "RESUME_FILE", "RunConfig", "ConfigError", "RunFailedError",
           "resolve_params", "notebook_params", "run_name", "run_dir", "vanilla_dir", "load_metrics",
           "run", "run_vanilla", "build_learner", "StepLR", "EpochLogger", "top5_accuracy"]


# --- the configuration, as the notebooks see it -----------------------------------------------------
def resolve_params(params) -> dict:
    """The checked, filled-in parameters as a flat dict (what metrics.json records)."""
    return RunConfig.from_params(params).to_params()


def notebook_params(namespace: dict, **fixed) -> RunConfig:
    """The run configuration from a notebook's variables (its `parameters` cell), checked. A value left None that
    the pair's published params file holds (e.g. DKD's beta, 6 for vgg13 -> MobileNetV2 and 8 for the others) is
    taken from that file, and the notebook says so: changing `student` then never keeps another pair's value."""
    values = {**{k: namespace[k] for k in DEFAULTS if k in namespace}, **fixed}
    path = published_file(RunConfig.from_params(values))
    if path is None:
        return RunConfig.from_params(values)
    published = yaml.safe_load(path.read_text()) or {}
    taken = {k: published[k] for k in values if values[k] is None and published.get(k) is not None}
    if taken:
        print(f"the authors' values for this pair ({path.parent.name}/{path.name}): "
              + ", ".join(f"{k} {v}" for k, v in taken.items()), flush=True)
    return RunConfig.from_params({**values, **taken})


def run_name(params) -> str:
    """e.g. `resnet32x4-ShuffleV1-sd_dkd-M124-seed0`; M=[1] runs are the plain baselines (`dkd`)."""
    return RunConfig.from_params(params).name


def run_dir(params) -> Path:
    return RunConfig.from_params(params).directory


def vanilla_dir(params, arch: str) -> Path:
    """Where `arch` trained alone (no teacher) under the run's own solver is recorded: the paper's "student" rows."""
    cfg = RunConfig.from_params(params)
    return Path(cfg.output_dir) / cfg.data_name / f"{file_name(arch)}-alone-seed{cfg.seed}"


# --- runs ------------------------------------------------------------------------------------------
def run(params, force: bool = False, callbacks=()) -> dict:
    """Train one student as `params` say and write outputs/<dataset>/<run>/; return its metrics.

    Everything is checked first (`RunConfig`, then the dataset folder, the output folder and a given
    teacher checkpoint). A run whose metrics.json is complete is returned as it is, and an interrupted
    run continues from its last completed epoch; `force=True` starts it over. `callbacks`: more fastai callbacks
    of the fit (e.g. a tuner's pruning, which leaves the run "stopped" when it cancels the fit).
    """
    cfg = RunConfig.from_params(params)
    return train_and_record(cfg, cfg.directory, arch=cfg.student, variant=cfg.variant, force=force,
                            get_teacher=get_teacher, callbacks=callbacks)


def run_vanilla(params, arch: str | None = None, force: bool = False) -> dict:
    """Train `arch` (default: the student) alone with cross-entropy under the configuration's solver and
    record it like any run (`<arch>-alone-seed<s>`): the paper's "student" rows, and how missing
    teachers are made."""
    cfg = RunConfig.from_params(params)
    arch = arch or cfg.student
    return train_and_record(cfg, vanilla_dir(cfg, arch), arch=arch, variant="alone", force=force)
