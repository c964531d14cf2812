"""sddlib.report and notebooks/results.ipynb on fake-but-schema-true metrics.json files."""
import json
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest

from sddlib import report

REPO = Path(__file__).resolve().parents[1]


def metrics(dataset="cifar100", teacher="resnet32x4", student="ShuffleV1", method="dkd", scales=(1, 2, 4),
            seed=0, best=77.0, last=76.5, teacher_top1=79.42, status="complete", departures=None,
            teacher_source=None, **params):
    """A metrics.json as `sddlib.experiment.run` writes it (as published unless `departures` say otherwise)."""
    scales = list(scales)
    variant = method if scales == [1] else f"sd_{method}"
    name = f"{teacher}-{student}-{variant}-M{''.join(map(str, scales))}-seed{seed}"
    return {"status": status, "run_name": name, "dataset": dataset, "teacher": teacher, "student": student,
            "method": method, "scales": scales, "sd": scales != [1], "variant": variant, "seed": seed,
            "best_top1": best, "best_top5": 95.0, "best_epoch": 230, "last_top1": last, "last_top5": 94.0,
            "teacher_top1": teacher_top1, "teacher_top5": 95.5,
            "params": {"dataset": dataset, "epochs": 240, "subset": 0, "seed": seed, "M": str(scales), **params},
            "history": [{"epoch": 1, "top1": last}], "wall_time_s": 12.5, "hardware": {}, "versions": {},
            "git_commit": None, "figures": [], "departures": {} if departures is None else departures,
            "teacher_source": teacher_source or {"source": "published", "path": f"teachers/{teacher}_best.pth"}}


def write(root: Path, m: dict | str, name=None) -> Path:
    path = root / (m["dataset"] if isinstance(m, dict) else "cifar100") / (name or m["run_name"]) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(m if isinstance(m, str) else json.dumps(m))
    return path


@pytest.fixture
def outputs(tmp_path):
    root = tmp_path / "outputs"
    write(root, metrics(method="dkd", scales=[1, 2, 4], seed=0, best=77.5, last=77.2))
    write(root, metrics(method="dkd", scales=[1, 2, 4], seed=1, best=77.9, last=77.6))
    write(root, metrics(method="dkd", scales=[1], seed=0, best=76.0, last=75.5))
    write(root, metrics(method="kd", scales=[1], seed=0, best=74.0, last=73.0, status="running"), "partial")
    write(root, '{"status": "complete", "best_top1": ', "corrupt")
    write(root, metrics(dataset="digit_mosaic", teacher="resnet20", student="resnet8", method="kd",
                        best=90.0, last=89.0, teacher_top1=95.0))
    return root


def test_load_runs_skips_partial_and_corrupt(outputs):
    with pytest.warns(report.SkippedRunWarning) as caught:
        runs = report.load_runs(outputs)
    assert len(runs) == 4
    assert {str(w.message).split(":")[0] for w in caught} == {
        f"skipping {outputs / 'cifar100' / 'partial' / 'metrics.json'}",
        f"skipping {outputs / 'cifar100' / 'corrupt' / 'metrics.json'}"}
    assert set(runs.variant) == {"sd_dkd", "dkd", "sd_kd"}
    assert set(runs.columns) >= {"dataset", "teacher", "student", "method", "variant", "sd", "scales", "seed",
                                 "best_top1", "last_top1", "best_top5", "last_top5", "teacher_top1",
                                 "wall_time_s", "path"}
    assert runs[runs.variant == "dkd"].scales.item() == "[1]"


def test_results_table_values(outputs):
    with pytest.warns(report.SkippedRunWarning):
        runs = report.load_runs(outputs)
    table = report.results_table(runs, "cifar100")
    assert list(dict.fromkeys(zip(table.teacher, table.student)))[:2] == [("resnet32x4", "ShuffleV1"),
                                                                         ("wrn_40_2", "ShuffleV1")]
    row = table.set_index(["teacher", "student", "method"]).loc
    sd = row["resnet32x4", "ShuffleV1", "sd_dkd"]
    assert sd.n_runs == 2 and sd.M == "[1,2,4]"
    assert sd.ours_best == pytest.approx(77.7) and sd.ours_best_std == pytest.approx(math.sqrt(0.08))
    assert sd.ours_last == pytest.approx(77.4)
    assert sd.paper == pytest.approx(77.30)
    assert sd.delta_vs_paper == pytest.approx(0.40)
    assert sd.sd_gain_ours == pytest.approx(1.70) and sd.sd_gain_paper == pytest.approx(77.30 - 76.45)
    base = row["resnet32x4", "ShuffleV1", "dkd"]
    assert base.n_runs == 1 and math.isnan(base.ours_best_std) and math.isnan(base.sd_gain_ours)
    teacher = row["resnet32x4", "ShuffleV1", "teacher"]
    assert teacher.paper == pytest.approx(79.42) and teacher.delta_vs_paper == pytest.approx(0.0)
    assert row["resnet32x4", "ShuffleV1", "student"].paper == pytest.approx(70.50)
    # no runs: the paper's value, ours empty
    empty = row["ResNet50", "vgg8", "sd_nkd"]
    assert empty.n_runs == 0 and math.isnan(empty.ours_best) and empty.paper == pytest.approx(74.62)
    assert empty.sd_gain_paper == pytest.approx(74.62 - 74.01)
    assert len(table[table.method.isin(report.METHODS)]) == 6 * 6

    text = report.format_table(table).set_index(["Teacher", "Student", "Method"]).loc
    assert text["resnet32x4", "ShuffleV1", "SD-DKD"]["Ours best top-1"] == "77.70 ± 0.28 (n=2)"
    assert text["resnet32x4", "ShuffleV1", "SD-DKD"]["Ours last top-1"] == "77.40 ± 0.28"
    assert text["resnet32x4", "ShuffleV1", "SD-DKD"]["Δ best − paper"] == "+0.40"
    assert text["resnet32x4", "ShuffleV1", "SD-DKD"]["SD gain (ours)"] == "+1.70"
    assert text["resnet32x4", "ShuffleV1", "DKD"]["Ours best top-1"] == "76.00 (n=1)"
    assert text["ResNet50", "vgg8", "SD-NKD"]["Ours best top-1"] == ""
    assert text["ResNet50", "vgg8", "SD-NKD"]["Paper top-1"] == "74.62"

    # a dataset the paper does not have: our rows only; ImageNet carries top-5
    mosaic = report.results_table(runs, "digit_mosaic")
    assert list(mosaic.method) == ["teacher", "sd_kd"] and mosaic.paper.isna().all()
    imagenet = report.results_table(runs, "imagenet")
    assert imagenet.set_index("method").loc["sd_dkd", "paper_top5"] == pytest.approx(91.09)
    assert report.results_table(runs.iloc[0:0], "cub200").shape[0] == 5 * 6


def check_tables(tables: Path):
    names = {p.name for p in tables.iterdir()}
    assert names == {f"{d}.{ext}" for d in ("cifar100", "imagenet", "cub200", "digit_mosaic")
                     for ext in ("csv", "md")} | {"runs.csv", "cifar100-gains.csv", "digit_mosaic-ours.csv"}
    csv = pd.read_csv(tables / "cifar100.csv")
    sd = csv[(csv.teacher == "resnet32x4") & (csv.student == "ShuffleV1") & (csv.method == "sd_dkd")].iloc[0]
    assert (sd.n_runs, sd.ours_best, sd.ours_best_std, sd.paper, sd.delta_vs_paper, sd.sd_gain_ours) == (
        2, 77.70, 0.28, 77.30, 0.40, 1.70)
    md = (tables / "cifar100.md").read_text()
    assert "| resnet32x4 | ShuffleV1 | SD-DKD | [1,2,4] | 77.70 ± 0.28 (n=2) | 77.40 ± 0.28 | 77.30 | +0.40 |" in md
    assert "| ResNet50 | vgg8 | SD-NKD |  |  |  | 74.62 |  |  | +0.61 |" in md
    assert "| resnet20 | resnet8 | SD-KD |" in (tables / "digit_mosaic.md").read_text()
    assert "the SD configs run with M=[1]." in md
    assert "params/imagenet/<teacher>-<student>-<method>.yaml" in (tables / "imagenet.md").read_text()
    assert len(pd.read_csv(tables / "runs.csv")) == 4


def test_write_tables(outputs):
    with pytest.warns(report.SkippedRunWarning):
        paths = report.write_tables(outputs)
    assert all(p.parent == outputs / "tables" for p in paths)
    check_tables(outputs / "tables")


@pytest.mark.slow  # executes a notebook
def test_results_notebook(outputs, tmp_path):
    import papermill
    papermill.execute_notebook(str(REPO / "notebooks" / "results.ipynb"), str(tmp_path / "results.ipynb"),
                               parameters={"output_dir": str(outputs)}, cwd=str(REPO), kernel_name="python3",
                               progress_bar=False)
    check_tables(outputs / "tables")


def test_results_notebook_is_committed_clean():
    nb = json.loads((REPO / "notebooks" / "results.ipynb").read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    (params,) = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert "".join(params["source"]).startswith('output_dir = "outputs"')


def test_reference_data():
    assert len(report.paper_results()) == 82
    assert report.paper_results().query("dataset == 'cifar100' and teacher == 'resnet32x4' and "
                                        "student == 'ShuffleV1' and method == 'sd_dkd'").top1.item() == 77.30
    assert len(report.authors_experiments()) == 72
    assert len(report.imagenet_baselines()) == 6
    imagenet = report.paper_results().query("dataset == 'imagenet'")
    assert set(zip(imagenet.teacher, imagenet.student)) == {("ResNet50", "MobileNetV1")}
    assert set(report.authors_logged_runs().columns) == {"config", "scales", "top1"}


def test_models_trained_alone_fill_the_student_row(tmp_path):
    root = tmp_path / "outputs"
    write(root, metrics(dataset="digit_mosaic", teacher="resnet20", student="resnet8", method="kd", best=90.0))
    alone = metrics(dataset="digit_mosaic", student="resnet8", best=85.0, last=84.0)
    alone.update(run_name="resnet8-alone-seed0", teacher=None, method=None, scales=None, sd=False, variant="alone",
                 teacher_top1=None)
    write(root, alone)
    table = report.results_table(report.load_runs(root), "digit_mosaic")
    student = table[table.method == "student"]
    assert student.ours_best.item() == 85.0 and student.ours_last.item() == 84.0 and student.teacher.item() == "resnet20"
    assert set(table.method) == {"teacher", "student", "sd_kd"}


def test_run_summary_sets_one_run_beside_the_paper():
    summary = report.run_summary(metrics(method="dkd", scales=[1, 2, 4], best=77.5, last=77.2))
    row = summary.iloc[0]
    assert row["best top-1"] == 77.5 and row["last top-1"] == 77.2 and row["M"] == "[1,2,4]"
    assert row["paper SD-DKD"] == 77.30 and row["paper DKD"] == 76.45


def test_a_teacher_shared_by_several_runs_counts_once(tmp_path):
    root = tmp_path / "outputs"
    for method, scales in [("kd", [1]), ("kd", [1, 2, 4]), ("dkd", [1])]:
        write(root, metrics(method=method, scales=scales, teacher_top1=79.42))
    table = report.results_table(report.load_runs(root), "cifar100")
    teacher = table[(table.method == "teacher") & (table.teacher == "resnet32x4") & (table.student == "ShuffleV1")]
    assert teacher.n_runs.item() == 1 and teacher.ours_best.item() == 79.42


# The values of the ImageNet params files (the authors' configs): SD files and their separate baseline files.
SD_KD = dict(T=4.0, ce_weight=0.1, kd_weight=0.9, warmup_epochs=0)
KD_BASELINE = dict(T=1.0, ce_weight=0.5, kd_weight=0.5, warmup_epochs=0)
SD_NKD = dict(T=1.0, gamma=2.0, ce_weight=1.0, kd_weight=1.0, warmup_epochs=1)
NKD_BASELINE = dict(T=1.0, gamma=1.5, ce_weight=1.0, kd_weight=1.0, warmup_epochs=1)


def imagenet_run(method, scales, seed=0, best=70.0, teacher="ResNet50", student="MobileNetV1", **values):
    return metrics(dataset="imagenet", teacher=teacher, student=student, method=method, scales=scales, seed=seed,
                   best=best, last=best - 0.5, teacher_top1=76.13, batch_size=512, **values)


def test_imagenet_sd_rows_pair_with_their_own_baseline_runs(tmp_path):
    root = tmp_path / "outputs"
    write(root, imagenet_run("kd", [1, 2, 4], best=72.0, **SD_KD))
    write(root, imagenet_run("kd", [1], seed=0, best=70.4, **KD_BASELINE))
    write(root, imagenet_run("kd", [1], seed=1, best=70.6, **KD_BASELINE))
    stray = write(root, imagenet_run("kd", [1], seed=2, best=71.9, **SD_KD))  # the SD file run with M=[1]
    write(root, imagenet_run("nkd", [1, 2, 4], best=73.0, **SD_NKD))
    write(root, imagenet_run("nkd", [1], best=72.5, **NKD_BASELINE))
    runs = report.load_runs(root)
    assert len(runs) == 6 and set(runs.columns) >= {"batch_size", *report.LOSS_VALUES}
    with pytest.warns(report.SkippedRunWarning) as caught:
        table = report.results_table(runs, "imagenet")
    (message,) = [str(w.message) for w in caught]
    assert str(stray) in message and "configs/imagenet/r50_mv2/kd.yaml" in message
    assert "params/imagenet/ResNet50-MobileNetV1-kd.yaml" in message and "T=4.0" in message
    row = table.set_index(["teacher", "student", "method"]).loc
    kd, sd_kd = row["ResNet50", "MobileNetV1", "kd"], row["ResNet50", "MobileNetV1", "sd_kd"]
    assert kd.n_runs == 2 and kd.ours_best == pytest.approx(70.5) and kd.paper == pytest.approx(70.50)
    assert sd_kd.sd_gain_ours == pytest.approx(1.5) and sd_kd.sd_gain_paper == pytest.approx(72.24 - 70.50)
    assert row["ResNet50", "MobileNetV1", "sd_nkd"].sd_gain_ours == pytest.approx(0.5)
    assert row["ResNet50", "MobileNetV1", "sd_nkd"].paper_top5 == pytest.approx(91.11)


def test_imagenet_resnet34_resnet18_rows_have_no_paper_numbers(tmp_path):
    root = tmp_path / "outputs"
    pair = dict(teacher="ResNet34", student="ResNet18")
    write(root, imagenet_run("kd", [1, 2, 4], best=71.0, **pair, **SD_KD))
    write(root, imagenet_run("kd", [1], best=70.7, **pair, **KD_BASELINE))
    with warnings.catch_warnings():
        warnings.simplefilter("error", report.SkippedRunWarning)  # the baseline run counts
        table = report.results_table(report.load_runs(root), "imagenet")
    assert list(dict.fromkeys(zip(table.teacher, table.student))) == [("ResNet50", "MobileNetV1"),
                                                                     ("ResNet34", "ResNet18")]
    ours = table[table.teacher == "ResNet34"].set_index("method")
    assert list(ours.index) == ["teacher", "kd", "sd_kd"]
    assert ours.paper.isna().all() and ours.paper_top5.isna().all() and ours.sd_gain_paper.isna().all()
    assert ours.loc["sd_kd", "sd_gain_ours"] == pytest.approx(0.3)
    text = report.format_table(table).set_index(["Teacher", "Student", "Method"]).loc
    assert text["ResNet34", "ResNet18", "SD-KD"]["Paper top-1"] == ""
    assert text["ResNet34", "ResNet18", "KD"]["Paper top-5"] == ""
    # with no runs the ImageNet table is the paper's one pair, teacher to SD-NKD
    empty = report.results_table(report.load_runs(tmp_path / "none"), "imagenet")
    assert set(zip(empty.teacher, empty.student)) == {("ResNet50", "MobileNetV1")} and len(empty) == 8


def test_plain_runs_elsewhere_are_the_same_config_with_m1(tmp_path):
    """CIFAR-100/CUB-200 baselines are the SD file run with M=[1]: its values are the SD config's, and count."""
    root = tmp_path / "outputs"
    write(root, metrics(method="kd", scales=[1], best=74.0, **SD_KD))
    write(root, metrics(dataset="cub200", teacher="vgg13", student="vgg8", method="kd", scales=[1], best=60.0,
                        **SD_KD))
    runs = report.load_runs(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error", report.SkippedRunWarning)  # whatever their values, they count
        cifar, cub = report.results_table(runs, "cifar100"), report.results_table(runs, "cub200")
    assert cifar.set_index(["teacher", "student", "method"]).loc[("resnet32x4", "ShuffleV1", "kd"), "n_runs"] == 1
    assert cub.set_index(["teacher", "student", "method"]).loc[("vgg13", "vgg8", "kd"), "n_runs"] == 1


def test_sd_gains_pair_runs_by_seed(tmp_path):
    root = tmp_path / "outputs"
    for seed, (plain, sd) in enumerate([(93.5, 94.55), (93.8, 94.9), (94.1, 94.0)]):
        write(root, metrics(method="kd", scales=[1], seed=seed, best=plain, last=plain - 0.5))
        write(root, metrics(method="kd", scales=[1, 2, 4], seed=seed, best=sd, last=sd - 0.25))
    write(root, metrics(method="dkd", scales=[1, 2, 4], seed=0, best=80.0))       # no DKD run to pair with
    write(root, metrics(method="nkd", scales=[1], seed=0, best=70.0, departures={"epochs": [8, 240]}))
    write(root, metrics(method="nkd", scales=[1, 2, 4], seed=0, best=71.0, departures={"epochs": [8, 240]}))
    runs = report.load_runs(root)
    gains = report.sd_gains(runs, "cifar100")
    assert list(gains.method) == ["kd", "dkd"]                  # NKD not as published
    kd, dkd = gains.iloc[0], gains.iloc[1]
    assert kd.n_seeds == 3 and kd.sd_ahead == 2 and kd.seeds_planned == 3 and kd.missing == ""
    assert (dkd.n_seeds, dkd.plain_n, dkd.sd_n, dkd.sd_best) == (0, 0, 1, 80.0) and math.isnan(dkd.gain_best)
    assert dkd.missing == "DKD seeds 0, 1, 2; SD-DKD seeds 1, 2"   # a row short of planned seeds says so
    assert kd.gain_best == pytest.approx((1.05 + 1.1 - 0.1) / 3)
    assert kd.gain_best_std == pytest.approx(pd.Series([1.05, 1.1, -0.1]).std())
    assert kd.gain_last == pytest.approx(kd.gain_best + 0.25)
    assert kd.plain_best_std == pytest.approx(0.3) and kd.plain_best == pytest.approx(93.8)
    assert list(report.sd_gains(runs, "cifar100", published_only=False).method) == ["kd", "dkd", "nkd"]
    text = report.format_gains(gains).iloc[0]
    assert text["Method"] == "SD-KD − KD" and text["SD ahead (best)"] == "2 of 3 seeds" and text["Seeds"] == "3 of 3"
    assert text["SD gain, best top-1"] == "+0.68 ± 0.68" and text["Plain best top-1"] == "93.80 ± 0.30"
    assert report.format_gains(gains).iloc[1]["Missing"] == "missing: DKD seeds 0, 1, 2; SD-DKD seeds 1, 2"
    assert report.sd_gains(runs.iloc[0:0], "cifar100").empty


def test_an_sd_method_at_several_m_is_a_row_per_m_in_every_table(tmp_path):
    """An M grid on one's own data (docs/choosing-m.md): each M its own row, paired by seed with the same plain
    runs, in the gains, the results table and the tables every reader shows; never one mean over the M."""
    root = tmp_path / "outputs"
    for seed, (plain, sd12, sd124) in enumerate([(90.0, 91.0, 94.0), (91.0, 92.0, 90.0)]):
        for scales, best in (((1,), plain), ((1, 2), sd12), ((1, 2, 4), sd124)):
            write(root, metrics(dataset="digit_mosaic", teacher="resnet14", student="resnet8", method="kd",
                                scales=scales, seed=seed, best=best, last=best))
    runs = report.load_runs(root)
    gains = report.sd_gains(runs, "digit_mosaic", published_only=False).set_index("M")
    assert list(gains.index) == ["[1,2]", "[1,2,4]"] and list(gains.method) == ["kd", "kd"]
    assert (gains.loc["[1,2]", "gain_best"], gains.loc["[1,2]", "sd_ahead"]) == (1.0, 2)
    assert gains.loc["[1,2,4]", "gain_best"] == pytest.approx(1.5) and gains.loc["[1,2,4]", "sd_ahead"] == 1
    assert gains.loc["[1,2,4]", "gain_best_std"] == pytest.approx(pd.Series([4.0, -1.0]).std())
    table = report.results_table(runs, "digit_mosaic", published_only=False)
    sd = table[table.method == "sd_kd"].set_index("M")
    assert list(sd.index) == ["[1,2]", "[1,2,4]"] and list(sd.n_runs) == [2, 2]
    assert sd.loc["[1,2]", "ours_best"] == 91.5 and sd.loc["[1,2,4]", "ours_best"] == 92.0
    assert list(sd.sd_gain_ours) == [1.0, 1.5]                               # each against KD's 90.5
    ours = next(t for t in report.dataset_tables(runs, "digit_mosaic") if t.key == "ours")
    assert list(ours.shown["M"]) == ["[1,2]", "[1,2,4]"] and list(ours.shown["SD gain, best top-1"]) == [
        "+1.00 ± 0.00", "+1.50 ± 3.54"]
    from sddlib import viz
    findings = viz.run_findings(runs, figures=False)
    assert "**SD-KD at M=[1,2] − KD, last epoch: +1.00 ± 0.00 points**" in findings
    assert "**SD-KD at M=[1,2,4] − KD, last epoch: +1.50 ± 3.54 points**" in findings


def test_write_table_writes_the_numbers_and_the_shown_table(tmp_path):
    table = pd.DataFrame({"method": ["kd", "sd_kd"], "top1": [94.1234, 95.5]})
    shown = pd.DataFrame({"Method": ["KD", "SD-KD"], "Top-1": ["94.12", "95.50"]})
    csv, md = report.write_table(table, shown, tmp_path / "tables" / "quickstart", "Quickstart")
    assert (csv.name, md.name) == ("quickstart.csv", "quickstart.md")
    assert csv.read_text().splitlines() == ["method,top1", "kd,94.12", "sd_kd,95.50"]
    assert md.read_text() == "## Quickstart\n\n| Method | Top-1 |\n|:---|---:|\n| KD | 94.12 |\n| SD-KD | 95.50 |\n"


def test_the_results_notebooks_worked_example_quotes_the_reference_tables():
    """The worked example in results.ipynb uses real numbers: the paper's SD-DKD value for resnet32x4 -> ShuffleV1
    and the authors' two logged runs of that config; the rule of thumb's arithmetic is the one it states."""
    nb = json.loads((REPO / "notebooks" / "results.ipynb").read_text())
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    paper = report.paper_results().query("dataset == 'cifar100' and teacher == 'resnet32x4' and "
                                         "student == 'ShuffleV1' and method == 'sd_dkd'").top1.item()
    logged = report.authors_logged_runs().query("config == 'configs/cifar100/sdd_dkd/res32x4_shuv1.yaml'").top1
    assert f"gives {paper:.2f} for resnet32x4 → ShuffleV1 with SD-DKD" in text
    assert f"{logged.iloc[0]:.2f} and {logged.iloc[1]:.2f}" in text and len(logged) == 2
    assert f"differ by {abs(logged.iloc[1] - logged.iloc[0]):.2f}" in text
    assert f"0.30/√3 ≈ {0.30 / 3 ** 0.5:.2f}" in text and "std/√n" in text
