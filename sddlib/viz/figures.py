"""The six figures, each drawn from its tidy frame (`sddlib.viz.frames`) with seaborn where seaborn
draws it (annotated heatmaps, stacked bars, lines) and matplotlib for the images of figure 1.

`draw_*(frame)` draws a frame, also one read back from its CSV; `plot_*(preds, ..., path=)` computes
the frame from `RegionPredictions`, draws it and, given `path`, writes the PNG and the CSV beside it.
Every function returns a `matplotlib.figure.Figure` made without pyplot.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import patheffects
from matplotlib.colors import ListedColormap, to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter

from .frames import (agreement_frame, category_history_frame, category_shares_frame, per_class_frame,
                     region_logits_frame, region_map_frame)
from .predictions import check_scales
from .style import (CATEGORIES, CATEGORY_COLORS, CATEGORY_DEFINITION, TEXT_ON, category_handles, category_patches,
                    new_figure, save_figure, scale_title, short_name)

__all__ = ["plot_region_map", "plot_region_logits", "plot_category_shares", "plot_category_history",
           "plot_per_class", "plot_agreement", "draw_region_map", "draw_region_logits", "draw_category_shares",
           "draw_category_history", "draw_per_class", "draw_agreement"]

_OUTLINE = [patheffects.withStroke(linewidth=1.8, foreground="black")]
_THIN_OUTLINE = [patheffects.withStroke(linewidth=1.2, foreground="black")]


def _percent(value, _position=None) -> str:
    return f"{value:.0%}"


def _check_path(path):
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a file name (str or Path) or None, got {type(path).__name__}.")


# --------------------------------------------------------------------------------------------------
# figure 1: region map


def _draw_layout(ax, layout: dict):
    boxes = [(layout.get("target_box"), "-")] + [(d.get("box"), "--") for d in layout.get("distractors", [])]
    for box, style in boxes:
        if box is None or min(box) < 0:
            continue
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white",
                               linestyle=style, linewidth=1.0, path_effects=_OUTLINE))


def draw_region_map(frame: pd.DataFrame, images, layouts=None):
    """Per row an image and, per scale, the image (grey) under its region grid; each cell is coloured
    by its teacher category and labelled with the teacher's top-1 class and probability. `images` are
    indexed by the frame's `image` column (B x C x H x W in [0, 1]); `layouts` likewise (digit boxes)."""
    shown = frame.drop_duplicates("row").sort_values("row")
    scales = sorted(frame.scale.unique())
    rows, cols = len(shown), 1 + len(scales)
    fig = new_figure(max(2.25 * cols + 0.6, 7.5), 2.25 * rows + 1.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    font, width = {1: 8.5, 2: 7.5, 4: 6.5}, {1: 16, 2: 10, 4: 7}
    for r, (_, first) in enumerate(shown.iterrows()):
        img = np.asarray(images[int(first.image)].float().clamp(0, 1).permute(1, 2, 0))
        img = img[..., 0] if img.shape[-1] == 1 else img
        lum = img if img.ndim == 2 else img @ np.array([0.299, 0.587, 0.114], dtype=img.dtype)
        grey = 0.25 + 0.75 * lum   # luminance lifted towards white: category colours on top stay clear
        H, W = img.shape[:2]
        interp = "nearest" if max(H, W) <= 64 else "antialiased"
        for c, ax in enumerate(axes[r]):
            pic = img if c == 0 else grey
            ax.imshow(pic, extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation=interp,
                      cmap="gray" if pic.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(_row_label(frame[frame.row == first.row]), fontsize=7.5)
                if layouts is not None:
                    _draw_layout(ax, layouts[int(first.image)])
                if r == 0:
                    ax.set_title("image", fontsize=9)
                continue
            s = scales[c - 1]
            if r == 0:
                ax.set_title(scale_title(s), fontsize=9)
            cw, ch = W / s, H / s
            for cell in frame[(frame.row == first.row) & (frame.scale == s)].itertuples():
                for patch in category_patches(cell.category, cell.cell_col * cw - 0.5, cell.cell_row * ch - 0.5,
                                              cw, ch):
                    ax.add_patch(patch)
                ax.text((cell.cell_col + 0.5) * cw - 0.5, (cell.cell_row + 0.5) * ch - 0.5,
                        f"{short_name(cell.top1_name, width.get(s, 6))}\n{cell.prob:.0%}", ha="center",
                        va="center", fontsize=font.get(s, min(6.0, 26 / s)), color="white", linespacing=1.1,
                        fontweight="bold", path_effects=_OUTLINE if s < 4 else _THIN_OUTLINE)
            ax.set_xlim(-0.5, W - 0.5)
            ax.set_ylim(H - 0.5, -0.5)
    handles = category_handles()
    if layouts is not None:
        handles += [Line2D([], [], color="black", linestyle="-", label="target digit"),
                    Line2D([], [], color="black", linestyle="--", label="distractor digit")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("Teacher's top-1 class and probability per region, coloured by its category:\n"
                 + CATEGORY_DEFINITION.replace("; ", ";\n"), fontsize=9)
    return fig


_WHY = {"global right, local wrong": "picked: most 'global right,\nregion wrong' cells",
        "global wrong, local right": "picked: most 'global wrong,\nregion right' cells",
        "consistent": "picked: every region\nconsistent (contrast)", "chosen": "chosen by hand"}


def _row_label(cells: pd.DataFrame) -> str:
    """'#92 target 5, teacher right' and why the row was picked, from one row's cells of the frame."""
    first, whole = cells.iloc[0], cells[cells.scale == 1].iloc[0]
    verdict = "teacher right" if whole.top1 == first.target else f"teacher WRONG: {short_name(whole.top1_name, 10)}"
    return f"#{first.image} target {short_name(first.target_name, 12)}\n{verdict}\n{_WHY.get(first.kind, first.kind)}"


def plot_region_map(preds, n: int = 6, *, indices=None, path=None):
    """Figure 1 from `RegionPredictions`: `n` images chosen by `frames.pick_images`, or `indices`."""
    _check_path(path)
    frame = region_map_frame(preds, n, indices=indices)
    return save_figure(draw_region_map(frame, preds.images, preds.layouts), frame, path)


# --------------------------------------------------------------------------------------------------
# figure 2: region logits of one image


def draw_region_logits(frame: pd.DataFrame):
    """Region x class logits of one image, teacher and student side by side, target column first and
    outlined, each region's top-1 bold; the strip on the left gives each region's teacher category."""
    first = frame.iloc[0]
    teacher = frame[frame.model == "teacher"]
    regions = teacher.drop_duplicates("region").sort_values("region")
    columns = teacher.drop_duplicates("column").sort_values("column")
    N, C = len(regions), len(columns)
    models = list(dict.fromkeys(frame.model))
    fig = new_figure(1.4 + len(models) * (0.62 * C + 1.3), max(0.26 * N + 2.2, 4.2))
    gs = fig.add_gridspec(1, 1 + len(models), width_ratios=[0.35 / C] + [1.0] * len(models))
    strip = fig.add_subplot(gs[0, 0])
    ids = regions.category.map(CATEGORIES.index).to_numpy()[:, None]
    sns.heatmap(ids, ax=strip, cmap=ListedColormap([CATEGORY_COLORS[c] for c in CATEGORIES]), vmin=-0.5,
                vmax=len(CATEGORIES) - 0.5, cbar=False, xticklabels=False, yticklabels=list(regions.region_label))
    strip.tick_params(axis="y", labelsize=7, rotation=0)
    strip.set_ylabel("region (scale, row, col)", fontsize=8)
    strip.set_title("teacher\ncategory", fontsize=7)
    xt = [("★ " if c == first.target else "") + short_name(name, 14)
          for c, name in zip(columns["class"], columns.class_name)]
    grids = regions.region_label.str.split(" ").str[0].to_numpy()       # "1x1", "2x2", ...
    ends = np.flatnonzero(grids[1:] != grids[:-1]) + 1                  # where a scale's rows end
    for p, model in enumerate(models):
        ax = fig.add_subplot(gs[0, 1 + p])
        sub = frame[frame.model == model]
        values = sub.pivot(index="region", columns="column", values="logit").to_numpy()
        bold = sub.pivot(index="region", columns="column", values="is_top1").to_numpy().astype(bool)
        sns.heatmap(values, ax=ax, cmap="viridis", annot=True, fmt=".1f", annot_kws={"fontsize": 6.5},
                    cbar_kws={"label": "logit", "fraction": 0.06, "pad": 0.02}, xticklabels=xt, yticklabels=False)
        for text, is_top in zip(ax.texts, bold.ravel()):
            text.set_fontweight("bold" if is_top else "normal")
        ax.set_xticklabels(xt, rotation=40, ha="right", fontsize=7.5)
        ax.get_xticklabels()[0].set_fontweight("bold")
        ax.add_patch(Rectangle((0, 0), 1, N, fill=False, edgecolor="black", linewidth=3.2))
        ax.add_patch(Rectangle((0, 0), 1, N, fill=False, edgecolor="white", linewidth=1.4))
        for end in ends:
            ax.axhline(end, color="white", linewidth=1.5)
        ax.set_title(f"{model} logits", fontsize=9)
        ax.set_xlabel("class (★ = target)", fontsize=8)
        ax.set_ylabel("")
    fig.legend(handles=category_handles(), loc="outside lower center", ncol=2, fontsize=7.5, frameon=False)
    fig.suptitle(f"Region logits of image #{first.image} (target: {first.target_name}): the target's logit\n"
                 "rises in some regions and falls in others (bold = each region's top-1)", fontsize=10)
    return fig


def plot_region_logits(preds, index=None, *, k: int = 5, path=None):
    """Figure 2 from `RegionPredictions` (default image: the most complementary teacher regions)."""
    _check_path(path)
    frame = region_logits_frame(preds, index, k=k)
    return save_figure(draw_region_logits(frame), frame, path)


# --------------------------------------------------------------------------------------------------
# figure 3: category shares (evaluation set, and per training epoch)


def draw_category_shares(frame: pd.DataFrame):
    """Per scale a panel of stacked bars: the share of (image, region) pairs in each category, teacher
    vs trained student; above each bar its complementary share."""
    scales = sorted(frame.scale.unique())
    models = list(dict.fromkeys(frame.model))
    fig = new_figure(max(1.6 + 1.5 * len(scales) * len(models), 6.5), 4.8)
    axes = fig.subplots(1, len(scales), squeeze=False, sharey=True)[0]
    colour_of = {to_rgb(v): c for c, v in CATEGORY_COLORS.items()}
    for ax, s in zip(axes, scales):
        sub = frame[frame.scale == s]
        sns.histplot(sub, x="model", hue="category", weights="share", multiple="stack", discrete=True, shrink=0.8,
                     hue_order=CATEGORIES[::-1], palette=CATEGORY_COLORS, alpha=1, edgecolor="white", linewidth=0.5,
                     legend=False, ax=ax)
        for bar in ax.patches:
            h = bar.get_height()
            if h >= 0.05:
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + h / 2, f"{h:.0%}", ha="center",
                        va="center", fontsize=7.5, color=TEXT_ON[colour_of[to_rgb(bar.get_facecolor())]])
        for x, model in enumerate(dict.fromkeys(sub.model)):
            comp = sub[(sub.model == model) & sub.category.str.startswith("complementary")].share.sum()
            ax.text(x, 1.01, f"compl.\n{comp:.0%}", ha="center", va="bottom", fontsize=7.5)
        ax.set_title(scale_title(s), fontsize=9)
        ax.set_xlabel("")
        ax.set_ylim(0, 1.12)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.yaxis.set_major_formatter(_percent)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("share of regions")
    fig.legend(handles=category_handles(), loc="outside lower center", ncol=2, fontsize=7.5, frameon=False)
    n_images = frame[(frame.scale == 1) & (frame.model == models[0])]["count"].sum()
    fig.suptitle(f"Region categories over {n_images} test images, per scale\n"
                 "(1x1 is the global region, always consistent)", fontsize=10)
    return fig


def plot_category_shares(preds, *, path=None):
    """Figure 3a from `RegionPredictions` (the student's categories from its own predictions)."""
    _check_path(path)
    frame = category_shares_frame(preds)
    return save_figure(draw_category_shares(frame), frame, path)


def draw_category_history(frame: pd.DataFrame):
    """Per scale a panel of lines: the share of the teacher's regions in each category per training
    epoch; the dashed line is the total complementary share, the part of the SD loss weighted extra."""
    scales = sorted(frame.scale.unique())
    epochs = sorted(frame.epoch.unique())
    fig = new_figure(max(0.8 + 3.4 * len(scales), 6.5), 3.9)
    axes = fig.subplots(1, len(scales), squeeze=False, sharey=True)[0]
    for ax, s in zip(axes, scales):
        sub = frame[frame.scale == s]
        sns.lineplot(sub, x="epoch", y="share", hue="category", hue_order=CATEGORIES, palette=CATEGORY_COLORS,
                     marker="o", markersize=3.5, markeredgewidth=0, legend=False, ax=ax)
        total = sub[sub.category.str.startswith("complementary")].groupby("epoch", as_index=False).share.sum()
        sns.lineplot(total, x="epoch", y="share", color="black", linestyle="--", linewidth=1.2, ax=ax)
        ax.set_title(scale_title(s), fontsize=9)
        ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(_percent)
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("share of regions\n(training batches)")
    handles = category_handles() + [Line2D([], [], color="black", linestyle="--", label="complementary (total)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3 if len(scales) > 1 else 1, fontsize=7.5,
               frameon=False)
    fig.suptitle("Teacher region categories per training epoch", fontsize=10)
    return fig


def plot_category_history(history, scales, *, path=None):
    """Figure 3b from `DistillationCallback.history` (or `.stats_frame()`) of a run with `scales`."""
    check_scales(scales)
    _check_path(path)
    frame = category_history_frame(history, scales)
    return save_figure(draw_category_history(frame), frame, path)


# --------------------------------------------------------------------------------------------------
# figure 4: classes with the most complementary regions


def draw_per_class(frame: pd.DataFrame, scales=None):
    """Horizontal stacked bars: per class (most complementary regions first) its regions of each
    complementary kind over the class's test images, and how many images that is."""
    fig = new_figure(7.2, 1.9 + 0.3 * max(frame["class"].nunique(), 3))
    ax = fig.add_subplot()
    if frame.empty:
        where = f" at scales {list(scales)}" if scales is not None else ""
        ax.text(0.5, 0.5, f"no complementary regions{where}", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        kinds = list(CATEGORIES[2:])
        frame = frame.assign(label=frame.class_name.map(lambda n: short_name(n, 24)))
        sns.histplot(frame, y="label", hue="category", weights="regions", multiple="stack", discrete=True,
                     shrink=0.8, hue_order=kinds[::-1], palette=CATEGORY_COLORS, alpha=1, edgecolor="white",
                     linewidth=0.5, legend=False, ax=ax)
        totals = frame.groupby("rank", sort=True).agg(regions=("regions", "sum"), images=("images", "first"))
        for y, row in enumerate(totals.itertuples()):
            ax.text(row.regions, y, f"  {row.images} img", va="center", fontsize=7, color="0.3")
        ax.set_xlim(0, totals.regions.max() * 1.15)
        if not ax.yaxis_inverted():
            ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
        ax.set_ylabel("")
        ax.set_xlabel("complementary regions (over the class's test images)")
        ax.spines[["top", "right"]].set_visible(False)
        fig.legend(handles=category_handles(kinds), loc="outside lower center", ncol=1, fontsize=7.5, frameon=False)
    fig.suptitle("Classes whose images have the most complementary teacher regions", fontsize=10)
    return fig


def plot_per_class(preds, *, top: int = 15, path=None):
    """Figure 4 from `RegionPredictions`: the `top` classes with the most complementary regions."""
    _check_path(path)
    frame = per_class_frame(preds, top=top)
    return save_figure(draw_per_class(frame, preds.scales), frame, path)


# --------------------------------------------------------------------------------------------------
# figure 5: local agreement of student and teacher


def draw_agreement(frame: pd.DataFrame):
    """Per region of the finest grid, how often the student's top-1 equals the teacher's: the plain
    student (when there), the SD student, and their difference in percentage points."""
    s = int(frame.scale.max())
    students = list(dict.fromkeys(frame.student))
    grid = {st: frame[(frame.student == st) & (frame.scale == s)].pivot(index="row", columns="col",
                                                                         values="agreement").to_numpy()
            for st in students}
    glob = {st: float(frame[(frame.student == st) & (frame.scale == 1)].agreement.iloc[0]) for st in students}
    title = {"plain": "plain KD student (M=[1])", "sd": f"SD student (M={frame.M.iloc[0]})"}
    n_axes = len(students) + (1 if "plain" in students else 0)
    fig = new_figure(max(0.6 + 3.3 * n_axes, 7.5), 3.9)
    axes = fig.subplots(1, n_axes, squeeze=False)[0]
    fs = 9 if s <= 2 else 8
    for i, (ax, st) in enumerate(zip(axes, students)):
        last = i == len(students) - 1
        sns.heatmap(grid[st], ax=ax, cmap="cividis", vmin=0, vmax=1, annot=True, fmt=".0%", annot_kws={"fontsize": fs},
                    square=True, cbar=last, cbar_kws={"label": "top-1 agreement", "format": FuncFormatter(_percent),
                                                      "fraction": 0.05, "pad": 0.03})
        ax.set_title(f"{title[st]}\nglobal (1x1) agreement {glob[st]:.0%}", fontsize=8.5)
    if "plain" in students:
        diff = grid["sd"] - grid["plain"]
        lim = max(float(np.abs(diff).max()), 0.05)
        sns.heatmap(diff * 100, ax=axes[-1], cmap="PuOr", vmin=-100 * lim, vmax=100 * lim, annot=True, fmt="+.0f",
                    annot_kws={"fontsize": fs}, square=True,
                    cbar_kws={"label": "difference (points)", "fraction": 0.05, "pad": 0.03})
        axes[-1].set_title(f"SD minus plain\n(percentage points; global {100 * (glob['sd'] - glob['plain']):+.0f})",
                           fontsize=8.5)
    for ax in axes:
        ax.set_xticklabels([str(c) for c in range(s)], fontsize=8)
        ax.set_yticklabels([str(r) for r in range(s)], fontsize=8, rotation=0)
        ax.set_xlabel("region column")
        ax.set_ylabel("region row")
    fig.suptitle(f"How often student and teacher agree on each {s}x{s} region's top-1 class "
                 f"({frame.images.iloc[0]} test images)", fontsize=10)
    return fig


def plot_agreement(preds_plain, preds_sd, *, path=None):
    """Figure 5 from `RegionPredictions` of a plain (M=[1]) student and of the SD student on the same
    images and scales; `preds_plain=None` draws the SD panel only."""
    _check_path(path)
    frame = agreement_frame(preds_plain, preds_sd)
    return save_figure(draw_agreement(frame), frame, path)
