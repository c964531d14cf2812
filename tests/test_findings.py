"""What a notebook says after its runs: the learning curves, the findings computed from the runs and figures, the
next steps, what each complementary region covers, and where a run's lines go (sddlib.console)."""
import io
import json
from contextlib import redirect_stdout

import numpy as np
import pandas as pd
import pytest
import torch

from sddlib import console, viz
from sddlib.viz.frames import region_contents_frame
from sddlib.viz.predictions import RegionPredictions


def write_run(folder, variant, seed, top1s, best_epoch=None, teacher_top1=90.0, test_images=400):
    folder.mkdir(parents=True)
    history = [{"epoch": e + 1, "top1": t} for e, t in enumerate(top1s)]
    best = best_epoch or 1 + max(range(len(top1s)), key=top1s.__getitem__)
    m = {"status": "complete", "run_name": folder.name, "variant": variant, "seed": seed, "history": history,
         "best_epoch": best, "best_top1": top1s[best - 1], "last_top1": top1s[-1], "teacher_top1": teacher_top1,
         "data": {"class_counts": {"valid": [test_images // 2, test_images // 2]}}}
    (folder / "metrics.json").write_text(json.dumps(m))
    return folder


def runs_frame(rows):
    return pd.DataFrame([dict(variant=v, seed=s, best_top1=b, last_top1=l, teacher_top1=t, path=str(p))
                         for v, s, b, l, t, p in rows])


def test_learning_curves_mark_each_runs_best_and_last_epoch(tmp_path):
    runs = [write_run(tmp_path / "a-alone-seed0", "alone", 0, [50.0, 70.0, 65.0]),
            write_run(tmp_path / "kd-seed0", "kd", 0, [55.0, 60.0, 72.0]),
            write_run(tmp_path / "sdkd-seed1", "sd_kd", 1, [58.0, 80.0, 79.0])]
    fig = viz.plot_learning_curves(runs, path=tmp_path / "curves.png")
    frame = pd.read_csv(tmp_path / "curves.csv")
    assert (tmp_path / "curves.png").is_file()
    assert frame.groupby("run_name").epoch.apply(list).to_dict() == {r.name: [1, 2, 3] for r in runs}
    best = frame[frame.best].set_index("run_name").epoch.to_dict()
    assert best == {"a-alone-seed0": 2, "kd-seed0": 3, "sdkd-seed1": 2}                  # each run's best epoch
    assert frame[frame["last"]].epoch.tolist() == [3, 3, 3]
    assert set(frame.method) == {"Student alone", "KD", "SD-KD"}
    ax = fig.axes[0]
    rings = [tuple(c.get_offsets()[0]) for c in ax.collections if c.get_facecolors().size == 0]
    assert sorted(rings) == sorted([(2, 70.0), (3, 72.0), (2, 80.0)])                  # the best epochs ringed
    with pytest.raises(ValueError, match="no metrics.json"):
        viz.plot_learning_curves([tmp_path / "missing"])


def test_findings_are_computed_from_the_runs(tmp_path):
    rows = [("kd", s, 80 + s, 79.0 + s, 78.0, tmp_path / "m.json") for s in range(3)]
    rows += [("sd_kd", s, 81 + s, 80.0 + s + 0.1 * s, 78.0, tmp_path / "m.json") for s in range(3)]
    rows += [("alone", s, 70.0, 70.0, None, tmp_path / "m.json") for s in range(3)]
    (tmp_path / "m.json").write_text(json.dumps({"data": {"class_counts": {"valid": [1000, 1000]}}}))
    text = viz.run_findings(runs_frame(rows))
    gains = [1.0, 1.1, 1.2]                                     # SD-KD − KD per seed, last epoch
    assert "SD-KD − KD, last epoch: +1.10 ± 0.10 points" in text and "ahead in 3 of 3" in text
    assert "about +22 of 2,000 test images" in text                         # 1.10 % of 2,000
    assert "moves 1.00 points from seed to seed" in text and "within the noise of the seeds" in text   # 1.1 < 2.0
    assert "Students reach or pass their teacher (78.00): KD 80.00, SD-KD 81.10" in text
    assert "student alone" not in text.split("teacher (78.00)")[1]                   # 70 < 78: not listed
    assert sum(gains) / 3 == pytest.approx(1.1)
    one = viz.run_findings(runs_frame([r for r in rows if r[1] == 0]))
    assert "One seed measures no spread" in one


def test_findings_report_the_figures_facts_that_cut_against_sd(tmp_path):
    figures = tmp_path / "sd" / "figures"
    figures.mkdir(parents=True)
    pd.DataFrame({"student": ["plain", "plain", "sd", "sd"], "scale": [4, 4, 4, 4],
                  "agreement": [0.5, 0.7, 0.9, 0.7]}).to_csv(figures / "fig5_agreement.csv", index=False)
    pd.DataFrame({"model": ["SD student (this run)", "plain-method student", "teacher"],
                  "mean_abs_diff": [0.034, 0.026, 0.0]}).to_csv(figures / "fig7_correlation.csv", index=False)
    pd.DataFrame({"covers": ["distractor digit", "background", "background", "target digit"],
                  "prob": [0.9, 0.2, 0.25, 0.5]}).to_csv(figures / "region_contents.csv", index=False)
    text = viz.run_findings(runs_frame([]), tmp_path / "sd")
    assert "SD student's top-1 matches the teacher's in 80% of the cells, the plain student's in 60%" in text
    assert "further from the teacher's than the plain student's (mean |difference| 0.034 vs 0.026)" in text
    assert "cuts against" in text
    assert "4 complementary regions" in text and "25% lie on a distractor digit, 25% on the target digit and 50% " \
        "on background; 50% have a top-1 probability under 0.3" in text


def test_next_steps_name_this_runs_paths(tmp_path):
    text = viz.next_steps(tmp_path / "sd-run", seeds=[0], own_data=True)
    assert f"-p run_dir {tmp_path / 'sd-run'}" in text and '-p seeds "[0, 1, 2]"' in text
    assert "python -m sddlib.tune" in text and "your_data.ipynb" in text
    assert "your_data.ipynb" not in viz.next_steps(tmp_path, seeds=[0, 1, 2])
    row = viz.next_steps(tmp_path, seeds=[0], params_file="params/cifar100/vgg13-vgg8-sd_kd.yaml")
    assert "python -m sddlib.sweep params/cifar100/vgg13-vgg8-sd_kd.yaml --seeds 0 1 2" in row and "-p seeds" not in row


def test_region_contents_say_which_digit_a_complementary_region_lies_on():
    """A 16-px image: the target digit's box fills the top-left quarter, a distractor the top-right; the teacher
    is right globally and wrong in three 2x2 cells (complementary): on the distractor, on the target, and on
    the empty bottom-left; the bottom-right cell is right (consistent: not listed)."""
    logits = torch.zeros(1, 3, 5)                    # classes x regions: global, then the 2x2 cells row-major
    logits[0, 0, 0] = 5                              # global top-1: class 0, the target
    logits[0, 1, 1], logits[0, 2, 2], logits[0, 1, 3] = 5, 5, 0.1    # wrong in cells 1, 2, 3 (cell 3 unsure)
    logits[0, 0, 4] = 5                              # right in the bottom-right cell
    preds = RegionPredictions(images=torch.rand(1, 3, 16, 16), targets=torch.tensor([0]), teacher_regions=logits,
                              student_regions=None,
                              scales=(1, 2), class_names=["a", "b", "c"],
                              layouts=[{"target_box": [0, 0, 8, 8], "distractors": [{"box": [8, 0, 16, 8]}]}])
    frame = region_contents_frame(preds).set_index("region")
    assert frame.covers.to_dict() == {1: "target digit", 2: "distractor digit", 3: "background"}
    assert set(frame.category) == {"complementary_gr_lw"} and frame.loc[3, "prob"] < 0.4


def test_a_quiet_run_log_keeps_every_line_in_the_file_and_shows_only_what_is_said(tmp_path):
    shown = io.StringIO()
    with redirect_stdout(shown):
        with console.run_log(tmp_path, echo=False) as path:
            print("epoch 1/2 loss=1.0")
            console.say("resuming after epoch 1")
        print("summary line")
    assert path == tmp_path / console.LOG_FILE
    assert path.read_text() == "epoch 1/2 loss=1.0\nresuming after epoch 1\n"
    assert shown.getvalue() == "resuming after epoch 1\nsummary line\n"
    shown = io.StringIO()
    with redirect_stdout(shown), console.run_log(tmp_path, echo=True):
        print("epoch 2/2")
    assert shown.getvalue() == "epoch 2/2\n" and path.read_text().endswith("epoch 2/2\n")
    assert not console.notebook_kernel()          # a test process is no kernel, whatever it has imported
    import ipykernel  # noqa: F401
    assert not console.notebook_kernel()


def test_the_paired_bootstrap_counts_the_test_images_and_the_seeds():
    """One seed of 100 images where SD fixes 10 and breaks none: the gain is +10 points and the interval is about
    the binomial one (±6 points), not zero; three seeds whose gains disagree (+10, 0, −10) give an interval that
    spans zero; many images with equal gains in every seed give a narrow interval around that gain."""
    fixed = np.r_[np.ones(10), np.zeros(90)].astype(np.int8)
    low, high = viz.paired_bootstrap([fixed])
    assert 3 < low < 6 and 14 < high < 17
    low, high = viz.paired_bootstrap([fixed, np.zeros(100, np.int8), -fixed])
    assert low < -5 and high > 5
    wide = np.r_[np.ones(500), np.zeros(4500)].astype(np.int8)
    low, high = viz.paired_bootstrap([wide, wide, wide])
    assert 9 < low < 10 < high < 11


def test_findings_give_the_bootstrap_interval_from_the_runs_recorded_predictions(tmp_path):
    target = np.arange(200) % 4
    rows = []
    for s in range(2):
        for variant, right in (("kd", 150), ("sd_kd", 160 + s)):
            run = write_run(tmp_path / f"{variant}-{s}", variant, s, [50.0, 100 * right / 200], test_images=200)
            top1 = np.where(np.arange(200) < right, target, (target + 1) % 4)
            np.savez(run / "test_predictions.npz", top1=top1, target=target)
            rows.append((variant, s, 100 * right / 200, 100 * right / 200, 90.0, run / "metrics.json"))
    text = viz.run_findings(runs_frame(rows))
    assert "+10.5 of 200 test images per seed" in text and "95 % interval over seeds and test images" in text
