"""All figures of a run: written once by `save_run_figures` (PNG + CSV each, into the run's
`figures/`), shown in a notebook with their captions by `show_run_figures` — the one place the
captions are written."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch.nn as nn

from ..data import dataset_info
from ..regions import COMPLEMENTARY_WEIGHT
from .figures import (plot_agreement, plot_category_history, plot_category_shares, plot_per_class,
                      plot_region_logits, plot_region_map)
from .features import collect_features, plot_correlation, plot_tsne
from .frames import history_rows, region_contents_frame
from .predictions import FIGURE_SAMPLE_SEED, FIGURE_SAMPLE_SIZE, check_scales, collect_run_predictions
from .region_file import REGION_FILE, save_region_file
from .style import csv_path

__all__ = ["CONTENTS_FILE", "FIGURE_FILES", "FIGURE_CAPTIONS", "SAMPLE_FILE", "save_run_figures",
           "save_learner_figures",
           "show_run_figure", "show_run_figures"]

FIGURE_FILES = {
    "region_map": "fig1_region_map.png",
    "region_logits": "fig2_region_logits.png",
    "category_shares": "fig3a_category_shares.png",
    "category_history": "fig3b_category_history.png",
    "per_class": "fig4_per_class.png",
    "agreement": "fig5_agreement.png",
    "tsne": "fig6_tsne.png",
    "correlation": "fig7_correlation.png",
}
CONTENTS_FILE = "region_contents.csv"   # digit mosaics: what each complementary region lies on
SAMPLE_FILE = "sample.json"   # which test images the figures cover (figure 3b: the training batches instead)
FIGURE_CAPTIONS = {
    "region_map": "**Figure 1 — region map.** Each row is a test image and its region grids, every cell coloured "
                  "by the teacher's category there and labelled with the teacher's top-1 class and probability. "
                  "A region is *consistent* when its top-1 is right exactly when the global top-1 is right (both "
                  "right: sky blue; both wrong: black) and *complementary* otherwise (global right, region wrong: "
                  "vermillion, hatched /; global wrong, region right: yellow, hatched \\): the terms SDD weights "
                  "twice. Rows are not a random sample: the images with the most complementary cells of each kind, "
                  "alternating, then one image whose regions are all consistent, each labelled with why it was "
                  "picked; a row picked for 'global wrong, region right' cells is always a teacher error, so "
                  "errors are over-represented here (the teacher's accuracy is in the table above).",
    "region_logits": "**Figure 2 — region logits of one image.** Rows are regions, columns the classes with the "
                     "largest logits (target marked); teacher left, student right. Look at the target column: its "
                     "logit rises in some regions and falls in others — the global logit averages that away.",
    "category_shares": "**Figure 3a — category shares.** Over the test images, the share of regions per category "
                       "at each scale, teacher vs trained student. Finer scales have more complementary regions: "
                       "each sees less of the object.",
    "category_history": "**Figure 3b — category shares during training.** The teacher's categories on the "
                        "training batches of each epoch: how much of the distillation loss comes from "
                        "complementary regions as training goes (for a fixed teacher, the shares move only with "
                        "augmentation).",
    "per_class": "**Figure 4 — classes with the most complementary regions.** These are the classes whose images "
                 "most often contain regions that look like something else, or the one part that gives the class "
                 "away.",
    "agreement": "**Figure 5 — local agreement with the teacher.** For each cell of the finest grid, how often the "
                 "student's top-1 there equals the teacher's; plain-method student (left, when its run exists) vs "
                 "the SD student (right). SD's loss asks each region for exactly this agreement, so a higher map is "
                 "expected by construction: it shows that the loss did its work, not that the student is better.",
    "tsne": "**Figure 6 — t-SNE of the penultimate features.** The student of this run, the plain-method student "
            "(when its run exists) and the teacher, each embedded on its own from the same seeded, class-stratified "
            "sample of test images (its size in the title), coloured by class. Tighter, better separated clusters "
            "mean features a linear head can tell apart; compare the students with each other, not the axes.",
    "correlation": "**Figure 7 — correlation difference.** For each pair of classes, how far the student's "
                   "correlation of their logits over the test set is from the teacher's (|difference|; the DKD "
                   "paper's figure). Darker and a smaller mean: the student reproduces more of the teacher's "
                   "inter-class structure.",
}


def save_run_figures(teacher, student, dls, scales, distill_cb, out_dir, *, baseline_student=None,
                     max_items: int = FIGURE_SAMPLE_SIZE, seed: int = FIGURE_SAMPLE_SEED,
                     feature_figures: bool = True) -> list[Path]:
    """Collect region predictions once on `max_items` test images, a class-stratified sample of `dls.valid`
    drawn with `seed` (not the first images: test sets stored class by class would show a few classes), and
    write every figure into `out_dir` (created): `FIGURE_FILES` PNGs, each with its data as CSV beside it
    (with the sample's image and class counts), and `SAMPLE_FILE`; returns the PNG paths. Class names and
    normalisation come from `dls` (`sddlib.data.dataset_info`: `dls.info`, or what fastai's DataLoaders hold).

    `distill_cb` is the run's DistillationCallback (its history gives figure 3b; None skips it).
    `baseline_student` is the plain (M=[1]) student of the same configuration, compared with
    `student` in figure 5 on the finest grid of `scales`; None draws the SD student alone.
    `feature_figures` adds figures 6 and 7 (`sddlib.viz.features`: one more pass over the whole test set,
    and a t-SNE per model; off for sweeps that do not need them).
    """
    scales = check_scales(scales)
    if getattr(dls, "valid", None) is None:
        raise ValueError(f"dls must be a fastai DataLoaders with a valid loader, got {type(dls).__name__}.")
    if not isinstance(student, nn.Module):
        raise ValueError(f"student must be a torch.nn.Module, got {type(student).__name__}.")
    if not isinstance(out_dir, (str, Path)):
        raise ValueError(f"out_dir must be a folder path, got {type(out_dir).__name__}.")
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise ValueError(f"max_items must be a positive integer, got {max_items!r}.")
    history = history_rows(distill_cb) if distill_cb is not None else None
    info = dataset_info(dls)
    preds, plain = collect_run_predictions(teacher, student, dls.valid, scales, baseline_student=baseline_student,
                                           info=info, max_items=max_items, sample_seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn = {
        "region_map": lambda p: plot_region_map(preds, path=p),
        "region_logits": lambda p: plot_region_logits(preds, path=p),
        "category_shares": lambda p: plot_category_shares(preds, path=p),
        "category_history": (lambda p: plot_category_history(history, scales, path=p)) if history else None,
        "per_class": lambda p: plot_per_class(preds, path=p),
        "agreement": lambda p: plot_agreement(plain, preds, path=p),
    }
    sample = {"images": len(preds), "classes": int(preds.targets.unique().numel()), "num_classes": info.num_classes,
              "test_images": len(dls.valid.dataset) if hasattr(dls.valid, "dataset") else None, "seed": seed}
    (out / SAMPLE_FILE).write_text(json.dumps(sample, indent=1))
    save_region_file(preds, out / REGION_FILE, baseline=plain,   # what the explorer reads (sddlib.viz.explore)
                     complementary_weight=getattr(distill_cb, "complementary_weight", COMPLEMENTARY_WEIGHT))
    contents = region_contents_frame(preds)   # digit mosaics: what each complementary region covers
    if len(contents):
        contents.to_csv(out / CONTENTS_FILE, index=False)
    if feature_figures:
        feats = _features(teacher, student, baseline_student, scales, dls.valid, info)
        drawn["tsne"] = lambda p: plot_tsne(feats, path=p)
        drawn["correlation"] = lambda p: plot_correlation(feats, path=p)
    written = []
    for key, draw in drawn.items():
        if draw is not None:
            draw(out / FIGURE_FILES[key])
            written.append(out / FIGURE_FILES[key])
            if key not in ("category_history", "tsne", "correlation"):  # drawn from the sample: say so in their data
                frame = pd.read_csv(csv_path(out / FIGURE_FILES[key]), keep_default_na=False)
                frame.assign(sample_images=sample["images"], sample_classes=sample["classes"]).to_csv(
                    csv_path(out / FIGURE_FILES[key]), index=False)
    return written


def _features(teacher, student, baseline_student, scales, dl, info):
    """The run's models by what they are, for figures 6 and 7."""
    models = {"teacher": teacher}
    if scales == (1,):
        models["student (this run, plain method)"] = student
    else:
        models["SD student (this run)"] = student
        if baseline_student is not None:
            models["plain-method student"] = baseline_student
    return collect_features(models, dl, class_names=info.class_names)


def save_learner_figures(learn, out_dir, **kwargs) -> list[Path]:
    """`save_run_figures` for a Learner with a DistillationCallback (`sddlib.distill_learner`'s): its teacher,
    model, DataLoaders, scales and history."""
    from ..distill import DistillationCallback
    distill = next((cb for cb in learn.cbs if isinstance(cb, DistillationCallback)), None)
    if distill is None:
        raise ValueError("the Learner has no DistillationCallback; make it with sddlib.distill_learner, or call "
                         "save_run_figures(teacher, student, dls, scales, None, out_dir).")
    model = getattr(learn.model, "module", learn.model)
    return save_run_figures(distill.teacher, model, learn.dls, distill.scales, distill, out_dir, **kwargs)


def sample_sentence(run_dir) -> str | None:
    """'Drawn from 512 test images of 100 classes (a class-stratified sample of 10000, seed 0).' or None."""
    path = Path(run_dir) / "figures" / SAMPLE_FILE
    if not path.is_file():
        return None
    s = json.loads(path.read_text())
    whole = f" of {s['test_images']}" if s.get("test_images") else ""
    return (f"Figures 1, 2, 3a, 4 and 5 are drawn from {s['images']} test images covering {s['classes']} of the "
            f"{s['num_classes']} classes (a class-stratified sample{whole}, seed {s['seed']}); figure 3b from the "
            "training batches.")


def _check_key(key):
    if key not in FIGURE_FILES:
        raise ValueError(f"figure {key!r} is unknown; use one of {sorted(FIGURE_FILES)}.")


def show_run_figure(run_dir, key: str) -> None:
    """Display one figure that `save_run_figures` wrote for a run (in a notebook), or say it is missing."""
    from IPython.display import Image, display

    _check_key(key)
    path = Path(run_dir) / "figures" / FIGURE_FILES[key]
    display(Image(filename=str(path)) if path.exists() else f"(no {path.name}: this run did not draw it)")


def show_run_figures(run_dir, keys=tuple(FIGURE_FILES)) -> None:
    """Display a run's figures, each under its caption, and where their data (CSV) lies."""
    from IPython.display import Markdown, display

    sample = sample_sentence(run_dir)
    if sample:
        display(Markdown(sample))
    for key in keys:
        _check_key(key)
        display(Markdown(FIGURE_CAPTIONS[key]))
        show_run_figure(run_dir, key)
    folder = Path(run_dir) / "figures"
    display(Markdown(f"Each figure's data is a tidy table beside its picture in `{folder}`: "
                     f"`{csv_path(FIGURE_FILES[keys[0]]).name}` and so on, to re-plot or analyse."))
