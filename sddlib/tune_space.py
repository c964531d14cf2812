"""What a tuner searches: run parameters, each a list of choices or a numeric range, checked before any training.

The default space (`default_space`) is the question users ask of logit distillation on their own data: which
method (every registered loss, the run's own first), which scales M (the paper's sets and the plain [1]), and the
temperature, loss weights, learning rate and distillation warm-up. A YAML file (`load_space`) names the parameters
to search instead, each as

    method: [kd, dkd]                       # choices
    M: ["[1]", "[1,2,4]"]
    T: {low: 1, high: 8, log: true}         # a range (log: sampled on a log scale; int parameters give integers)

Every name is a run parameter and every bound or choice passes that parameter's own check (`sddlib.config`), so a
space is refused in one sentence before a trial starts. `suggest` turns an Optuna trial into run parameters; a loss
hyper-parameter (T, alpha, beta, gamma) is asked only of methods that take it.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from .config import DEFAULTS, METHODS, ConfigError, RunConfig
from .losses import LOSS_FIELDS

__all__ = ["default_space", "load_space", "check_space", "suggest", "recipe_trial", "SCALE_SETS"]

# The scales a default space tries: the plain method and the paper's two SD sets.
SCALE_SETS = ("[1]", "[1,2]", "[1,2,4]")
_FIELDS = RunConfig.__dataclass_fields__


def default_space(base: RunConfig) -> dict:
    """Method (the run's first), M, T, CE and distillation weights, LR and warm-up, around the run's own values (its
    method's recipe inside every range: it is the first trial)."""
    return {"method": [base.method] + [m for m in METHODS if m != base.method],
            "M": list(SCALE_SETS),
            "T": {"low": 1.0, "high": 8.0, "log": True},
            "ce_weight": {"low": 0.1, "high": 1.0},
            "kd_weight": {"low": 0.1, "high": 50.0, "log": True},
            "lr": {"low": base.lr / 5, "high": base.lr * 2, "log": True},
            "warmup_epochs": {"low": 0.0, "high": float(max(base.epochs, base.warmup_epochs))}}


def load_space(path) -> dict:
    """A space from a YAML file (checked by `check_space`); one sentence when it cannot be read."""
    try:
        space = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--space {str(path)!r} cannot be read ({type(err).__name__}); give a YAML file of "
                          "parameters, each a list of choices or {low, high, log}.") from None
    return space


def check_space(space, base: RunConfig) -> dict:
    """The space, every name a run parameter, every choice and bound accepted by that parameter's check (in the run
    `base`, so that a value is judged with the dataset and method it will run with)."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"the search space {space!r} is empty; name at least one run parameter with its choices "
                          "or {low, high} range.")
    for name, entry in space.items():
        _check_name(name)
        if isinstance(entry, list):
            _check_choices(name, entry, base)
        elif isinstance(entry, dict):
            _check_range(name, entry, base)
        else:
            raise ConfigError(f"search space entry {name}={entry!r} is neither a list of choices nor a "
                              "{low, high} range; give e.g. [a, b] or {low: 0.1, high: 1}.")
    return space


def suggest(trial, space: dict, base: RunConfig) -> dict:
    """The run parameters of one trial: each entry sampled (a loss hyper-parameter such as T only for a method that
    takes it)."""
    params = {}
    for name, entry in space.items():
        if name in LOSS_FIELDS and name not in METHODS[params.get("method", base.method)].hyper:
            continue  # a loss hyper-parameter the trial's method does not read
        if isinstance(entry, list):
            params[name] = trial.suggest_categorical(name, entry)
        elif _FIELDS[_field(name)].type == "int":
            params[name] = trial.suggest_int(name, int(entry["low"]), int(entry["high"]), log=bool(entry.get("log")))
        else:
            params[name] = trial.suggest_float(name, float(entry["low"]), float(entry["high"]),
                                               log=bool(entry.get("log")))
    return params


def recipe_trial(base: RunConfig, space: dict) -> dict:
    """The first trial: the run's own parameters with its method's registered recipe, for the names the space has
    (a loss hyper-parameter only where the method takes it)."""
    return {name: base[name] for name in space if not (name in LOSS_FIELDS and base[name] is None)}


# --- checks -------------------------------------------------------------------------------------------
def _field(name: str) -> str:
    return "scales" if name == "M" else name


def _check_name(name) -> None:
    tunable = [p for p in DEFAULTS if p not in _UNTUNABLE]
    if name not in tunable:
        close = difflib.get_close_matches(str(name), tunable, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"search space parameter {name!r} is not a run parameter a tuner may vary; {hint}"
                          f"give one of {', '.join(tunable)}.")


def _check_one(name: str, value, base: RunConfig) -> None:
    """`value` as the parameter's own check (or M's parser) takes it, in the whole run configuration."""
    try:
        base.replace(**{name: value})
    except ConfigError as err:
        raise ConfigError(f"search space {name}: {err}") from None


def _check_choices(name: str, choices: list, base: RunConfig) -> None:
    if not choices:
        raise ConfigError(f"search space entry {name}=[] has no choices; list at least one value.")
    for value in choices:
        _check_one(name, value, base)


def _check_range(name: str, entry: dict, base: RunConfig) -> None:
    extra = sorted(set(entry) - {"low", "high", "log"})
    if extra or not {"low", "high"} <= set(entry):
        raise ConfigError(f"search space range {name}={entry!r} needs exactly low, high and optionally log; "
                          f"e.g. {{low: 0.1, high: 1, log: true}}.")
    low, high = entry["low"], entry["high"]
    numeric = _FIELDS[_field(name)].type in ("int", "float")
    if not numeric or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"search space range {name}={entry!r} is not a numeric range of a numeric parameter; "
                          f"give {name} as a list of choices, or numbers for low and high.")
    if not low < high:
        raise ConfigError(f"search space range {name}: low={low!r} is not below high={high!r}; give low < high.")
    if entry.get("log") and low <= 0:
        raise ConfigError(f"search space range {name}: a log range needs low > 0, not {low!r}; raise low or "
                          "drop log.")
    for value in (low, high):
        _check_one(name, value, base)


# Parameters that say where and how a run executes, or that the tuner sets itself: never a dimension of a search.
_UNTUNABLE = {"dataset", "teacher", "student", "seed", "data_dir", "output_dir", "teacher_ckpt", "teacher_weights",
              "teachers_dir", "subset", "device", "num_workers", "pipeline", "run_name", "figures",
              "feature_figures", "tracker", "progress", "channels_last", "compile", "imports", "tune_fraction",
              "in_memory", "memory_budget", "teacher_weights_file", "student_weights_file", "loss_params"}
