"""The look every figure shares: the fixed Okabe-Ito colour of each region category, figure size and
resolution, and writing a figure with its data (PNG, and the tidy frame as CSV beside it)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import pandas as pd
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..checkpoints import atomic_write
from ..regions import CATEGORIES

__all__ = ["CATEGORIES", "CATEGORY_COLORS", "CATEGORY_DEFINITION", "CATEGORY_HATCHES", "CATEGORY_LABELS", "DPI",
           "NotebookFigure", "OVERLAY_ALPHA", "TEXT_ON", "category_handles", "category_patches", "csv_path",
           "new_figure", "save_figure", "scale_title", "short_name"]

DPI = 120
# Okabe-Ito colours chosen so that the four stay apart as overlays on the grey image (OVERLAY_ALPHA, any grey) for
# normal vision and simulated protan, deutan and tritan vision (tests/test_viz.py measures it): the earlier
# vermillion/orange pair for "both wrong" and "global right, region wrong" was hard to tell apart. The two
# complementary kinds are also hatched, a cue that needs no colour at all.
CATEGORY_COLORS = {
    "consistent_right": "#56B4E9",      # sky blue
    "consistent_wrong": "#000000",      # black
    "complementary_gr_lw": "#D55E00",   # vermillion
    "complementary_gw_lr": "#F0E442",   # yellow
}
CATEGORY_HATCHES = {"consistent_right": "", "consistent_wrong": "", "complementary_gr_lw": "///",
                    "complementary_gw_lr": "\\\\\\"}
OVERLAY_ALPHA = 0.75   # a category colour over the image's grey
CATEGORY_LABELS = {
    "consistent_right": "consistent: global right, region right",
    "consistent_wrong": "consistent: global wrong, region wrong",
    "complementary_gr_lw": "complementary: global right, region wrong",
    "complementary_gw_lr": "complementary: global wrong, region right",
}
# "right"/"wrong": the top-1 class against the image's target class. The paper speaks of regions whose prediction
# is consistent with, or complementary to, the global one; the authors' code (and this one) decides it by
# correctness: a region is consistent when it is right exactly when the global prediction is right.
CATEGORY_DEFINITION = ("consistent: the region's top-1 is right exactly when the global top-1 is right (both right "
                       "or both wrong, against the target class); complementary: one right and the other wrong")
TEXT_ON = {"consistent_right": "black", "consistent_wrong": "white", "complementary_gr_lw": "white",
           "complementary_gw_lr": "black"}


class NotebookFigure(Figure):
    """A figure made without pyplot (nothing stays open in pyplot's registry) that a notebook shows as a picture
    wherever it runs: a headless kernel (papermill) has no display formatter for such a figure and would print
    '<Figure size ... with N Axes>' in its place."""

    def _repr_mimebundle_(self, include=None, exclude=None):
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=DPI, facecolor="white")
        title = self._suptitle.get_text().split("\n")[0] if self._suptitle is not None else ""
        return {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
                "text/plain": f"(figure{': ' + title if title else ''})"}


def new_figure(width, height) -> Figure:
    """A figure made without pyplot that a notebook shows once, as a picture (`NotebookFigure`)."""
    return NotebookFigure(figsize=(width, height), dpi=DPI, layout="constrained", facecolor="white")


def category_handles(categories=CATEGORIES):
    return [Patch(facecolor=CATEGORY_COLORS[c], edgecolor="0.35", linewidth=0.5, hatch=CATEGORY_HATCHES[c],
                  label=CATEGORY_LABELS[c]) for c in categories]


def category_patches(category: str, x, y, width, height) -> list[Rectangle]:
    """A region cell over an image: its category's colour (OVERLAY_ALPHA) with a white grid line, and the
    category's hatch drawn in a dark grey that shows on every colour."""
    fill = Rectangle((x, y), width, height, facecolor=to_rgba(CATEGORY_COLORS[category], OVERLAY_ALPHA),
                     edgecolor="white", linewidth=1.0)
    hatch = Rectangle((x, y), width, height, fill=False, edgecolor=(0, 0, 0, 0.45), linewidth=0,
                      hatch=CATEGORY_HATCHES[category])
    return [fill, hatch] if CATEGORY_HATCHES[category] else [fill]


def short_name(name: str, width: int) -> str:
    name = str(name).replace("_", " ")
    return name if len(name) <= width else name[: width - 1] + "…"


def scale_title(s: int) -> str:
    return f"{s}x{s} regions" if s > 1 else "1x1 (global)"


def csv_path(png_path) -> Path:
    """Where a figure's data lies: the PNG's name with .csv (fig1_region_map.png -> fig1_region_map.csv)."""
    return Path(png_path).with_suffix(".csv")


def save_figure(fig: Figure, frame: pd.DataFrame, path) -> Figure:
    """Write the figure at `path` (PNG, or the format its suffix names) and its tidy frame as CSV beside it (nothing
    when path is None), each whole or not at all, as a run's other files (`atomic_write`: a full disk keeps the
    previous one)."""
    if path is None:
        return fig
    path = Path(path)
    image = io.BytesIO()
    fig.savefig(image, format=path.suffix[1:] or "png", dpi=DPI, facecolor="white")
    atomic_write(path, image.getvalue())
    atomic_write(csv_path(path), frame.to_csv(index=False).encode())
    return fig
