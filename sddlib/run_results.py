"""One run's results as a dataset notebook shows them, written once for every notebook: the run at a
glance beside the paper, the dataset's table with every run found, and the per-epoch history."""
from __future__ import annotations

import pandas as pd

from . import report

__all__ = ["history_frame", "show_run_results"]

ACCURACY_TEXT = ("Best and last epoch of this run (top-1 / top-5, %), and this configuration in the paper's table "
                 "beside every run of it found under `output_dir` (mean ± std over seeds). The literature reports "
                 "the best epoch; the last is what a run without test-set model selection gives.")
HISTORY_TEXT = "The loss components and the teacher's region-category shares per epoch:"


def history_frame(metrics: dict) -> pd.DataFrame:
    """A run's per-epoch rows (losses, top-1/top-5, lr, loss parts, category shares), indexed by epoch."""
    return pd.DataFrame(metrics["history"]).set_index("epoch").round(4)


def show_run_results(metrics: dict, output_dir=None) -> None:
    """Display the run summary, the dataset's table of all runs under `output_dir` (default: the
    run's own) and the run's history, each under one sentence saying what it is."""
    from IPython.display import Markdown, display

    output_dir = metrics["params"]["output_dir"] if output_dir is None else output_dir
    display(Markdown(ACCURACY_TEXT))
    display(report.run_summary(metrics))
    display(report.format_table(report.results_table(report.load_runs(output_dir), metrics["dataset"])))
    display(Markdown(HISTORY_TEXT))
    display(history_frame(metrics))
