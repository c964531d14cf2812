"""The region explorer (sddlib.viz.explore) over a run's saved region predictions: every control drives the
views, which hold what the saved file holds; a run without the file is filled from its saved models."""
import json
import time

import numpy as np
import pytest
import torch

from sddlib import viz
from sddlib.config import ConfigError
from sddlib.distill import CATEGORIES
from sddlib.viz.predictions import RegionPredictions

SCALES = (1, 2, 4)
NAMES = [f"class{i}" for i in range(6)]


def predictions(n=24, seed=0, scales=SCALES):
    g = torch.Generator().manual_seed(seed)
    targets, N = torch.arange(n) % len(NAMES), sum(s * s for s in scales)
    def regions():
        logits = torch.randn(n, len(NAMES), N, generator=g)
        logits[torch.arange(n), targets, :] += 1.5 * torch.rand(n, N, generator=g)   # often right, not always
        return logits
    images = torch.rand(n, 3, 32, 32, generator=g)
    teacher = regions()
    sd = RegionPredictions(images, targets, teacher, regions(), scales, NAMES)
    plain = RegionPredictions(images, targets, teacher, regions(), scales, NAMES)
    return sd, plain


@pytest.fixture
def run(tmp_path):
    sd, plain = predictions()
    path = viz.save_region_file(sd, tmp_path / "figures" / viz.REGION_FILE, baseline=plain, complementary_weight=2.0)
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "complete", "variant": "sd_kd"}))
    return tmp_path, sd, plain, path


def test_the_saved_file_holds_top_k_per_region(run):
    folder, sd, plain, path = run
    data = viz.load_region_file(path)
    assert data.models == ["teacher", "student", "baseline"] and data.scales == SCALES and len(data) == 24
    probs = sd.teacher_regions.softmax(1)
    top = probs.topk(5, dim=1)
    assert (data.topk_classes["teacher"] == top.indices.permute(0, 2, 1).numpy()).all()
    assert np.allclose(data.topk_probs["teacher"], top.values.permute(0, 2, 1).numpy(), atol=1e-3)
    assert np.allclose(data.target_logit["student"][:, 0], sd.student_regions[torch.arange(24), sd.targets, 0])
    assert (data.categories == sd.categories().numpy()).all()
    assert set(np.unique(data.weights)) <= {1.0, 2.0} and (data.weights[data.categories >= 2] == 2).all()
    assert data.images.dtype == np.uint8 and data.images.shape == (24, 32, 32, 3)


def test_an_m_outside_the_papers_three_is_explored_at_each_of_its_scales(tmp_path):
    sd, plain = predictions(scales=(1, 2, 3))
    viz.save_region_file(sd, tmp_path / "figures" / viz.REGION_FILE, baseline=plain, complementary_weight=2.0)
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "complete", "variant": "sd_kd"}))
    data = viz.load_region_file(tmp_path / "figures" / viz.REGION_FILE)
    app = viz.explore(tmp_path)
    assert [value for _, value in app.scale.options] == [1, 2, 3] and app.scale.value == 3
    app.position.value = 5
    assert app.cell_colors == [viz.CATEGORY_COLORS[CATEGORIES[c]] for c in data.categories[5, 5:14]]
    np.testing.assert_allclose(app.heatmap_values["teacher"], data.target_logit["teacher"][5, 5:14].reshape(3, 3))
    assert set(app.summary_frame["scale"]) == {"1×1", "2×2", "3×3"}


def test_every_control_updates_the_views_from_the_file(run):
    folder, sd, plain, path = run
    data = viz.load_region_file(path)
    started = time.perf_counter()
    app = viz.explore(folder)
    assert app.index == 0 and list(app.images) == list(range(24)) and app.picture.value and app.heatmap.value

    app.scale.value = 2                                          # the grid of the chosen scale, coloured by category
    assert app.cell_colors == [viz.CATEGORY_COLORS[CATEGORIES[c]] for c in data.categories[0, 1:5]]
    assert len(app.region_rows) == 4 and list(app.region_rows["SD loss weight"]) == list(data.weights[0, 1:5])
    app.position.value = 7
    assert app.index == 7 and app.cell_colors == [viz.CATEGORY_COLORS[CATEGORIES[c]] for c in data.categories[7, 1:5]]
    np.testing.assert_allclose(app.heatmap_values["teacher"], data.target_logit["teacher"][7, 1:5].reshape(2, 2))
    app.shown_class.value = "top1"
    np.testing.assert_allclose(app.heatmap_values["teacher"], data.top1_logit["teacher"][7, 1:5].reshape(2, 2))
    app.model.value = "both"
    assert set(app.heatmap_values) == {"teacher", "student"}
    assert {"teacher top-5", "student top-5"} <= set(app.region_rows.columns)
    first = app.region_rows["student top-5"].iloc[0].split(", ")[0].split(" ")[0]
    assert first == NAMES[data.topk_classes["student"][7, 1, 0]]

    app.class_filter.value = 3                                   # by class
    assert all(data.targets[i] == 3 for i in app.images) and app.index == app.images[0] and app.position.value == 0
    app.class_filter.value = -1
    app.ranking.value = "complementary"                           # ranked lists
    counts = (data.categories >= 2).sum(1)
    assert counts[app.images[0]] == counts.max() and list(counts[app.images]) == sorted(counts, reverse=True)
    app.ranking.value = "teacher_only"
    right = lambda m: data.topk_classes[m][:, 0, 0] == data.targets   # noqa: E731
    assert set(app.images) == set(np.flatnonzero(right("teacher") & ~right("student")))
    app.ranking.value = "sd_only"
    assert set(app.images) == set(np.flatnonzero(~right("baseline") & right("student")))

    # the summary: category shares per scale over the listed images, and the student's agreement per category
    listed = app.images
    frame = app.summary_frame.set_index(["scale", "category"])
    cats4 = data.categories[np.ix_(listed, np.arange(5, 21))]
    for c, name in enumerate(CATEGORIES):
        assert frame.loc[("4×4", name), "share"] == pytest.approx((cats4 == c).mean())
    assert frame.groupby(level=0)["share"].sum().round(6).eq(1).all()
    # a choice no image matches says so: a class none of whose images the SD student alone gets right (class 2 here)
    unmatched = [c for c in range(len(NAMES)) if c not in set(data.targets[listed])]
    assert unmatched and (data.targets == unmatched[0]).any()
    app.class_filter.value = unmatched[0]
    assert len(app.images) == 0 and app.index is None and "No test image matches" in app.caption.value
    app.class_filter.value = data.targets[listed[0]]                # and a choice that matches shows its images
    assert app.index == listed[0] and "No test image matches" not in app.caption.value
    print(f"explorer: opened and driven in {time.perf_counter() - started:.2f} s")


def test_headless_it_shows_a_snapshot_of_the_default_view(run, capsys):
    folder, *_ = run
    viz.explore(folder).snapshot()      # what _ipython_display_ shows without a Jupyter front end
    out = capsys.readouterr().out
    assert out.count("IPython.core.display.Image") == 2 and "IPython.core.display.HTML" in out


def test_bad_input_is_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match=r"is not a finished run \(no readable metrics.json\)"):
        viz.explore(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "complete", "variant": "sd_kd",
                                                       "teacher_source": {"source": "checkpoint",
                                                                          "path": str(tmp_path / "t.pth")}}))
    with pytest.raises(ConfigError, match=r"has no region_predictions.npz and cannot make one: .*student.pth, "
                                          r".*t.pth is missing"):
        viz.explore(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "complete", "variant": "alone"}))
    with pytest.raises(ConfigError, match="holds no complete distillation run"):
        viz.region_predictions(tmp_path)


@pytest.mark.slow  # starts a kernel
def test_the_notebook_runs_headless_and_keeps_a_snapshot(run):
    import papermill as pm
    from pathlib import Path
    folder, *_ = run
    repo = Path(__file__).resolve().parents[1]
    output = folder / "explore.executed.ipynb"
    pm.execute_notebook(str(repo / "notebooks" / "explore.ipynb"), str(output), parameters={"run_dir": str(folder)},
                        cwd=str(repo), kernel_name="python3", progress_bar=False)
    outputs = [o for c in json.loads(output.read_text())["cells"] if c["cell_type"] == "code"
               for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    assert any("SD loss weight" in "".join(o.get("data", {}).get("text/html", "")) for o in outputs)
