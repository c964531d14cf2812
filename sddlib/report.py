"""Tables of our runs beside the paper's: mean ± std over seeds, best and last epoch, deltas, SD gains.

Reads what `sddlib.experiment.run` writes (`outputs/<dataset>/<run>/metrics.json`) and the paper's
numbers shipped as package data (`sddlib/reference/`). Accuracies are top-1 in percent.

    runs = load_runs("outputs")
    table = results_table(runs, "cifar100")   # numbers, one row per teacher/student pair and method
    format_table(table)                        # strings: "76.31 ± 0.20 (n=2)"
    write_tables("outputs")                    # outputs/tables/<dataset>.csv and .md

Only runs as published (`sddlib.departures`: the published experiment's values apart from the seed, its
teacher source, default speed switches) sit beside the paper; the others are listed per dataset by
`departures_table`, each with what it changed ("epochs 1 (240), subset 256 (0)").
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .data.spec import DATASETS, paper_datasets
from .departures import YOUR_DATA, describe, teacher_description

__all__ = ["PAPER_DATASETS", "title", "METHODS", "LOSS_VALUES", "SkippedRunWarning", "paper_results",
           "authors_experiments", "imagenet_baselines", "authors_logged_runs", "ls_paper_results", "method_name",
           "load_runs", "table_datasets", "results_table", "departures_table", "sd_gains", "by_scales", "seed_pairs",
           "GAIN_COLUMNS", "our_gains", "paper_has_numbers", "Table", "dataset_tables", "run_summary", "format_table",
           "format_gains", "format_departures", "to_markdown", "legend", "write_table", "write_tables"]

PAPER_DATASETS = paper_datasets()  # the paper's table order
METHODS = ("kd", "sd_kd", "dkd", "sd_dkd", "nkd", "sd_nkd")
ROWS = ("teacher", "student", *METHODS)  # per pair, as the paper lists them
METHOD_NAMES = {"teacher": "Teacher", "student": "Student alone", "alone": "Trained alone"}
# Variants of a model trained without a teacher: under the run's own solver ("alone": the paper's "student" rows)
# or a teacher trained here under its dataset's teacher protocol ("teacher": in no row of the tables).
TRAINED_ALONE = ("alone", "teacher")


def title(dataset: str) -> str:
    """A dataset's name in tables (`DatasetSpec.title`); a folder of your own images is named by its folder."""
    return DATASETS[dataset].title if dataset in DATASETS else dataset


def method_name(variant: str) -> str:
    """A row's name: "KD", "SD-DKD", "SD-KD+LS" (logit standardization), a registered loss's name in capitals."""
    if variant in METHOD_NAMES:
        return METHOD_NAMES[variant]
    base, ls = variant.removesuffix("+ls"), variant.endswith("+ls")
    sd = base.startswith("sd_")
    return ("SD-" if sd else "") + base.removeprefix("sd_").upper() + ("+LS" if ls else "")


def _order(variant: str) -> tuple:
    """Sort key: the paper's methods first (KD, DKD, NKD), each plain before SD and without LS before with."""
    plain = variant.removeprefix("sd_")
    base = plain.removesuffix("+ls")
    return (METHODS.index(base) if base in METHODS else len(METHODS), base, plain != base, variant != plain)


def _rows(variants) -> tuple[str, ...]:
    """The rows of a pair: the paper's, then every other variant we ran (each plain one beside its SD one)."""
    extra = {v.removeprefix("sd_") for v in variants} - {*TRAINED_ALONE, *METHODS}
    return (*ROWS, *sorted((v for plain in extra for v in (plain, f"sd_{plain}")), key=_order))


def _sd_partner(variant: str) -> str | None:
    """The plain variant an SD variant is compared with (sd_kd+ls -> kd+ls); None for a plain one."""
    return variant[3:] if variant.startswith("sd_") else None
# The loss values a run records (its `params`): what tells an ImageNet baseline config from an SD config at M=[1].
LOSS_VALUES = ("ce_weight", "kd_weight", "warmup_epochs", "T", "alpha", "beta", "gamma")
RUN_COLUMNS = ["dataset", "teacher", "student", "method", "variant", "sd", "scales", "seed", "best_top1",
               "last_top1", "best_top5", "last_top5", "best_epoch", "epochs", "subset", "batch_size", *LOSS_VALUES,
               "teacher_top1", "teacher_from", "as_published", "departures", "wall_time_s", "run_name", "path"]


class SkippedRunWarning(UserWarning):
    """A run left out: a metrics.json that is partial, unreadable or not a complete run, or an ImageNet
    plain-method run whose values are not the authors' baseline config of its row."""


# --- the paper's and the authors' numbers ----------------------------------------------------------
def _reference(name: str):
    return resources.files("sddlib.reference").joinpath(name)


def paper_results() -> pd.DataFrame:
    """Every accuracy of the paper's tables: dataset, teacher, student, method, top1, top5, source."""
    with _reference("paper_results.csv").open("r") as f:
        return pd.read_csv(f)


def authors_experiments() -> list[dict]:
    """The authors' effective hyper-parameters of every published SDD config (experiments.yaml)."""
    return yaml.safe_load(_reference("experiments.yaml").read_text())


def imagenet_baselines() -> list[dict]:
    """The authors' plain KD/DKD/NKD ImageNet configs (imagenet_baselines.yaml): the paper's ImageNet baseline
    rows come from these, not from the SD configs run with M=[1]."""
    return yaml.safe_load(_reference("imagenet_baselines.yaml").read_text())


def ls_paper_results() -> pd.DataFrame:
    """CIFAR-100 top-1 of KD, KD+LS, DKD, DKD+LS as reported by the logit-standardization paper (its README's
    tables): dataset, teacher, student, method, top1, source. Not SDD paper rows."""
    with _reference("ls_paper_results.csv").open("r") as f:
        return pd.read_csv(f)


def authors_logged_runs() -> pd.DataFrame:
    """Top-1 accuracies the authors noted beside their run commands: config, scales, top1."""
    with _reference("authors_logged_runs.csv").open("r") as f:
        return pd.read_csv(f)


# --- our runs --------------------------------------------------------------------------------------
def load_runs(outputs_dir) -> pd.DataFrame:
    """One row per complete run found under `outputs_dir` (any depth); others are skipped with a warning."""
    rows = []
    for path in sorted(Path(outputs_dir).glob("**/metrics.json")):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            warnings.warn(f"skipping {path}: unreadable ({type(err).__name__})", SkippedRunWarning, stacklevel=2)
            continue
        if not isinstance(m, dict) or m.get("status") != "complete":
            status = m.get("status") if isinstance(m, dict) else None
            warnings.warn(f"skipping {path}: status {status!r}, not 'complete'", SkippedRunWarning, stacklevel=2)
            continue
        try:
            params = m.get("params") or {}
            scales = m["scales"]           # None for a model trained alone (variant "alone")
            rows.append({
                "dataset": m["dataset"], "teacher": m["teacher"], "student": m["student"], "method": m["method"],
                "variant": m["variant"], "sd": bool(m["sd"]),
                "scales": "" if scales is None else "[" + ",".join(str(s) for s in scales) + "]", "seed": m["seed"],
                "best_top1": float(m["best_top1"]), "last_top1": float(m["last_top1"]),
                "best_top5": m.get("best_top5"), "last_top5": m.get("last_top5"),
                "best_epoch": m.get("best_epoch"), "epochs": params.get("epochs"), "subset": params.get("subset"),
                "batch_size": params.get("batch_size"), **{k: params.get(k) for k in LOSS_VALUES},
                "teacher_top1": m.get("teacher_top1"),
                "teacher_from": None if m["variant"] in TRAINED_ALONE else teacher_description(m.get("teacher_source"),
                                                                                         m["dataset"]),
                # a run recorded before departures were (no "departures") is not known to be as published
                "as_published": m.get("departures") == {}, "departures": describe(m.get("departures")),
                "wall_time_s": m.get("wall_time_s"),
                "run_name": m.get("run_name"), "path": str(path)})
        except (KeyError, TypeError, ValueError) as err:
            warnings.warn(f"skipping {path}: missing or bad field ({err})", SkippedRunWarning, stacklevel=2)
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def table_datasets(runs: pd.DataFrame) -> list[str]:
    """The paper's three datasets, then any other dataset we have runs of."""
    extra = sorted(set(runs["dataset"]) - set(PAPER_DATASETS)) if len(runs) else []
    return [*PAPER_DATASETS, *extra]


# --- tables ----------------------------------------------------------------------------------------
def _stats(values: pd.Series) -> tuple[float, float]:
    values = values.dropna().astype(float)
    if values.empty:
        return np.nan, np.nan
    return values.mean(), values.std(ddof=1) if len(values) > 1 else np.nan


def by_scales(runs: pd.DataFrame) -> list[pd.DataFrame]:
    """`runs` split by their scales M, fewest scales first (a list holding `runs` itself when it is empty): the
    rows of a method run at several M, which a mean over all of them would mix."""
    if runs.empty or "scales" not in runs:
        return [runs]
    return [runs[runs["scales"] == m] for m in sorted(set(runs["scales"]), key=lambda m: (len(m), m))]


def seed_pairs(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame, pd.DataFrame, list]]:
    """One pair's plain and SD runs matched by seed, for every reader of an SD gain (`sd_gains`, the findings): per
    base method (the paper's order) and per SD scales M (`by_scales`; a method without SD runs: one empty SD frame),
    (method, plain, sd, seeds), each frame one run per seed (the last recorded) indexed by seed, and the seeds both
    have."""
    pairs = []
    for method in sorted({_sd_partner(v) or v for v in runs["variant"]}, key=_order):
        plain = runs[runs["variant"] == method].drop_duplicates("seed", keep="last").set_index("seed")
        for sd in by_scales(runs[runs["variant"] == f"sd_{method}"]):
            sd = sd.drop_duplicates("seed", keep="last").set_index("seed")
            pairs.append((method, plain, sd, sorted(set(plain.index) & set(sd.index))))
    return pairs


def _separate_baselines(dataset: str) -> dict:
    """(teacher, student, method) -> the authors' plain config, for a dataset whose baseline rows are their own
    experiments (ImageNet); empty where a baseline is the SD config run with M=[1] (CIFAR-100, CUB-200)."""
    if dataset != "imagenet":
        return {}
    return {(b["teacher"], b["student"], b["method"]): b for b in imagenet_baselines()}


def _same(ours, theirs) -> bool:
    return ours is not None and not pd.isna(ours) and float(ours) == float(theirs)


def _keep_authors_baselines(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Leave out (with a warning) each plain-method run of a pair with a separate baseline config whose loss
    values are not that config's: e.g. an ImageNet SD params file run with M=[1], which takes the baseline's
    run name but trains something the paper's baseline row is not."""
    configs = _separate_baselines(dataset)
    keep = []
    for run in runs.itertuples(index=False):
        config = configs.get((run.teacher, run.student, run.variant))
        wrong = sorted(k for k, v in (config or {}).get("loss", {}).items() if not _same(getattr(run, k), v))
        if wrong:
            ours = ", ".join(f"{k}={getattr(run, k)}" for k in wrong)
            theirs = ", ".join(f"{k}={config['loss'][k]}" for k in wrong)
            warnings.warn(f"leaving {run.path} out of the {method_name(run.variant)} row: its {ours} are not the "
                          f"authors' baseline config {config['source']} ({theirs}); run "
                          f"params/{dataset}/{run.teacher}-{run.student}-{run.variant}.yaml with force=True "
                          f"(sweep --force) to replace it.", SkippedRunWarning, stacklevel=3)
        keep.append(not wrong)
    return runs[keep] if len(runs) else runs


def _paper_value(paper: pd.DataFrame, teacher, student, method, column="top1") -> float:
    """The paper's number; teacher and student-alone rows may be stored without the other model."""
    hit = paper[paper.method == method]
    if method == "teacher":
        hit = hit[(hit.teacher == teacher) & ((hit.student == student) | hit.student.isna())]
    elif method == "student":
        hit = hit[(hit.student == student) & ((hit.teacher == teacher) | hit.teacher.isna())]
    else:
        hit = hit[(hit.teacher == teacher) & (hit.student == student)]
    return float(hit[column].iloc[0]) if len(hit) else np.nan


def results_table(runs: pd.DataFrame, dataset: str, paper: pd.DataFrame | None = None,
                  published_only: bool = True) -> pd.DataFrame:
    """The paper's table for `dataset` in long form: one row per (teacher, student) pair and method, and per M
    where an SD method ran at several (each row's SD gain against the same plain row).

    Pairs come in the paper's order, then pairs only we ran. Per row: our best-epoch and last-epoch
    top-1 as mean and (sample) std over the runs (seeds), `n_runs`, the scales M we ran, the paper's
    value, `delta_vs_paper` (ours best - paper) and, on SD rows, the SD gain over the plain method
    (sd_x - x) for ours and for the paper. `teacher` rows hold the teacher's accuracy as evaluated in
    our runs (each distinct value once); `student` rows the student trained alone
    (`experiment.run_vanilla`), ours and the paper's. Rows empty on both sides are dropped; a pair
    the paper has no numbers for (ImageNet ResNet34 -> ResNet18) has an empty paper column.
    ImageNet tables also carry top-5. Only runs as published count (`departures_table` lists the others);
    the teacher row's `teacher_from` says where its teachers came from. `published_only=False` takes every
    run: for comparing one's own short runs with each other (the digit-mosaic notebooks), never with the paper.

    Each SD row is set beside its plain row: on CIFAR-100 and CUB-200 the same config run with M=[1];
    on ImageNet the authors' separate baseline config (`imagenet_baselines`), so an ImageNet plain run
    counts only when its loss values are that config's (others are left out with a SkippedRunWarning).
    """
    paper = paper_results() if paper is None else paper
    paper = paper[paper.dataset == dataset]
    if not len(runs):
        runs = pd.DataFrame(columns=RUN_COLUMNS)
    runs = runs[(runs["dataset"] == dataset) & (runs["as_published"].astype(bool) | (not published_only))]
    with_top5 = paper["top5"].notna().any()
    pairs = list(dict.fromkeys(
        (t, s) for t, s, m in zip(paper.teacher, paper.student, paper.method) if m in METHODS))
    distilled = _keep_authors_baselines(runs[~runs["variant"].isin(TRAINED_ALONE)], dataset)
    pairs += sorted(set(zip(distilled["teacher"], distilled["student"])) - set(pairs))
    rows = []
    for teacher, student in pairs:
        ours = distilled[(distilled["teacher"] == teacher) & (distilled["student"] == student)]
        alone = runs[(runs["variant"] == "alone") & (runs["student"] == student)]
        by_method, found = {}, []
        # runs sharing one teacher checkpoint report it once (n counts distinct teacher accuracies)
        teachers = ours.drop_duplicates("teacher_top1")
        for method in _rows(ours["variant"]):
            chosen = {"teacher": teachers, "student": alone}.get(method, ours[ours["variant"] == method])
            at_each_m = [chosen] if method in ("teacher", "student") else by_scales(chosen)
            for sel in at_each_m:  # an SD method run at several M: a row per M, never their average
                best = _stats(sel["teacher_top1"] if method == "teacher" else sel["best_top1"])
                last = (np.nan, np.nan) if method == "teacher" else _stats(sel["last_top1"])
                row = {"teacher": teacher, "student": student, "method": method,
                       "M": "" if method == "teacher" else "; ".join(sorted(set(sel["scales"]))),
                       "teacher_from": "; ".join(sorted(set(sel["teacher_from"].dropna()))) if method == "teacher"
                       else "",
                       "n_runs": len(sel), "ours_best": best[0], "ours_best_std": best[1],
                       "ours_last": last[0], "ours_last_std": last[1],
                       "paper": _paper_value(paper, teacher, student, method)}
                row["delta_vs_paper"] = row["ours_best"] - row["paper"]
                if with_top5:
                    top5 = (np.nan, np.nan) if method == "teacher" else _stats(sel["best_top5"])
                    row.update(ours_best_top5=top5[0], ours_best_top5_std=top5[1],
                               paper_top5=_paper_value(paper, teacher, student, method, "top5"))
                by_method.setdefault(method, row)
                found.append(row)
        for row in found:
            base = by_method.get(_sd_partner(row["method"]))
            row["sd_gain_ours"] = row["ours_best"] - base["ours_best"] if base else np.nan
            row["sd_gain_paper"] = row["paper"] - base["paper"] if base else np.nan
            if row["n_runs"] or not np.isnan(row["paper"]) or not np.isnan(row["ours_best"]):
                rows.append(row)
    columns = ["teacher", "student", "method", "M", "n_runs", "ours_best", "ours_best_std", "ours_last",
               "ours_last_std", "paper", "delta_vs_paper", "sd_gain_ours", "sd_gain_paper"]
    if with_top5:
        columns += ["ours_best_top5", "ours_best_top5_std", "paper_top5"]
    columns += ["teacher_from"]
    return pd.DataFrame(rows, columns=columns).astype({"n_runs": int})


GAIN_COLUMNS = ["teacher", "student", "method", "M", "seeds_planned", "n_seeds", "plain_n", "sd_n", "plain_best",
                "plain_best_std", "sd_best", "sd_best_std", "gain_best", "gain_best_std", "gain_last", "gain_last_std",
                "sd_ahead", "missing"]


def sd_gains(runs: pd.DataFrame, dataset: str, published_only: bool = True) -> pd.DataFrame:
    """The table that answers "does SD help here", one row per (teacher, student) pair, base method and SD scales M
    (each M against the same plain runs), computed
    once for every notebook and the results page: the seeds planned (every seed any distillation run of the
    dataset was trained at) and `n_seeds`, those with both the plain and the SD run complete; mean and (sample)
    std of the plain and of the SD runs' best top-1 (`plain_n`, `sd_n` runs each); SD-X − X paired by seed (best
    and last epoch, mean and std) and in how many of the `n_seeds` SD was ahead at the best epoch; `missing`
    names the runs a planned seed lacks ("" when none). A gain of means (`results_table`) cannot say whether
    every seed agrees; this can."""
    if not len(runs):
        return pd.DataFrame(columns=GAIN_COLUMNS)
    runs = runs[(runs["dataset"] == dataset) & (runs["as_published"].astype(bool) | (not published_only))]
    runs = _keep_authors_baselines(runs[~runs["variant"].isin(TRAINED_ALONE)], dataset)
    planned = sorted(set(runs["seed"]))
    rows = []
    for (teacher, student), pair in runs.groupby(["teacher", "student"], sort=False):
        for method, plain, sd, seeds in seed_pairs(pair):   # a row per M, each against the plain
            best = sd.loc[seeds, "best_top1"] - plain.loc[seeds, "best_top1"]
            last = sd.loc[seeds, "last_top1"] - plain.loc[seeds, "last_top1"]
            (gain_best, gain_best_std), (gain_last, gain_last_std) = _stats(best), _stats(last)
            missing = [f"{method_name(v)} seed{'s' if len(lack) > 1 else ''} {', '.join(map(str, lack))}"
                       for v, have in ((method, plain), (f"sd_{method}", sd))
                       if (lack := [s for s in planned if s not in have.index])]
            rows.append({"teacher": teacher, "student": student, "method": method,
                         "M": "; ".join(sorted(set(sd["scales"]))), "seeds_planned": len(planned),
                         "n_seeds": len(seeds), "plain_n": len(plain), "sd_n": len(sd),
                         **dict(zip(("plain_best", "plain_best_std"), _stats(plain["best_top1"]))),
                         **dict(zip(("sd_best", "sd_best_std"), _stats(sd["best_top1"]))),
                         "gain_best": gain_best, "gain_best_std": gain_best_std, "gain_last": gain_last,
                         "gain_last_std": gain_last_std, "sd_ahead": int((best > 0).sum()),
                         "missing": "; ".join(missing)})
    return pd.DataFrame(rows, columns=GAIN_COLUMNS)


DEPARTURE_COLUMNS = ["teacher", "student", "method", "M", "seed", "best_top1", "last_top1", "teacher_top1",
                     "teacher_from", "departures", "run_name", "path"]


def departures_table(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The runs of `dataset` that are not as published, one row each with what they changed: never beside
    the paper's numbers."""
    if not len(runs):
        return pd.DataFrame(columns=DEPARTURE_COLUMNS)
    sel = runs[(runs["dataset"] == dataset) & ~runs["as_published"].astype(bool)]
    out = sel.assign(method=sel["variant"].map(method_name), M=sel["scales"])
    return out[DEPARTURE_COLUMNS].sort_values(["teacher", "student", "method", "M", "seed"], na_position="first")\
        .reset_index(drop=True)


def format_departures(df: pd.DataFrame) -> pd.DataFrame:
    """`departures_table` as strings."""
    return pd.DataFrame({
        "Teacher": df["teacher"], "Student": df["student"], "Method": df["method"], "M": df["M"], "Seed": df["seed"],
        "Best top-1": df["best_top1"].map(_num), "Last top-1": df["last_top1"].map(_num),
        "Teacher top-1": df["teacher_top1"].map(_num), "Teacher from": df["teacher_from"],
        "Departures": df["departures"], "Run": df["run_name"]}).fillna("").reset_index(drop=True)


def run_summary(metrics: dict, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """One run at a glance: best and last epoch, the teacher, and the paper's numbers for the same
    configuration and for its plain (or SD) counterpart; `protocol` says "as published" or what it changed
    (then the paper's columns stay empty: the run is not the paper's experiment)."""
    paper = paper_results() if paper is None else paper
    paper = paper[paper.dataset == metrics["dataset"]]
    variant = metrics["variant"]
    other = _sd_partner(variant) or f"sd_{variant}"
    teacher, student = metrics["teacher"], metrics["student"]
    if metrics.get("departures") != {}:
        paper = paper.iloc[0:0]
    row = {"run": metrics["run_name"], "M": "[" + ",".join(map(str, metrics["scales"])) + "]",
           "protocol": describe(metrics.get("departures")),
           "best top-1": metrics["best_top1"], "best epoch": metrics["best_epoch"],
           "last top-1": metrics["last_top1"], "best top-5": metrics["best_top5"],
           "last top-5": metrics["last_top5"], "teacher top-1": metrics["teacher_top1"],
           f"paper {method_name(variant)}": _paper_value(paper, teacher, student, variant),
           f"paper {method_name(other)}": _paper_value(paper, teacher, student, other)}
    return pd.DataFrame([row]).set_index("run").round(2)


def _num(x, signed=False) -> str:
    return "" if x is None or pd.isna(x) else (f"{x:+.2f}" if signed else f"{x:.2f}")


def _mean_std(mean, std, n=None) -> str:
    if pd.isna(mean):
        return ""
    text = f"{mean:.2f}" + ("" if pd.isna(std) else f" ± {std:.2f}")
    return text + ("" if n is None else f" (n={n})")


def format_table(df: pd.DataFrame) -> pd.DataFrame:
    """`results_table` as strings for reading: "76.31 ± 0.20 (n=2)", signed deltas, blanks where empty."""
    out = pd.DataFrame({
        "Teacher": df["teacher"], "Student": df["student"], "Method": df["method"].map(method_name),
        "M": df["M"],
        "Ours best top-1": [_mean_std(m, s, n) for m, s, n in zip(df.ours_best, df.ours_best_std, df.n_runs)],
        "Ours last top-1": [_mean_std(m, s) for m, s in zip(df.ours_last, df.ours_last_std)],
        "Paper top-1": df["paper"].map(_num),
        "Δ best − paper": df["delta_vs_paper"].map(lambda x: _num(x, True)),
        "SD gain (ours)": df["sd_gain_ours"].map(lambda x: _num(x, True)),
        "SD gain (paper)": df["sd_gain_paper"].map(lambda x: _num(x, True)),
    })
    if "paper_top5" in df:
        out["Ours best top-5"] = [_mean_std(m, s) for m, s in zip(df.ours_best_top5, df.ours_best_top5_std)]
        out["Paper top-5"] = df["paper_top5"].map(_num)
    out["Teacher from"] = df["teacher_from"]
    return out.fillna("").reset_index(drop=True)


def format_gains(df: pd.DataFrame) -> pd.DataFrame:
    """`sd_gains` as strings: "3 of 3", "76.31 ± 0.20", "+0.83 ± 0.25", "3 of 3 seeds", what a row misses."""
    def signed(mean, std):
        return _num(mean, True) + ("" if pd.isna(std) else f" ± {std:.2f}")
    return pd.DataFrame({
        "Teacher": df["teacher"], "Student": df["student"],
        "Method": [f"{method_name('sd_' + m)} − {method_name(m)}" for m in df["method"]], "M": df["M"],
        "Seeds": [f"{n} of {p}" for n, p in zip(df.n_seeds, df.seeds_planned)],
        "Plain best top-1": [_mean_std(m, s) for m, s in zip(df.plain_best, df.plain_best_std)],
        "SD best top-1": [_mean_std(m, s) for m, s in zip(df.sd_best, df.sd_best_std)],
        "SD gain, best top-1": [signed(m, s) for m, s in zip(df.gain_best, df.gain_best_std)],
        "SD gain, last top-1": [signed(m, s) for m, s in zip(df.gain_last, df.gain_last_std)],
        "SD ahead (best)": [f"{k} of {n} seeds" if n else "" for k, n in zip(df.sd_ahead, df.n_seeds)],
        "Missing": [f"missing: {m}" if m else "" for m in df["missing"]]}).reset_index(drop=True)


def paper_has_numbers(dataset: str) -> bool:
    """The dataset is one of the paper's tables (its rows sit beside the paper's numbers)."""
    return dataset in PAPER_DATASETS


def our_gains(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """`sd_gains` of the runs the paper has no numbers for, as our own rows (every run, as published or not):
    all of a dataset the paper does not have; on a paper dataset, the methods it does not report."""
    if paper_has_numbers(dataset) and len(runs):  # its own methods' runs are in its tables (or departures) already
        runs = runs[~runs["variant"].map(lambda v: v.removeprefix("sd_")).isin(METHODS)]
    return sd_gains(runs, dataset, published_only=False)


@dataclass(frozen=True)
class Table:
    """One table of a dataset, as every reader shows it: `key` (results, gains, ours, departures), its heading,
    the numbers and the strings shown."""
    key: str
    title: str
    numbers: pd.DataFrame
    shown: pd.DataFrame


_PAPER_ONLY_COLUMNS = ["Paper top-1", "Δ best − paper", "SD gain (paper)"]


def dataset_tables(runs: pd.DataFrame, dataset: str) -> list[Table]:
    """Every table of `dataset`, in the order the notebooks, the results page and the Markdown files show them.
    A paper dataset: our runs as published vs the paper, their SD gain paired by seed, our rows of the methods the
    paper does not report, the runs not as published. Data without paper numbers: our rows first (the SD gain
    paired by seed), then the mean ± std of every run, then the runs that depart from the dataset's protocol."""
    name = title(dataset)
    if not paper_has_numbers(dataset):
        ours, other = results_table(runs, dataset, published_only=False), departures_table(runs, dataset)
        other = other[other["departures"] != describe(YOUR_DATA)].reset_index(drop=True)  # not "your data" alone
        found = [Table("ours", f"{name}: our runs (no paper numbers), SD gain paired by seed",
                       *_gain_pair(our_gains(runs, dataset))),
                 Table("results", f"{name}: our runs, mean ± std over seeds", ours,
                       format_table(ours).drop(columns=_PAPER_ONLY_COLUMNS)),
                 Table("departures", f"{name}: runs that depart from the dataset's protocol", other,
                       format_departures(other))]
        return [t for t in found if len(t.numbers)]
    table, other = results_table(runs, dataset), departures_table(runs, dataset)
    found = [Table("results", f"{name}: our runs vs the SDD paper", table, format_table(table)),
             Table("gains", f"{name}: SD gain paired by seed (runs as published)",
                   *_gain_pair(sd_gains(runs, dataset))),
             Table("ours", f"{name}: our rows, methods the paper does not report (SD gain paired by seed)",
                   *_gain_pair(our_gains(runs, dataset))),
             Table("departures", f"{name}: runs not as published (not in the table above)", other,
                   format_departures(other))]
    return [t for t in found if t.key == "results" or len(t.numbers)]


def _gain_pair(gains: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return gains, format_gains(gains)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub pipe table of a DataFrame of strings (no dependency on `tabulate`)."""
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")
    left = {"Teacher", "Student", "Method", "M", "Teacher from", "Departures", "Run", "Missing"}
    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |",
             "|" + "|".join(":---" if c in left else "---:" for c in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_LEGEND = ("Top-1 accuracy (%) on the test set. Ours: mean ± std over runs (seeds), n = number of runs; "
           "'best' is the best test epoch (what the paper and mdistiller report), 'last' the final epoch. "
           "Δ = ours best − paper. SD gain = SD-X − X (best epoch). Teacher row: the teacher as evaluated "
           "in our runs, with where it came from. Only runs as published count (the published experiment's values "
           "apart from the seed, its teacher source, default speed switches); other runs are listed below the "
           "table with their departures, as 'value used (published value)'.")
_SAME_CONFIG = "KD, DKD and NKD rows are the SD configs run with M=[1]."


def legend(dataset: str) -> str:
    """What a results table of `dataset` shows and where its plain rows come from (under every rendering of it)."""
    spec = DATASETS.get(dataset)
    return f"{_LEGEND} {spec and spec.plain_rows or _SAME_CONFIG}"


def write_table(table: pd.DataFrame, shown: pd.DataFrame, path, title: str) -> list[Path]:
    """One notebook's table beside its run folders: `<path>.csv` (the numbers of `table`, 2 decimals) and
    `<path>.md` (`title`, then `shown`, the formatted table the notebook displays); returns both paths."""
    stem = Path(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    table.to_csv(csv, index=False, float_format="%.2f")
    md.write_text(f"## {title}\n\n{to_markdown(shown)}")
    return [csv, md]


def write_tables(outputs_dir, out_dir=None) -> list[Path]:
    """Write every table of `dataset_tables` for the paper's three datasets and any other dataset with runs, under
    `outputs_dir/tables/`: `<dataset>.md` (all of them), `<dataset>.csv` (the results table's numbers, 2 decimals),
    `<dataset>-gains.csv`, `-ours.csv`, `-departures.csv` where there are such rows, plus `runs.csv` (every complete
    run)."""
    runs = load_runs(outputs_dir)
    out = Path(out_dir) if out_dir is not None else Path(outputs_dir) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for dataset in table_datasets(runs):
        tables = dataset_tables(runs, dataset)
        md, text = out / f"{dataset}.md", ""
        def csv(key):
            return out / (f"{dataset}.csv" if key == "results" else f"{dataset}-{key}.csv")
        for table in tables:
            table.numbers.to_csv(csv(table.key), index=False, float_format="%.2f")
            legend_text = f"{legend(dataset)}\n\n" if table.key == "results" and paper_has_numbers(dataset) else ""
            text += f"{'##' if not text else '###'} {table.title}\n\n{legend_text}{to_markdown(table.shown)}\n"
            paths.append(csv(table.key))
        for key in {"results", "gains", "ours", "departures"} - {t.key for t in tables}:
            csv(key).unlink(missing_ok=True)  # none now: a file left by an earlier call would contradict the tables
        md.write_text(text.rstrip("\n") + "\n")
        paths.append(md)
    runs_csv = out / "runs.csv"
    runs.to_csv(runs_csv, index=False, float_format="%.2f")
    return paths + [runs_csv]
