"""A live view over a finished run's regions, in JupyterLab's widgets (ipywidgets 8): pick a test image (by
index, by class, or from a ranked list), a scale, teacher / student / both and the class whose logit is shown;
the image with its region grid coloured by the teacher's categories, every region's top-k classes, the logit
heatmap and a summary of the run update in place. It reads the run's saved region predictions only
(`sddlib.viz.region_file`): no model, no GPU, no data set.

    from sddlib.viz import explore
    explore("outputs/quickstart/digit_mosaic/resnet14-resnet8-sd_kd-M124-seed0")   # the last line of a cell

Headless (papermill, a script) the same call shows a static snapshot of the default view instead.
"""
from __future__ import annotations

import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

from ..regions import CATEGORIES, complementary
from .region_file import RegionFile, region_predictions
from .style import CATEGORY_COLORS, CATEGORY_LABELS, DPI, OVERLAY_ALPHA

__all__ = ["explore", "Explorer", "RANKINGS"]

RANKINGS = {
    "index": "all images, in test-set order",
    "complementary": "most complementary regions first",
    "teacher_only": "teacher right, student wrong",
    "sd_only": "plain-method student wrong, SD student right",
}
_NAMES = {"teacher": "teacher", "student": "student", "baseline": "plain-method student"}
_CLASS_SHOWN = {"target": "the target's logit", "top1": "each region's own top-1 logit"}


def explore(run_dir) -> Explorer:
    """The explorer of a finished distillation run (its `figures/region_predictions.npz`, made from its saved
    models when an older run has none)."""
    return Explorer(region_predictions(run_dir), Path(run_dir).name)


_STYLE = ("<style>table.sdd-explorer {border-collapse: collapse; font-size: 12px; margin: 4px 0}"
          "table.sdd-explorer th, table.sdd-explorer td {padding: 2px 8px; text-align: left; "
          "border-bottom: 1px solid #ddd}</style>")


def _figure(width, height):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=DPI, facecolor="white")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


class Explorer:
    """The app (`widget`) and what its views hold now, for tests and scripts: `images` (the selectable image
    indices), `index`, `cell_colors`, `heatmap_values`, `region_rows`, `summary_frame`."""

    def __init__(self, data: RegionFile, title: str = ""):
        import ipywidgets as w
        self.data, self.title = data, title
        student = "student" in data.models
        self.ranking = w.Dropdown(options=[(text, key) for key, text in RANKINGS.items()
                                           if key == "index" or (key == "complementary")
                                           or (key == "teacher_only" and student)
                                           or (key == "sd_only" and "baseline" in data.models)],
                                  value="index", description="images")
        self.class_filter = w.Dropdown(options=[("all classes", -1)] + [(n, i) for i, n in enumerate(data.class_names)
                                                                       if (data.targets == i).any()],
                                       value=-1, description="class")
        self.position = w.IntSlider(min=0, max=len(data) - 1, value=0, description="image", continuous_update=False)
        self.scale = w.ToggleButtons(options=[(f"{s}×{s}", s) for s in data.scales], value=data.scales[-1],
                                     description="scale")
        self.model = w.ToggleButtons(options=["teacher", *(["student", "both"] if student else [])],
                                     value="teacher", description="show")
        self.shown_class = w.ToggleButtons(options=[(text, key) for key, text in _CLASS_SHOWN.items()],
                                           value="target", description="logit of")
        self.caption = w.HTML()
        self.picture, self.heatmap = w.Image(format="png"), w.Image(format="png")
        self.regions, self.summary = w.HTML(), w.HTML()
        # each change redraws only the views it changes
        for control in (self.ranking, self.class_filter):
            control.observe(self._select, names="value")
        for control in (self.position, self.scale, self.model):
            control.observe(self._redraw, names="value")
        self.shown_class.observe(self._redraw_heatmap, names="value")
        self.widget = w.VBox([
            w.HTML(f"<b>Regions of {html.escape(title)}</b>: {len(data)} test images, scales "
                   f"{', '.join(f'{s}×{s}' for s in data.scales)}; colours are the teacher's categories."),
            w.HBox([self.ranking, self.class_filter]), self.position, w.HBox([self.scale, self.model]),
            self.shown_class, self.caption, w.HBox([self.picture, self.heatmap]), self.regions, self.summary])
        self._select()

    # --- which images ---------------------------------------------------------------------------------
    def _global_right(self, model: str) -> np.ndarray:
        return self.data.topk_classes[model][:, 0, 0] == self.data.targets

    def _ranked(self) -> np.ndarray:
        d, key = self.data, self.ranking.value
        order = np.arange(len(d))
        if key == "complementary":
            order = np.argsort(-complementary(d.categories).sum(1), kind="stable")
        elif key == "teacher_only":
            order = order[self._global_right("teacher") & ~self._global_right("student")]
        elif key == "sd_only":
            order = order[~self._global_right("baseline") & self._global_right("student")]
        if self.class_filter.value >= 0:
            order = order[d.targets[order] == self.class_filter.value]
        return order

    def _select(self, *_):
        self.images = self._ranked()
        self.position.unobserve(self._redraw, names="value")
        self.position.max = max(len(self.images) - 1, 0)
        self.position.value = 0
        self.position.observe(self._redraw, names="value")
        self._redraw()
        self._summarise()

    # --- what is shown --------------------------------------------------------------------------------
    def _regions_of(self, s: int) -> np.ndarray:
        first = sum(t * t for t in self.data.scales if t < s)
        return np.arange(first, first + s * s)

    def _shown_models(self) -> list[str]:
        return ["teacher", "student"] if self.model.value == "both" else [self.model.value]

    def _redraw(self, *_):
        if not len(self.images):
            self.index = None
            self.caption.value = "<i>No test image matches this choice.</i>"
            self.picture.value = self.heatmap.value = b""
            self.cell_colors, self.heatmap_values, self.region_rows = [], {}, pd.DataFrame()
            self.regions.value = ""
            return
        d, s = self.data, self.scale.value
        i = self.index = int(self.images[self.position.value])
        regions = self._regions_of(s)
        cats = d.categories[i, regions]
        self.cell_colors = [CATEGORY_COLORS[CATEGORIES[c]] for c in cats]
        target = d.class_names[d.targets[i]]
        verdicts = ", ".join(f"{_NAMES[m]} global top-1 {d.class_names[d.topk_classes[m][i, 0, 0]]}" for m in d.models)
        self.caption.value = (f"Image {i} ({self.position.value + 1} of {len(self.images)} listed): target "
                              f"<b>{html.escape(target)}</b>; {html.escape(verdicts)}.")
        self.picture.value = _png(self._draw_picture(i, s, regions))
        self._redraw_heatmap()
        self.region_rows = self._region_rows(i, regions)
        self.regions.value = _STYLE + self.region_rows.to_html(index=False, escape=True, border=0,
                                                                classes="sdd-explorer")

    def _redraw_heatmap(self, *_):
        if self.index is None:
            return
        d, s = self.data, self.scale.value
        regions = self._regions_of(s)
        key = "target_logit" if self.shown_class.value == "target" else "top1_logit"
        self.heatmap_values = {m: getattr(d, key)[m][self.index, regions].reshape(s, s) for m in self._shown_models()}
        self.heatmap.value = _png(self._draw_heatmap())

    def _draw_picture(self, i: int, s: int, regions: np.ndarray):
        d = self.data
        fig = _figure(3.2, 3.2)
        ax = fig.add_axes((0.02, 0.02, 0.96, 0.88))
        image = d.images[i]
        h, w = image.shape[:2]
        ax.imshow(image, extent=(0, w, h, 0))
        model = self._shown_models()[-1] if self.model.value != "teacher" else "teacher"
        for k, (region, colour) in enumerate(zip(regions, self.cell_colors)):
            r, c = divmod(k, s)
            x0, y0 = c * w / s, r * h / s
            ax.add_patch(_rectangle(x0, y0, w / s, h / s, colour))
            label = d.class_names[d.topk_classes[model][i, region, 0]]
            ax.text(x0 + w / (2 * s), y0 + h / (2 * s), label[:10], ha="center", va="center", fontsize=max(5, 11 - s),
                    color="white", fontweight="bold")
        ax.set_xlim(0, w), ax.set_ylim(h, 0), ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"{s}×{s}: {model}'s top-1 per region", fontsize=8)
        return fig

    def _draw_heatmap(self):
        import seaborn as sns
        models = list(self.heatmap_values)
        fig = _figure(2.8 * len(models), 3.2)
        axes = fig.subplots(1, len(models), squeeze=False, gridspec_kw={"left": 0.05, "right": 0.95, "top": 0.88,
                                                                          "bottom": 0.03, "wspace": 0.1})[0]
        for ax, model in zip(axes, models):
            values = self.heatmap_values[model]
            sns.heatmap(values, ax=ax, annot=values.shape[0] <= 4, fmt=".1f", cmap="magma", square=True,
                        xticklabels=False, yticklabels=False, cbar=False)
            ax.set_title(f"{model}: {_CLASS_SHOWN[self.shown_class.value]}", fontsize=8)
        return fig

    def _region_rows(self, i: int, regions: np.ndarray) -> pd.DataFrame:
        d, s = self.data, self.scale.value
        rows = []
        for k, region in enumerate(regions):
            row = {"region": "global" if s == 1 else f"row {k // s + 1}, col {k % s + 1}",
                   "category": CATEGORY_LABELS[CATEGORIES[d.categories[i, region]]],
                   "SD loss weight": float(d.weights[i, region])}
            for model in self._shown_models():
                row[f"{model} top-{d.topk_classes[model].shape[2]}"] = ", ".join(
                    f"{d.class_names[c]} {p:.2f}" for c, p in zip(d.topk_classes[model][i, region],
                                                                  d.topk_probs[model][i, region]))
            rows.append(row)
        return pd.DataFrame(rows)

    def _summarise(self):
        """Category shares per scale over the listed images, and how often the student's region top-1 equals the
        teacher's in each category (the numbers behind figures 3a and 5)."""
        d, listed, rows = self.data, self.images, []
        for s in d.scales:
            regions = self._regions_of(s)
            cats = d.categories[np.ix_(listed, regions)] if len(listed) else np.zeros((0, len(regions)), int)
            for c, name in enumerate(CATEGORIES):
                mask = cats == c
                row = {"scale": f"{s}×{s}", "category": name, "share": mask.mean() if mask.size else np.nan}
                if "student" in d.models and mask.any():
                    same = (d.topk_classes["student"][np.ix_(listed, regions)][..., 0]
                            == d.topk_classes["teacher"][np.ix_(listed, regions)][..., 0])
                    row["student top-1 = teacher's"] = same[mask].mean()
                rows.append(row)
        self.summary_frame = pd.DataFrame(rows)
        shown = self.summary_frame.pivot(index="category", columns="scale").reindex(list(CATEGORIES))
        shown.columns = [f"{what} ({scale})" for what, scale in shown.columns]
        self.summary.value = (_STYLE + f"<b>Over the {len(listed)} listed images</b>: the teacher's category shares "
                              "per scale, and how often the student's region top-1 equals the teacher's there"
                              + shown.to_html(float_format=lambda x: "–" if np.isnan(x) else f"{x:.1%}", border=0,
                                              classes="sdd-explorer", na_rep="–"))

    # --- display ------------------------------------------------------------------------------------------
    def _ipython_display_(self):
        from IPython.display import display

        from ..console import live_notebook
        display(self.widget) if live_notebook() else self.snapshot()

    def snapshot(self) -> None:
        """The current view as plain outputs (pictures and tables) that an executed notebook keeps: what a
        notebook run headless (papermill) shows instead of the widgets."""
        from IPython.display import HTML, Image, display
        display(HTML(self.caption.value))
        if self.picture.value:
            display(Image(data=self.picture.value), Image(data=self.heatmap.value))
        display(HTML(self.regions.value), HTML(self.summary.value))


def _rectangle(x, y, width, height, colour):
    from matplotlib.patches import Rectangle
    return Rectangle((x, y), width, height, facecolor=colour, alpha=OVERLAY_ALPHA, edgecolor="white", linewidth=1)
