"""Learning curves of a notebook's runs: test top-1 per epoch, one thin line per seed, a colour per method (the
student alone, the plain method, its SD version), each run's best epoch ringed and its last epoch a dot, so that a
reader sees how far "best" (chosen on the test split) sits from "last" and how much the seeds spread."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..report import method_name
from .style import new_figure, save_figure

__all__ = ["learning_curve_frame", "draw_learning_curves", "plot_learning_curves"]


def learning_curve_frame(run_dirs) -> pd.DataFrame:
    """One row per (run, epoch): run_name, method (its table name), seed, epoch, top1, best (the run's best epoch)
    and last (its final epoch), read from each run folder's metrics.json. `run_dirs`: run folders, or a
    `report.load_runs` frame (its runs' folders)."""
    if isinstance(run_dirs, pd.DataFrame):
        run_dirs = [Path(p).parent for p in run_dirs["path"]]
    rows = []
    for folder in run_dirs:
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise ValueError(f"{folder} holds no metrics.json: pass the folders of finished runs.")
        m = json.loads(path.read_text())
        history = [h for h in m.get("history", []) if h.get("top1") is not None]
        if not history:
            raise ValueError(f"{path} records no per-epoch test top-1 (its history is empty).")
        last = max(h["epoch"] for h in history)
        method = "Student alone" if m["variant"] == "alone" else method_name(m["variant"])
        rows += [dict(run_name=m["run_name"], method=method, seed=int(m["seed"]),
                      epoch=int(h["epoch"]), top1=float(h["top1"]), best=int(h["epoch"]) == int(m["best_epoch"]),
                      last=int(h["epoch"]) == last) for h in history]
    if not rows:
        raise ValueError("no run folders given.")
    return pd.DataFrame(rows)


def draw_learning_curves(frame: pd.DataFrame):
    """The figure of a `learning_curve_frame` (also one read back from its CSV)."""
    methods = list(dict.fromkeys(frame.method))
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods))))
    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    for (method, _), run in frame.groupby(["method", "run_name"], sort=False):
        run = run.sort_values("epoch")
        ax.plot(run.epoch, run.top1, color=palette[method], linewidth=0.9, alpha=0.8)
        best, last = run[run.best], run[run.last]
        ax.scatter(best.epoch, best.top1, s=46, facecolors="none", edgecolors=palette[method], linewidths=1.2,
                   zorder=3)
        ax.scatter(last.epoch, last.top1, s=14, color=palette[method], zorder=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    seeds = frame.seed.nunique()
    handles = [Line2D([], [], color=palette[m], linewidth=1.2, label=m) for m in methods]
    handles += [Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="0.3",
                       label="best epoch (picked on the test split)"),
                Line2D([], [], linestyle="none", marker="o", markersize=4, color="0.3", label="last epoch")]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    fig.suptitle(f"Test top-1 per epoch, one line per run ({seeds} seed{'s' if seeds > 1 else ''})", fontsize=10)
    return fig


def plot_learning_curves(run_dirs, *, path=None):
    """The learning curves of these run folders; with `path`, the PNG and its CSV beside it."""
    frame = learning_curve_frame(run_dirs)
    return save_figure(draw_learning_curves(frame), frame, path)
