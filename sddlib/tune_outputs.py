"""What a tuning study leaves in its folder, and the one place it reads the test split.

`write_outputs`: `best.yaml` (the run's parameters with the best trial's values, ready for `python -m sddlib -f` or
a sweep), `trials.csv` (every trial: number, state, value, parameters, times) and `figures/` (Optuna's matplotlib
optimisation history, parameter importances and a slice per parameter, each PNG with the CSV it was drawn from).
`confirm`: the best settings against the method's default recipe (the run as given, with the best method and the
loss weights, warm-up and hyper-parameters that method registers), both trained on all the training images and
scored on the test split over seeds, paired by seed; reported as it comes out, whichever side wins.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pandas as pd
import yaml

from . import experiment
from .checkpoints import write_json
from .config import DEFAULTS
from .losses import LOSS_FIELDS, RECIPE

__all__ = ["write_outputs", "confirm", "best_params"]

_TUNER_ONLY = ("tune_fraction", "run_name")  # what a trial adds to the run; never in best.yaml or the confirmation


def best_params(study: optuna.Study, job: dict) -> dict:
    """The run's own parameters with the best trial's values (for the full training images and the test split)."""
    base = {k: v for k, v in job["base"].items() if k not in _TUNER_ONLY}
    return {**base, **study.best_trial.params}


def write_outputs(study: optuna.Study, job: dict) -> dict:
    """best.yaml, trials.csv and the figures in the study's folder; returns {"best": parameters or None}."""
    out = Path(job["out"])
    study.trials_dataframe().to_csv(out / "trials.csv", index=False)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        print(f"no trial of study {job['study']!r} is complete yet: no best.yaml", flush=True)
        return {"best": None}
    best = best_params(study, job)
    trial = study.best_trial
    header = (f"# best of study {job['study']!r}: trial {trial.number}, top-1 {trial.value:.2f} on "
              f"{job['base']['tune_fraction']} of each class held out of the training images ({len(complete)} "
              f"complete trials)\n# python -m sddlib -f best.yaml   trains it on all training images, scored on the "
              "test split\n")
    (out / "best.yaml").write_text(header + yaml.safe_dump(best, sort_keys=False))
    _figures(study, out / "figures", complete)
    print(f"best: trial {trial.number}, top-1 {trial.value:.2f} (held-out split) with {trial.params}", flush=True)
    return {"best": best}


def _figures(study: optuna.Study, folder: Path, complete: list) -> None:
    """Each figure as PNG beside the tidy CSV it shows."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"number": t.number, "value": t.value} for t in complete]
    history = pd.DataFrame(rows).sort_values("number")
    history["best_so_far"] = history["value"].cummax()
    frames = {"history": (history, lambda: ov.plot_optimization_history(study))}
    if len(complete) >= 2:
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as err:  # e.g. no parameter that varied over the complete trials
            print(f"no parameter importances: {err}", flush=True)
        else:
            frames["importances"] = (pd.DataFrame({"parameter": list(importances), "importance":
                                                   list(importances.values())}),
                                     lambda: ov.plot_param_importances(study))
    names = sorted({name for t in complete for name in t.params})
    for name in names:
        frame = pd.DataFrame([{"number": t.number, name: t.params[name], "value": t.value}
                              for t in complete if name in t.params])
        frames[f"slice_{name}"] = (frame, lambda name=name: ov.plot_slice(study, params=[name]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for stem, (frame, draw) in frames.items():
            frame.to_csv(folder / f"{stem}.csv", index=False)
            axes = draw()
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.savefig(folder / f"{stem}.png", dpi=120, bbox_inches="tight")
            plt.close(figure)


def _default_recipe(base: dict, method: str) -> dict:
    """The run as given (its own lr, M, schedule) with the best trial's method and that method's registered recipe:
    its loss weights, warm-up and hyper-parameters."""
    given = {k: v for k, v in base.items() if k not in (*_TUNER_ONLY, *RECIPE, *LOSS_FIELDS, "loss_params")}
    return {**given, "method": method}


def confirm(job: dict, seeds: int) -> pd.DataFrame | None:
    """Best settings vs the default recipe over `seeds` seeds, trained on all training images and scored on the
    test split (the only reading of it), paired by seed; written as confirmation.csv and confirmation.json."""
    best_yaml = Path(job["out"]) / "best.yaml"
    if not best_yaml.is_file():
        return None
    best = yaml.safe_load(best_yaml.read_text())
    method = best.get("method", DEFAULTS["method"])  # a space without `method`: the run's own
    default, first = _default_recipe(job["base"], method), int(best.get("seed", 0))
    rows = []
    for seed in range(first, first + seeds):
        tuned = experiment.run({**best, "seed": seed, "run_name": f"{job['study']}-best-seed{seed}"})
        recipe = experiment.run({**default, "seed": seed})
        rows.append({"seed": seed, "default_run": recipe["run_name"], "tuned_run": tuned["run_name"],
                     "default_best_top1": recipe["best_top1"], "tuned_best_top1": tuned["best_top1"],
                     "default_last_top1": recipe["last_top1"], "tuned_last_top1": tuned["last_top1"]})
        rows[-1]["difference_best"] = rows[-1]["tuned_best_top1"] - rows[-1]["default_best_top1"]
        rows[-1]["difference_last"] = rows[-1]["tuned_last_top1"] - rows[-1]["default_last_top1"]
        print(f"seed {seed}: tuned {tuned['best_top1']:.2f}, default recipe {recipe['best_top1']:.2f} (test top-1, "
              "best epoch)", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(Path(job["out"]) / "confirmation.csv", index=False)
    summary = _summary(frame)
    write_json(Path(job["out"]) / "confirmation.json", {"summary": summary, "rows": rows})
    print(summary, flush=True)
    return frame


def _summary(frame: pd.DataFrame) -> str:
    """One sentence, whichever way it came out."""
    diff = frame["difference_best"]
    spread = f" ± {diff.std(ddof=1):.2f}" if len(diff) > 1 else ""
    wins = int((diff > 0).sum())
    return (f"tuned minus default recipe, test top-1 (best epoch), paired over {len(diff)} seed(s): "
            f"{diff.mean():+.2f}{spread} points; tuned better on {wins} of {len(diff)}, last epoch "
            f"{frame['difference_last'].mean():+.2f}")
