"""What a notebook's runs show, in a few sentences computed from them: the SD gain at the last epoch against the
noise of the seeds, the students against their teacher, and the figures' facts — the ones that cut against SD
included. A notebook prints this after its figures instead of prose written before the numbers existed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..per_image import load_test_predictions
from ..report import method_name, seed_pairs
from .frames import COVERS
from .run_figures import CONTENTS_FILE, FIGURE_FILES
from .style import csv_path

__all__ = ["NOISE_FACTOR", "LOW_CONFIDENCE", "next_steps", "paired_bootstrap", "run_findings"]

NOISE_FACTOR = 2.0     # a gain under this many seed-to-seed standard deviations of the plain method is within noise
LOW_CONFIDENCE = 0.3   # a teacher region whose top-1 probability is under this says little about any class


def _test_images(path) -> int | None:
    """How many test images a run was scored on, from its metrics.json (None when it does not say)."""
    data = json.loads(Path(path).read_text()).get("data") or {}
    counts = (data.get("class_counts") or {}).get("valid")
    return int(sum(counts)) if counts else data.get("test_images")


def paired_bootstrap(differences: list[np.ndarray], resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """The 95 % interval of a gain in points from per-seed arrays of per-image differences (SD correct minus plain
    correct: -1, 0 or 1, on the same test images). Each resample draws the seeds with replacement and, within each
    drawn seed, its test images with replacement (the same images for both runs: paired), so the interval counts
    the seeds' spread and the test set's sampling alike."""
    rng = np.random.default_rng(seed)
    shares = [np.array([(d == -1).mean(), (d == 0).mean(), (d == 1).mean()]) for d in differences]
    sizes = [len(d) for d in differences]
    drawn = rng.integers(0, len(differences), size=(resamples, len(differences)))   # the seeds of each resample
    gains = np.zeros(resamples)
    for position in range(len(differences)):          # each drawn seed gets its own draw of test images
        for k, (p, n) in enumerate(zip(shares, sizes)):
            counts = rng.multinomial(n, p, size=resamples)     # images drawn with SD worse, the same, better
            gains += (drawn[:, position] == k) * (counts[:, 2] - counts[:, 0]) / n
    gains = 100 * gains / len(differences)
    low, high = np.percentile(gains, [2.5, 97.5])
    return float(low), float(high)


def _per_image(sd: pd.DataFrame, plain: pd.DataFrame, seeds) -> list[np.ndarray] | None:
    """Per seed, SD correct minus plain correct per test image, when both runs recorded their predictions on the
    same images; else None."""
    out = []
    for s in seeds:
        a, b = (load_test_predictions(Path(frame.loc[s, "path"]).parent) for frame in (sd, plain))
        if a is None or b is None or not np.array_equal(a["target"], b["target"]):
            return None
        out.append(a["correct"].astype(np.int8) - b["correct"].astype(np.int8))
    return out


def _gain_sentences(runs: pd.DataFrame) -> list[str]:
    out = []
    pairs = seed_pairs(runs)
    for method, plain, sd, seeds in pairs:   # an SD method run at several M: a sentence per M, each against the plain
        if not seeds:
            continue
        last = sd.loc[seeds, "last_top1"] - plain.loc[seeds, "last_top1"]
        best = sd.loc[seeds, "best_top1"] - plain.loc[seeds, "best_top1"]
        name, plain_name = method_name(f"sd_{method}"), method_name(method)
        if sum(other == method for other, *_ in pairs) > 1:
            name += f" at M={sd['scales'].iloc[0]}"
        images = _test_images(sd.loc[seeds[0], "path"])
        in_images = f" (about {last.mean() * images / 100:+.0f} of {images:,} test images)" if images else ""
        per_image = _per_image(sd, plain, seeds)
        if per_image is not None:
            low, high = paired_bootstrap(per_image)
            net = np.mean([d.sum() for d in per_image])
            in_images = (f" ({net:+.1f} of {len(per_image[0]):,} test images per seed; 95 % interval over seeds "
                         f"and test images {low:+.2f} to {high:+.2f})")
        spread = f" ± {last.std():.2f}" if len(seeds) > 1 else ""
        text = (f"**{name} − {plain_name}, last epoch: {last.mean():+.2f}{spread} points**{in_images} over "
                f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}, {name} ahead in {int((last > 0).sum())} of "
                f"{len(seeds)}; at the best epoch (picked on the test split itself) {best.mean():+.2f}.")
        if len(seeds) == 1:
            text += " One seed measures no spread: this gain cannot be told from noise yet; run more seeds."
        else:
            noise = NOISE_FACTOR * plain.loc[seeds, "last_top1"].std()
            verdict = ("larger than" if abs(last.mean()) >= noise else "within")
            text += (f" The plain method's last top-1 moves {plain.loc[seeds, 'last_top1'].std():.2f} points "
                     f"from seed to seed, so the gain is {verdict} the noise of the seeds "
                     f"({NOISE_FACTOR:g}× that: "
                     f"{noise:.2f})" + ("; add seeds before reading it." if verdict == "within" else "."))
        out.append(text)
    return out


def _teacher_sentence(runs: pd.DataFrame) -> str | None:
    teacher = runs.teacher_top1.dropna()
    if not len(teacher):
        return None
    students = runs[runs.variant != "teacher"].groupby("variant").last_top1.mean()
    above = [f"{method_name(v) if v != 'alone' else 'the student alone'} {t:.2f}" for v, t in students.items()
             if t >= teacher.mean()]
    if not above:
        return f"Every student ends below its teacher ({teacher.mean():.2f})."
    return (f"Students reach or pass their teacher ({teacher.mean():.2f}): {', '.join(above)} (last epoch, mean over "
            "seeds): the teacher is no ceiling on this data.")


def _figure_sentences(figures: Path) -> list[str]:
    out = []
    agreement = csv_path(figures / FIGURE_FILES["agreement"])
    if agreement.is_file():
        frame = pd.read_csv(agreement)
        finest = frame[frame.scale == frame.scale.max()].groupby("student").agreement.mean()
        if {"plain", "sd"} <= set(finest.index):
            out.append(f"Figure 5: on the finest grid the SD student's top-1 matches the teacher's in "
                       f"{finest['sd']:.0%} of the cells, the plain student's in {finest['plain']:.0%} (SD's loss "
                       "asks for this agreement, so it says the loss worked, not that the student is better).")
    correlation = csv_path(figures / FIGURE_FILES["correlation"])
    if correlation.is_file():
        distance = pd.read_csv(correlation).groupby("model").mean_abs_diff.first()
        sd = distance.filter(like="SD student")
        plain = distance.filter(like="plain-method")
        if len(sd) and len(plain):
            closer = "closer to" if sd.iloc[0] < plain.iloc[0] else "further from"
            out.append(f"Figure 7: the SD student's class correlations are {closer} the teacher's than the plain "
                       f"student's (mean |difference| {sd.iloc[0]:.3f} vs {plain.iloc[0]:.3f})"
                       + ("; this cuts against the idea that SD transfers more of the teacher's class structure."
                          if closer == "further from" else "."))
    contents = figures / CONTENTS_FILE
    if contents.is_file():
        frame = pd.read_csv(contents)
        if len(frame):
            shares = frame.covers.value_counts(normalize=True).reindex(list(COVERS), fill_value=0)
            low = (frame.prob < LOW_CONFIDENCE).mean()
            out.append(f"Of the teacher's {len(frame):,} complementary regions on the finer grids (figure sample), "
                       f"{shares['distractor digit']:.0%} lie on a distractor digit, {shares['target digit']:.0%} on "
                       f"the target digit and {shares['background']:.0%} on background; {low:.0%} have a top-1 "
                       f"probability under {LOW_CONFIDENCE:g}.")
    return out


def run_findings(runs: pd.DataFrame, sd_run_dir=None, *, figures: bool = True) -> str:
    """Markdown: what `runs` (`report.load_runs`, this notebook's runs of one teacher/student pair) and the figures
    of `sd_run_dir` show, each statement computed from them; `figures=False`: the SD gains alone."""
    lines = []
    if len(runs):
        lines += _gain_sentences(runs)
        teacher = _teacher_sentence(runs) if figures else None
        lines += [teacher] if teacher else []
    if figures and sd_run_dir is not None:
        lines += _figure_sentences(Path(sd_run_dir) / "figures")
    if not lines:
        return "No pair of plain and SD runs to compare yet."
    return "\n".join(f"- {line}" for line in lines)


def next_steps(sd_run_dir, *, seeds, own_data: bool = False, params_file=None) -> str:
    """Markdown: what to do next with a notebook's runs, with their paths: the explorer on the SD run, more seeds
    (rerun with `seeds`, or for a dataset notebook's single run, the sweep's plan of `params_file` over three seeds
    with its plain twin and student alone), the tuner, and (from the quickstart) your own images."""
    run = Path(sd_run_dir)
    more = sorted(set(seeds) | set(range(max(3, len(seeds) + 2))))[: max(3, len(seeds) + 2)]
    if params_file is None:
        seeds_step = (f"More seeds, while the gain is under about {NOISE_FACTOR:g}× the seed spread: rerun this "
                      f"notebook with `-p seeds \"{list(more)}\"`; the runs already complete are read, not trained "
                      "again.")
    else:
        seeds_step = (f"The whole row over three seeds — this run, its plain twin (M=[1]) and the student alone, each "
                      f"seed: `python -m sddlib.sweep {params_file} --seeds 0 1 2` (`--dry-run` lists the runs, "
                      "`--estimate` their cost on this device; docs/reproduce.md).")
    steps = [
        f"Explore this SD run region by region: `.venv/bin/papermill notebooks/explore.ipynb explore.ipynb -p run_dir "
        f"{run}` (or `viz.explore(\"{run}\")` in JupyterLab).",
        seeds_step,
        "Settings for your data, tuned on a validation split of the training images (never the test split): "
        "`python -m sddlib.tune` (docs/tune.md).",
    ]
    if own_data:
        steps.append("Your own images: `notebooks/your_data.ipynb` with `-p data_dir <folder of class folders>` "
                     "(docs/your-data.md).")
    return "\n".join(f"{k}. {step}" for k, step in enumerate(steps, 1))
