"""sddlib.run_results: the results section every dataset notebook shows, on a hand-written run."""
import json

import pandas as pd

from sddlib import run_results


def metrics(output_dir):
    history = [{"epoch": e, "train_loss": 2.0 / e, "valid_loss": 2.5 / e, "top1": t, "top5": 90.0, "lr": 0.05}
               for e, t in ((1, 70.123456), (2, 76.5))]
    return {"status": "complete", "run_name": "resnet32x4-ShuffleV1-sd_dkd-M124-seed0", "dataset": "cifar100",
            "teacher": "resnet32x4", "student": "ShuffleV1", "method": "dkd", "scales": [1, 2, 4], "sd": True,
            "variant": "sd_dkd", "seed": 0, "best_top1": 76.5, "best_top5": 90.0, "best_epoch": 2,
            "last_top1": 76.5, "last_top5": 90.0, "teacher_top1": 79.4, "teacher_top5": 95.0,
            "params": {"output_dir": str(output_dir), "epochs": 2, "subset": 0}, "history": history,
            "departures": {}}


def test_history_frame_is_indexed_by_epoch_and_rounded():
    frame = run_results.history_frame(metrics("out"))
    assert frame.index.tolist() == [1, 2] and frame.index.name == "epoch"
    assert frame.top1.tolist() == [70.1235, 76.5] and frame.train_loss.tolist() == [2.0, 1.0]


def test_a_long_history_is_shown_every_kth_epoch_with_the_first_and_the_last(tmp_path, monkeypatch):
    """240 epochs: 12 rows (1, 22, 44, ..., 220, 240), said in the sentence above them; nothing dropped from the run."""
    m = metrics(tmp_path)
    m["history"] = [{**m["history"][0], "epoch": e, "top1": float(e)} for e in range(1, 241)]
    texts, frames = show(m, tmp_path, monkeypatch)
    history = frames[-1]
    assert history.index.tolist() == [1, *range(22, 221, 22), 240] and history.top1.tolist()[-1] == 240.0
    assert texts[-1] == run_results.HISTORY_TEXT.format(
        which=" (12 of its 240 epochs: 1, 22, 44, ..., 240; all of them in its metrics.json)")


def show(m, output_dir, monkeypatch):
    """Write `m` as the run's metrics.json, show its results; the texts and the frames displayed."""
    (output_dir / "cifar100" / m["run_name"]).mkdir(parents=True)
    (output_dir / "cifar100" / m["run_name"] / "metrics.json").write_text(json.dumps(m))
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    run_results.show_run_results(m)
    return ([o.data for o in shown if not isinstance(o, pd.DataFrame)],
            [o for o in shown if isinstance(o, pd.DataFrame)])


def test_show_run_results_displays_summary_table_and_history(tmp_path, monkeypatch):
    m = metrics(tmp_path)
    texts, frames = show(m, tmp_path, monkeypatch)
    assert texts == [run_results.ACCURACY_TEXT, "**CIFAR-100: our runs vs the SDD paper**",
                     "**CIFAR-100: SD gain paired by seed (runs as published)**",
                     run_results.HISTORY_TEXT.format(which="")]
    summary, table, gains, history = frames
    assert gains["Missing"].tolist() == ["missing: DKD seed 0"]              # its baseline has not run
    assert summary.loc[m["run_name"], "best top-1"] == 76.5 and summary.loc[m["run_name"], "paper SD-DKD"] == 77.30
    ours = table[(table.Teacher == "resnet32x4") & (table.Student == "ShuffleV1") & (table.Method == "SD-DKD")]
    assert ours["Ours best top-1"].tolist() == ["76.50 (n=1)"]
    pd.testing.assert_frame_equal(history, run_results.history_frame(m))
    assert summary.loc[m["run_name"], "protocol"] == "as published"


def test_runs_not_as_published_are_shown_apart_with_their_departures(tmp_path, monkeypatch):
    m = {**metrics(tmp_path), "departures": {"epochs": [2, 240]}}
    texts, frames = show(m, tmp_path, monkeypatch)
    summary, table, others, _ = frames
    assert texts == [run_results.ACCURACY_TEXT, "**CIFAR-100: our runs vs the SDD paper**",
                     "**CIFAR-100: runs not as published (not in the table above)**. " + run_results.DEPARTURES_TEXT,
                     run_results.HISTORY_TEXT.format(which="")]
    assert summary.loc[m["run_name"], "protocol"] == "epochs 2 (240)"
    assert summary[["paper SD-DKD", "paper DKD"]].isna().all(axis=None)  # not the paper's experiment
    assert (table["Ours best top-1"] == "").all()                      # nothing beside the paper's numbers
    assert others[["Run", "Best top-1", "Departures"]].values.tolist() == [[m["run_name"], "76.50", "epochs 2 (240)"]]
