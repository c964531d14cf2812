"""The look every figure shares: the fixed Okabe-Ito colour of each region category, figure size and
resolution, and writing a figure with its data (PNG, and the tidy frame as CSV beside it)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..regions import CATEGORIES

__all__ = ["CATEGORIES", "CATEGORY_COLORS", "CATEGORY_LABELS", "DPI", "TEXT_ON", "category_handles", "csv_path",
           "new_figure", "save_figure", "scale_title", "short_name"]

DPI = 120
# Okabe-Ito: distinguishable with the common colour-vision deficiencies, fixed per category.
CATEGORY_COLORS = {
    "consistent_right": "#009E73",      # bluish green
    "consistent_wrong": "#D55E00",      # vermillion
    "complementary_gr_lw": "#E69F00",   # orange
    "complementary_gw_lr": "#0072B2",   # blue
}
CATEGORY_LABELS = {
    "consistent_right": "consistent: global right, region right",
    "consistent_wrong": "consistent: global wrong, region wrong",
    "complementary_gr_lw": "complementary: global right, region wrong",
    "complementary_gw_lr": "complementary: global wrong, region right",
}
TEXT_ON = {"consistent_right": "white", "consistent_wrong": "white", "complementary_gr_lw": "black",
           "complementary_gw_lr": "white"}


def new_figure(width, height) -> Figure:
    """A figure made without pyplot: nothing stays open in pyplot's registry, a notebook shows it once."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained", facecolor="white")


def category_handles(categories=CATEGORIES):
    return [Patch(facecolor=CATEGORY_COLORS[c], edgecolor="none", label=CATEGORY_LABELS[c]) for c in categories]


def short_name(name: str, width: int) -> str:
    name = str(name).replace("_", " ")
    return name if len(name) <= width else name[: width - 1] + "…"


def scale_title(s: int) -> str:
    return f"{s}x{s} regions" if s > 1 else "1x1 (global)"


def csv_path(png_path) -> Path:
    """Where a figure's data lies: the PNG's name with .csv (fig1_region_map.png -> fig1_region_map.csv)."""
    return Path(png_path).with_suffix(".csv")


def save_figure(fig: Figure, frame: pd.DataFrame, path) -> Figure:
    """Write the figure as PNG at `path` and its tidy frame as CSV beside it (nothing when path is None)."""
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    frame.to_csv(csv_path(path), index=False)
    return fig
