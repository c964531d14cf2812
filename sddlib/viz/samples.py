"""A dataset before training: images per class in each split, and a grid of test images with their labels, as the
models see them (eval transform, normalisation undone). For a folder of your own images, to check that the classes
and the split are what you meant."""
from __future__ import annotations

import pandas as pd
import torch

from ..data.info import dataset_info, denormalize
from .style import new_figure, short_name

__all__ = ["class_counts", "plot_samples"]


def class_counts(dls) -> pd.DataFrame:
    """Images per class in the train and test (validation) splits, one row per class, in label order."""
    info = dataset_info(dls)
    counts = {}
    for split, dl in (("train", dls.train), ("test", dls.valid)):
        targets = torch.as_tensor(list(dl.dataset.targets), dtype=torch.long)
        counts[split] = torch.bincount(targets, minlength=info.num_classes).tolist()
    return pd.DataFrame({"class": info.class_names, **counts})


def plot_samples(dls, per_class: int = 2, max_classes: int = 12):
    """The first `per_class` test images of each of the first `max_classes` classes, titled with their label."""
    info = dataset_info(dls)
    ds = dls.valid.dataset
    classes = list(range(min(info.num_classes, max_classes)))
    picks = {c: [i for i, t in enumerate(ds.targets) if t == c][:per_class] for c in classes}
    per_row = min(len(classes), 6)                       # classes per row, `per_class` images each
    rows, cols = -(-len(classes) // per_row), per_row * per_class
    fig = new_figure(1.4 * cols, 1.5 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for k, (c, items) in enumerate(picks.items()):
        for j, i in enumerate(items):
            x, _ = ds[i]
            ax = axes[k * per_class + j]
            ax.imshow(denormalize(x, dls).permute(1, 2, 0).numpy())
            ax.set_title(short_name(info.class_names[c], 14), fontsize=8)
    return fig
