"""The two figures every distillation paper of this family prints, for any run: a t-SNE of the penultimate
features (student, plain-method student and teacher side by side) and the difference between the teacher's
and a student's class-by-class correlation of logits (the DKD paper's figure).

    feats = collect_features({"teacher": t, "student": s}, dls.valid)     # one pass over the test set
    plot_tsne(feats, path="fig6_tsne.png")                                # + fig6_tsne.csv
    plot_correlation(feats, path="fig7_correlation.png")                  # + fig7_correlation.csv
    draw_tsne(pd.read_csv("fig6_tsne.csv"))                               # re-plot from a saved frame

Features are the pooled map the classifier reads (`forward_head(fmap, pre_logits=True)`, timm's interface).
The t-SNE runs scikit-learn's `TSNE` (Barnes-Hut, PCA initialisation, a fixed seed) on a seeded,
class-stratified sample (`TSNE_ITEMS` images by default); the correlations use every collected image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn as nn

from .predictions import _model_device, batches_at, evaluating, stratified_indices
from .style import new_figure, save_figure, short_name

__all__ = ["FeaturePredictions", "TSNE_ITEMS", "CORRELATION_CLASSES", "collect_features", "tsne_frame", "correlation_frame", "draw_tsne", "draw_correlation", "plot_tsne", "plot_correlation"]

TSNE_ITEMS = 500  # images in a t-SNE: 13.5 s for one embedding at 500, 23.8 s at 1,000 (2-core CPU, loaded)
CORRELATION_CLASSES = 100  # classes drawn in a correlation heatmap (the mean difference uses them all)


@dataclass
class FeaturePredictions:
    """Per model (by name, teacher first): penultimate features N x D and logits N x K, on the same images."""
    targets: torch.Tensor
    class_names: list
    features: dict
    logits: dict


def collect_features(models: dict, dl, *, class_names=None, positions=None, device=None) -> FeaturePredictions:
    """One pass over `dl` (the images at `positions`, sorted loader positions; None: all) in eval mode under
    inference_mode; the models' modes and devices are restored after."""
    if not models or not all(isinstance(m, nn.Module) for m in models.values()):
        raise ValueError("models must be a non-empty {name: torch.nn.Module} mapping.")
    device = torch.device(device) if device is not None else _model_device(next(iter(models.values())))
    feats, logits, ys = {n: [] for n in models}, {n: [] for n in models}, []
    with evaluating(list(models.values()), device), torch.inference_mode():
        for x, y in batches_at(dl, positions):
            for name, m in models.items():
                fmap = m.forward_features(x.to(device))
                feats[name].append(m.forward_head(fmap, pre_logits=True).float().cpu())
                logits[name].append(m.forward_head(fmap).float().cpu())
            ys.append(y.cpu().long())
    if not ys:
        raise ValueError("the DataLoader yielded no images; pass a non-empty validation loader.")
    n_classes = next(iter(logits.values()))[0].shape[1]
    return FeaturePredictions(torch.cat(ys), list(class_names or [str(i) for i in range(n_classes)]),
                              {n: torch.cat(v) for n, v in feats.items()}, {n: torch.cat(v) for n, v in logits.items()})


def tsne_frame(feats: FeaturePredictions, *, n: int = TSNE_ITEMS, seed: int = 0) -> pd.DataFrame:
    """One row per (model, image): the image's index, class and its 2-D t-SNE position (one embedding per model,
    each of the same stratified sample)."""
    from sklearn.manifold import TSNE
    index = np.asarray(stratified_indices(feats.targets, n, seed))
    rows = []
    for model, values in feats.features.items():
        x = values[index].double().numpy()
        perplexity = min(30.0, (len(index) - 1) / 3)
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
        rows.append(pd.DataFrame({"model": model, "index": index, "target": feats.targets[index].numpy(),
                                  "x": xy[:, 0], "y": xy[:, 1]}))
    frame = pd.concat(rows, ignore_index=True)
    frame["class"] = [feats.class_names[t] for t in frame["target"]]
    frame["n_images"], frame["n_classes"] = len(index), len(np.unique(feats.targets[index].numpy()))
    return frame


def _correlation(logits: torch.Tensor) -> np.ndarray:
    """Class-by-class Pearson correlation of logits over the images (K x K; 0 where a logit is constant)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(np.corrcoef(logits.double().numpy(), rowvar=False))


def correlation_frame(feats: FeaturePredictions, *, teacher: str = "teacher",
                      classes: int = CORRELATION_CLASSES) -> pd.DataFrame:
    """|corr(teacher logits) - corr(student logits)| per pair of classes, for every model but the teacher:
    one row per (model, row class, column class) of the first `classes` classes, and each model's mean over all
    classes (`mean_abs_diff`)."""
    if teacher not in feats.logits:
        raise ValueError(f"teacher {teacher!r} is not among the models {sorted(feats.logits)}.")
    reference = _correlation(feats.logits[teacher])
    shown = min(classes, reference.shape[0])
    rows = []
    for model, logits in feats.logits.items():
        if model == teacher:
            continue
        diff = np.abs(reference - _correlation(logits))
        i, j = np.meshgrid(np.arange(shown), np.arange(shown), indexing="ij")
        rows.append(pd.DataFrame({"model": model, "row": i.ravel(), "column": j.ravel(),
                                  "abs_diff": diff[:shown, :shown].ravel(), "mean_abs_diff": diff.mean()}))
    if not rows:
        raise ValueError("the correlation difference needs a student besides the teacher.")
    frame = pd.concat(rows, ignore_index=True)
    frame["n_images"], frame["n_classes"], frame["classes_shown"] = len(feats.targets), reference.shape[0], shown
    return frame


def draw_tsne(frame: pd.DataFrame):
    """One scatter per model, points coloured by class (up to 20 distinct colours, cycled beyond)."""
    models = list(dict.fromkeys(frame["model"]))
    fig = new_figure(4.2 * len(models), 4.4)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    classes = sorted(set(frame["target"]))
    palette = sns.color_palette("tab10" if len(classes) <= 10 else "tab20", min(len(classes), 20))
    colours = {c: palette[k % len(palette)] for k, c in enumerate(classes)}
    for ax, model in zip(axes, models):
        part = frame[frame["model"] == model]
        ax.scatter(part["x"], part["y"], s=6, c=[colours[t] for t in part["target"]], linewidths=0)
        ax.set_title(short_name(model, 32))
        ax.set_xticks([]), ax.set_yticks([])
    if len(classes) <= 20:
        names = dict(zip(frame["target"], frame["class"]))
        handles = [ax.scatter([], [], s=12, color=colours[c], label=short_name(names[c], 14)) for c in classes]
        fig.legend(handles=handles, loc="outside right center", frameon=False, fontsize=7)
    fig.suptitle(f"t-SNE of the penultimate features: {frame['n_images'].iloc[0]} test images of "
                 f"{frame['n_classes'].iloc[0]} classes (stratified sample)", fontsize=9)
    return fig


def draw_correlation(frame: pd.DataFrame):
    """One heatmap per student of |corr(teacher) - corr(student)|, on a shared colour scale."""
    models = list(dict.fromkeys(frame["model"]))
    fig = new_figure(4.6 * len(models), 4.2)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    top = float(frame["abs_diff"].max()) or 1.0
    for ax, model in zip(axes, models):
        part = frame[frame["model"] == model]
        grid = part.pivot(index="row", columns="column", values="abs_diff")
        sns.heatmap(grid, ax=ax, vmin=0, vmax=top, cmap="viridis", square=True, xticklabels=False,
                    yticklabels=False, cbar=model == models[-1])
        ax.set_xlabel(""), ax.set_ylabel("")
        ax.set_title(f"{short_name(model, 28)}\nmean |difference| {part['mean_abs_diff'].iloc[0]:.3f}", fontsize=9)
    shown, total = frame["classes_shown"].iloc[0], frame["n_classes"].iloc[0]
    fig.suptitle(f"|teacher - student| class correlation of logits over {frame['n_images'].iloc[0]} test images"
                 + (f" (first {shown} of {total} classes drawn)" if shown < total else ""), fontsize=9)
    return fig


def plot_tsne(feats: FeaturePredictions, *, n: int = TSNE_ITEMS, seed: int = 0, path=None):
    frame = tsne_frame(feats, n=n, seed=seed)
    return save_figure(draw_tsne(frame), frame, path)


def plot_correlation(feats: FeaturePredictions, *, teacher: str = "teacher", path=None):
    frame = correlation_frame(feats, teacher=teacher)
    return save_figure(draw_correlation(frame), frame, path)
