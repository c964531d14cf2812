"""One run's results as a dataset notebook shows them, written once for every notebook: the run at a
glance beside the paper, the dataset's tables (`report.dataset_tables`: every run as published found, the SD gain
paired by seed, our rows, the others with their departures), and the per-epoch history."""
from __future__ import annotations

import pandas as pd

from . import report

__all__ = ["history_frame", "show_dataset_tables", "show_run_results"]

ACCURACY_TEXT = ("Best and last epoch of this run (top-1 / top-5, %; `protocol`: as published or what it changed), "
                 "and this configuration in the paper's table beside every run of it as published found under "
                 "`output_dir` (mean ± std over seeds). The literature reports the best epoch; the last is what a "
                 "run without test-set model selection gives.")
DEPARTURES_TEXT = ("Another schedule, a subset, a teacher trained here...: each run with what it changed as 'value "
                   "used (published value)'.")
HISTORY_TEXT = "The loss components and the teacher's region-category shares by epoch{which}:"
HISTORY_ROWS = 12   # a 240-epoch history is read in metrics.json (or plotted), not scrolled through in a notebook


def _stride(epochs: int, max_rows: int) -> int:
    return -(-epochs // (max_rows - 1))


def history_frame(metrics: dict, max_rows: int | None = None) -> pd.DataFrame:
    """A run's per-epoch rows (losses, top-1/top-5, lr, loss parts, category shares), indexed by epoch; with
    `max_rows`, every k-th epoch (the first and the last always) so that at most about that many are shown."""
    frame = pd.DataFrame(metrics["history"]).set_index("epoch").round(4)
    if max_rows is None or len(frame) <= max_rows:
        return frame
    step = _stride(len(frame), max_rows)
    keep = sorted({frame.index[0], *frame.index[step - 1::step], frame.index[-1]})
    return frame.loc[keep]


def show_dataset_tables(runs: pd.DataFrame, dataset: str) -> None:
    """Display every table of the dataset (`report.dataset_tables`: the numbers the results page and the Markdown
    tables show), each under its heading."""
    from IPython.display import Markdown, display
    for table in report.dataset_tables(runs, dataset):
        display(Markdown(f"**{table.title}**" + (f". {DEPARTURES_TEXT}" if table.key == "departures" else "")))
        display(table.shown)


def show_run_results(metrics: dict, output_dir=None) -> None:
    """Display the run summary, the dataset's table of the runs as published under `output_dir` (default:
    the run's own), the runs that are not with their departures, and the run's history, each under one
    sentence saying what it is."""
    from IPython.display import Markdown, display

    output_dir = metrics["params"]["output_dir"] if output_dir is None else output_dir
    display(Markdown(ACCURACY_TEXT))
    display(report.run_summary(metrics))
    show_dataset_tables(report.load_runs(output_dir), metrics["dataset"])
    shown = history_frame(metrics, HISTORY_ROWS)
    epochs = len(metrics["history"])
    which = "" if len(shown) == epochs else (f" ({len(shown)} of its {epochs} epochs: "
                                             f"{', '.join(map(str, shown.index[:3]))}, ..., {shown.index[-1]}; all of "
                                             "them in its metrics.json)")
    display(Markdown(HISTORY_TEXT.format(which=which)))
    display(shown)
