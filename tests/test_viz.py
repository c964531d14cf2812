"""Figures of sddlib.viz: the tidy frame behind each figure for hand-made region logits with known
categories, the PNG and its CSV written beside it, re-plotting from the CSV, a small real distillation
run, and rejected inputs."""
import json

import matplotlib

matplotlib.use("Agg")

import fastai.callback.progress  # noqa: F401,E402  (adds Learner.no_bar)
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from fastai.data.core import DataLoaders  # noqa: E402
from fastai.data.load import DataLoader  # noqa: E402
from fastai.learner import Learner  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from sddlib import viz  # noqa: E402
from sddlib.data import DatasetInfo, digit_mosaic  # noqa: E402
from sddlib.distill import CATEGORIES, DistillationCallback  # noqa: E402
from sddlib.models import create_model  # noqa: E402
from sddlib.viz.predictions import stratified_indices  # noqa: E402
from sddlib.viz import (RegionPredictions, agreement_frame, category_history_frame,  # noqa: E402
                        category_shares_frame, collect_region_predictions, per_class_frame, plot_agreement,
                        plot_category_history, plot_category_shares, plot_per_class, plot_region_logits,
                        plot_region_map, region_labels, region_logits_frame, region_map_frame, save_run_figures)

SCALES = (1, 2, 4)
K = 4
CR, CW, GRLW, GWLR = range(4)   # category ids, CATEGORIES order


def logits_from_top1(top1: torch.Tensor) -> torch.Tensor:
    """B x N top-1 class table -> B x K x N logits whose argmax is that table (4 vs 0..0.3)."""
    B, N = top1.shape
    logits = torch.linspace(0, 0.3, K).view(1, K, 1).repeat(B, 1, N)
    logits.scatter_(1, top1[:, None, :], 4.0)
    return logits


def known_top1():
    """4 images with known teacher categories (regions: 1 global + 4 (2x2) + 16 (4x4)).

    image 0, target 0, global right: 2x2 -> 2 right, 2 wrong; 4x4 -> 12 right, 4 wrong (first four)
    image 1, target 1, global wrong (2): 2x2 -> 1 right; 4x4 -> 6 right (first six)
    image 2, target 2, global right, every region right
    image 3, target 3, global wrong (0), every region wrong (0)
    """
    targets = torch.tensor([0, 1, 2, 3])
    t = torch.zeros(4, 21, dtype=torch.long)
    t[0] = 0
    t[0, 3:5] = torch.tensor([1, 2])       # 2x2 cells (1,0), (1,1) wrong
    t[0, 5:9] = 3                          # 4x4 row 0 wrong
    t[1] = 2
    t[1, 1] = 1                            # 2x2 cell (0,0) right
    t[1, 5:11] = 1                         # 4x4 first six right
    t[2] = 2
    t[3] = 0
    return t, targets


EXPECTED_TEACHER = {1: [2, 2, 0, 0], 2: [6, 7, 2, 1], 4: [28, 26, 4, 6]}


def make_preds(with_student=True, student_top1=None):
    t, targets = known_top1()
    if student_top1 is None:
        student_top1 = t.clone()
        student_top1[0, 5] = 0             # SD student differs from teacher at 4x4 (0,0) of image 0 only
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=g)
    return RegionPredictions(images=images, targets=targets, teacher_regions=logits_from_top1(t),
                             student_regions=logits_from_top1(student_top1) if with_student else None,
                             scales=SCALES, class_names=["zero", "one", "two", "three"])


def category_table(top1, targets):
    """Independent reference: category id per (image, region) from a top-1 table."""
    out = torch.empty_like(top1)
    for b in range(top1.shape[0]):
        g = top1[b, 0] == targets[b]
        for n in range(top1.shape[1]):
            loc = top1[b, n] == targets[b]
            out[b, n] = CR if g and loc else CW if not g and not loc else GRLW if g else GWLR
    return out


def assert_saved(path, fig, frame):
    """The PNG has the figure's size, and the CSV beside it holds exactly the figure's frame."""
    assert path.is_file()
    h, w = mpimg.imread(path).shape[:2]
    fw, fh = fig.get_size_inches() * viz.DPI
    assert (h, w) == (round(fh), round(fw))
    saved = pd.read_csv(path.with_suffix(".csv"), keep_default_na=False)
    pd.testing.assert_frame_equal(saved, frame, check_dtype=False)


def counts(frame, **where):
    """The frame's `count` column in CATEGORIES order for one (model, scale)."""
    sel = frame.loc[(frame[list(where)] == pd.Series(where)).all(axis=1)]
    return sel.set_index("category").loc[list(CATEGORIES), "count"].tolist()


# --- hand-made predictions with known categories ---------------------------------------------------

def test_category_shares_frame_and_bars(tmp_path):
    preds = make_preds()
    frame = category_shares_frame(preds)
    assert list(frame.columns) == ["model", "scale", "category", "count", "share"]
    assert {s: counts(frame, model="teacher", scale=s) for s in SCALES} == EXPECTED_TEACHER
    cats = category_table(preds.student_regions.argmax(1), preds.targets)
    for s, sl in ((1, slice(0, 1)), (2, slice(1, 5)), (4, slice(5, 21))):
        assert counts(frame, model="student", scale=s) == [int((cats[:, sl] == j).sum()) for j in range(4)]
    teacher_4 = frame[(frame.model == "teacher") & (frame.scale == 4)]
    assert teacher_4.share.tolist() == pytest.approx([28 / 64, 26 / 64, 4 / 64, 6 / 64])
    fig = plot_category_shares(preds, path=tmp_path / "sub" / "shares.png")
    assert_saved(tmp_path / "sub" / "shares.png", fig, frame)
    # the 4x4 panel: one bar per (model, category), height = share, in the category's fixed colour
    bars = {(round(p.get_x() + p.get_width() / 2), to_rgba(p.get_facecolor())): p.get_height()
            for p in fig.axes[2].patches}
    for cat, count in zip(CATEGORIES, EXPECTED_TEACHER[4]):
        assert bars[(0, to_rgba(viz.CATEGORY_COLORS[cat]))] == pytest.approx(count / 64)


def test_region_map_frame_picks_complementary_images(tmp_path):
    preds = make_preds()
    frame = region_map_frame(preds, n=4)
    shown = frame.drop_duplicates("row")
    assert shown.image.tolist()[:2] == [0, 1] and set(shown.image) == {0, 1, 2, 3}
    assert shown.kind.tolist()[:2] == ["global right, local wrong", "global wrong, local right"]
    assert "consistent" in shown.kind.tolist() and len(frame) == 4 * 21
    cell = frame.set_index(["image", "scale", "cell_row", "cell_col"])
    assert [cell.loc[(0, 2, r, c), "category"] for r in (0, 1) for c in (0, 1)] == \
        [CATEGORIES[i] for i in (CR, CR, GRLW, GRLW)]
    assert frame[(frame.image == 1) & (frame.scale == 4)].category.tolist() == \
        [CATEGORIES[GWLR]] * 6 + [CATEGORIES[CW]] * 10
    assert [cell.loc[(0, 2, r, c), "top1"] for r in (0, 1) for c in (0, 1)] == [0, 0, 1, 2]
    assert cell.loc[(0, 2, 1, 0), "top1_name"] == "one" and cell.loc[(1, 1, 0, 0), "target_name"] == "one"
    assert cell.loc[(0, 1, 0, 0), "prob"] == pytest.approx(
        torch.softmax(preds.teacher_regions[0, :, 0], 0).max().item())
    fig = plot_region_map(preds, n=4, path=tmp_path / "map.png")
    assert_saved(tmp_path / "map.png", fig, frame)


def test_region_map_explicit_indices():
    frame = region_map_frame(make_preds(), indices=[3, 2])
    assert frame.drop_duplicates("row").image.tolist() == [3, 2] and set(frame.kind) == {"chosen"}
    fine = frame[frame.scale == 4]
    assert set(fine[fine.image == 3].category) == {CATEGORIES[CW]}
    assert set(fine[fine.image == 2].category) == {CATEGORIES[CR]}


def test_region_logits_frame_default_image_and_values(tmp_path):
    preds = make_preds()
    frame = region_logits_frame(preds, k=2)
    assert set(frame.image) == {1} and set(frame.target) == {1}   # image 1 has 7 complementary regions, image 0 has 6
    teacher = frame[frame.model == "teacher"]
    assert teacher.drop_duplicates("column")["class"].tolist() == [1, 2, 3]   # target, most regions' top-1, best logit
    assert teacher.drop_duplicates("region").region_label.tolist() == region_labels(SCALES)
    for model, regions in (("teacher", preds.teacher_regions), ("student", preds.student_regions)):
        grid = frame[frame.model == model].pivot(index="region", columns="column", values="logit").to_numpy()
        np.testing.assert_allclose(grid, regions[1][[1, 2, 3]].T.numpy())
        top = frame[(frame.model == model) & frame.is_top1]
        assert len(top) == 21 and (top["class"].to_numpy() == regions[1].argmax(0).numpy()).all()
    assert teacher.drop_duplicates("region").category.tolist()[:2] == [CATEGORIES[CW], CATEGORIES[GWLR]]
    fig = plot_region_logits(preds, k=2, path=tmp_path / "logits.png")
    assert_saved(tmp_path / "logits.png", fig, frame)


def test_per_class_frame(tmp_path):
    frame = per_class_frame(make_preds())
    wide = frame.pivot(index="class", columns="category", values="regions")
    assert frame.drop_duplicates("rank")["class"].tolist() == [1, 0]
    assert frame.drop_duplicates("rank").class_name.tolist() == ["one", "zero"]
    assert wide.loc[1].tolist() == [0, 7] and wide.loc[0].tolist() == [6, 0] and set(frame.images) == {1}
    fig = plot_per_class(make_preds(), path=tmp_path / "per_class.png")
    assert_saved(tmp_path / "per_class.png", fig, frame)
    assert sorted(round(p.get_width()) for p in fig.axes[0].patches) == [0, 0, 6, 7]


def test_agreement_frame(tmp_path):
    sd = make_preds()
    t, _ = known_top1()
    plain_top1 = t.clone()
    plain_top1[:2, 5:] = torch.where(t[:2, 5:] == 3, 0, 3)   # images 0, 1 disagree on every 4x4 region
    plain = make_preds(student_top1=plain_top1)
    frame = agreement_frame(plain, sd)
    assert set(frame.images) == {4}

    def grid(student, scale):
        return frame[(frame.student == student) & (frame.scale == scale)].pivot(
            index="row", columns="col", values="agreement").to_numpy()
    expected_sd = np.ones((4, 4))
    expected_sd[0, 0] = 0.75
    np.testing.assert_allclose(grid("sd", 4), expected_sd)
    np.testing.assert_allclose(grid("plain", 4), np.full((4, 4), 0.5))
    assert grid("sd", 1).tolist() == [[1.0]] and grid("plain", 1).tolist() == [[1.0]]
    assert set(frame.scale) == {1, 4}                                # the global and the finest grid only
    fig = plot_agreement(plain, sd, path=tmp_path / "agree.png")
    assert_saved(tmp_path / "agree.png", fig, frame)
    single = agreement_frame(None, sd)
    assert set(single.student) == {"sd"} and len(single) == 1 + 16


@pytest.mark.slow  # draws every region figure
def test_every_figure_of_an_m_outside_the_papers_three(tmp_path):
    g = torch.Generator().manual_seed(0)
    targets = torch.arange(8) % K
    preds = RegionPredictions(torch.rand(8, 3, 24, 24, generator=g), targets, torch.randn(8, K, 14, generator=g),
                              torch.randn(8, K, 14, generator=g), (1, 2, 3), ["a", "b", "c", "d"])
    shown = region_map_frame(preds, n=2)
    assert sorted(set(shown.scale)) == [1, 2, 3] and len(shown[shown.scale == 3]) == 2 * 9
    for name, plot in (("map", plot_region_map), ("logits", plot_region_logits), ("shares", plot_category_shares),
                       ("per_class", plot_per_class)):
        plot(preds, path=tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").is_file()
    fig = plot_agreement(None, preds, path=tmp_path / "agree.png")
    assert set(agreement_frame(None, preds).scale) == {1, 3}
    assert fig.axes[0].get_title().startswith("SD student (M=[1,2,3])")


def test_agreement_uses_finest_available_scale():
    t, targets = known_top1()
    preds = RegionPredictions(torch.rand(4, 3, 8, 8), targets, logits_from_top1(t[:, :5]),
                              logits_from_top1(t[:, :5]), (1, 2), ["a", "b", "c", "d"])
    frame = agreement_frame(None, preds)
    assert set(frame.scale) == {1, 2} and len(frame) == 1 + 4 and (frame.agreement == 1.0).all()


def test_category_history_from_list_and_frame(tmp_path):
    rows = [{"epoch": e, "ce": 1.0, "distill": 1.0, "warmup_factor": 1.0,
             **{f"{c}@{s}": v for s in SCALES for c, v in zip(CATEGORIES, (0.5, 0.3, 0.1 * e, 0.2 - 0.1 * e))}}
            for e in (1, 2)]
    frame = category_history_frame(rows, SCALES)
    assert len(frame) == 2 * 3 * 4 and sorted(set(frame.epoch)) == [1, 2]
    gr_lw = frame[(frame.scale == 2) & (frame.category == "complementary_gr_lw")]
    assert gr_lw.share.tolist() == pytest.approx([0.1, 0.2])
    pd.testing.assert_frame_equal(category_history_frame(pd.DataFrame(rows), SCALES), frame)
    fig = plot_category_history(rows, SCALES, path=tmp_path / "hist.png")
    assert_saved(tmp_path / "hist.png", fig, frame)
    assert len([ax for ax in fig.axes if ax.lines]) == 3               # one panel per scale


def test_figures_replot_from_their_csv(tmp_path):
    """A saved CSV is all a figure needs: drawing it again gives the same picture."""
    preds = make_preds()
    for plot, draw, name in ((plot_category_shares, viz.draw_category_shares, "shares"),
                             (plot_region_logits, viz.draw_region_logits, "logits"),
                             (plot_per_class, viz.draw_per_class, "per_class")):
        plot(preds, path=tmp_path / f"{name}.png")
        again = draw(pd.read_csv(tmp_path / f"{name}.csv", keep_default_na=False))
        again.savefig(tmp_path / f"{name}_again.png", dpi=viz.DPI, facecolor="white")
        np.testing.assert_array_equal(mpimg.imread(tmp_path / f"{name}.png"),
                                      mpimg.imread(tmp_path / f"{name}_again.png"))


def test_teacher_only_predictions():
    preds = make_preds(with_student=False)
    assert set(category_shares_frame(preds).model) == {"teacher"}
    assert set(region_logits_frame(preds, index=0).model) == {"teacher"}
    with pytest.raises(ValueError, match="no student_regions"):
        plot_agreement(None, preds)


# --- rejected inputs -------------------------------------------------------------------------------

def test_rejected_inputs():
    t, targets = known_top1()
    regions, images, names = logits_from_top1(t), torch.rand(4, 3, 8, 8), ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="must include the global 1x1 region"):
        RegionPredictions(images, targets, regions[:, :, 1:], None, (2, 4), names)
    with pytest.raises(ValueError, match="must include the global 1x1 region"):
        plot_category_history([], (2, 4))
    with pytest.raises(ValueError, match="must include the global 1x1 region"):
        collect_region_predictions(nn.Linear(2, 2), None, [], "[2,4]")
    with pytest.raises(ValueError, match="must include the global 1x1 region"):
        save_run_figures(nn.Linear(2, 2), nn.Linear(2, 2), None, [2], None, "out")
    with pytest.raises(ValueError, match="not supported"):
        RegionPredictions(images, targets, regions, None, (1, 3, 2), names)
    with pytest.raises(ValueError, match=r"teacher_regions must be B x classes x 10 \(regions of scales \[1, 3\]"):
        RegionPredictions(images, targets, regions, None, (1, 3), names)
    with pytest.raises(ValueError, match="teacher_regions must be B x classes x 21"):
        RegionPredictions(images, targets, regions[:, :, :20], None, SCALES, names)
    with pytest.raises(ValueError, match="teacher_regions must be B x classes x 21"):
        RegionPredictions(images, targets, regions[0], None, SCALES, names)
    with pytest.raises(ValueError, match="targets must hold one integer class id per image"):
        RegionPredictions(images, targets[:3], regions, None, SCALES, names)
    with pytest.raises(ValueError, match="targets must lie in"):
        RegionPredictions(images, targets + 1, regions, None, SCALES, names)
    with pytest.raises(ValueError, match="student_regions must be None or a tensor shaped like"):
        RegionPredictions(images, targets, regions, regions[:, :, :5], SCALES, names)
    with pytest.raises(ValueError, match="images must be 4 x 3 x H x W"):
        RegionPredictions(images[:3], targets, regions, None, SCALES, names)
    with pytest.raises(ValueError, match="class_names must name all 4 classes"):
        RegionPredictions(images, targets, regions, None, SCALES, names[:3])
    preds = make_preds()
    preds.teacher_regions = regions[:, :, :5]          # mutated after construction: caught on use
    for plot in (plot_region_map, plot_region_logits, plot_category_shares, plot_per_class):
        with pytest.raises(ValueError, match="teacher_regions must be B x classes x 21"):
            plot(preds)
    with pytest.raises(ValueError, match="must be a RegionPredictions"):
        plot_region_map({"images": images})
    with pytest.raises(ValueError, match="index must be an image position in \\[0, 3\\]"):
        plot_region_logits(make_preds(), index=7)
    with pytest.raises(ValueError, match="history lacks"):
        plot_category_history([{"epoch": 1, "consistent_right@1": 1.0}], SCALES)
    other = RegionPredictions(images, targets, regions[:, :, :5], regions[:, :, :5], (1, 2), names)
    with pytest.raises(ValueError, match="collect both on the same images and scales"):
        plot_agreement(other, make_preds())


# --- a small real run ------------------------------------------------------------------------------

INFO = DatasetInfo("tiny", [f"class_{i}" for i in range(10)], (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), image_size=32)


def make_dls(n=64, num_classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randn(n, 3, 32, 32, generator=g)
    ds = TensorDataset(x, y)
    dls = DataLoaders(DataLoader(ds, bs=32, shuffle=True), DataLoader(ds, bs=32), device="cpu")
    dls.info = INFO
    return dls, x, y


@pytest.mark.slow  # trains, then draws every figure
def test_real_run_writes_every_figure_with_its_data(tmp_path):
    torch.manual_seed(0)
    dls, x, y = make_dls()
    teacher, student = create_model("resnet8", num_classes=10), create_model("resnet8", num_classes=10)
    baseline = create_model("resnet8", num_classes=10)
    cb = DistillationCallback(teacher, "kd", SCALES)
    learn = Learner(dls, student, loss_func=nn.CrossEntropyLoss(), cbs=cb, lr=0.05)
    with learn.no_bar(), learn.no_logging():
        learn.fit(2)
    was_training = student.training
    paths = save_run_figures(teacher, student, dls, SCALES, cb, tmp_path / "figures", baseline_student=baseline,
                             max_items=40)
    assert [p.name for p in paths] == list(viz.FIGURE_FILES.values())
    assert all(p.parent == tmp_path / "figures" and p.is_file() and p.stat().st_size > 5000 for p in paths)
    assert student.training == was_training                                # mode restored
    # the predictions themselves: un-normalised images, eval-mode region logits, the figures' sample of 40
    student.train()
    preds = collect_region_predictions(teacher, student, dls.valid, SCALES, info=INFO, max_items=40, sample_seed=0)
    assert student.training and len(preds) == 40 and preds.class_names == list(INFO.class_names)
    assert preds.teacher_regions.shape == (40, 10, 21)
    picked = stratified_indices(y, 40, seed=0)
    mean, std = torch.tensor(INFO.mean).view(1, 3, 1, 1), torch.tensor(INFO.std).view(1, 3, 1, 1)
    torch.testing.assert_close(preds.images, (x[picked] * std + mean).clamp(0, 1))
    assert preds.targets.tolist() == y[picked].tolist()
    with torch.inference_mode():
        expected = teacher.eval()(x[picked])
    torch.testing.assert_close(preds.teacher_regions[:, :, 0], expected, rtol=1e-4, atol=1e-4)
    # every CSV beside its PNG is the frame of the same predictions (figure 3b: of the history), with the sample's size
    baseline_preds = collect_region_predictions(teacher, baseline, dls, SCALES, max_items=40, sample_seed=0)
    csv = {key: pd.read_csv(tmp_path / "figures" / viz.csv_path(name).name, keep_default_na=False)
           for key, name in viz.FIGURE_FILES.items()}
    classes = len(set(y[picked].tolist()))
    for key in csv:
        if key not in ("category_history", "tsne", "correlation"):   # those are not drawn from the sample
            assert (csv[key].pop("sample_images") == 40).all() and (csv[key].pop("sample_classes") == classes).all()
    assert json.loads((tmp_path / "figures" / viz.SAMPLE_FILE).read_text())["classes"] == classes
    for key, frame in (("region_map", region_map_frame(preds)), ("region_logits", region_logits_frame(preds)),
                       ("category_shares", category_shares_frame(preds)), ("per_class", per_class_frame(preds)),
                       ("category_history", category_history_frame(cb.history, SCALES)),
                       ("agreement", agreement_frame(baseline_preds, preds)),
                       ("correlation", viz.correlation_frame(viz.collect_features(
                           {"teacher": teacher, "SD student (this run)": student, "plain-method student": baseline},
                           dls.valid)))):
        pd.testing.assert_frame_equal(csv[key], frame, check_dtype=False, obj=key)
    assert sorted(set(csv["tsne"].model)) == ["SD student (this run)", "plain-method student", "teacher"]
    assert sorted(set(csv["category_history"].epoch)) == [1, 2]
    # a whole DataLoaders is accepted too (its valid loader and its info are used)
    whole = collect_region_predictions(teacher, None, dls, (1,), max_items=8)
    assert len(whole) == 8 and whole.class_names == list(INFO.class_names)
    torch.testing.assert_close(whole.images, (x[:8] * std + mean).clamp(0, 1))   # no sample_seed: the first 8
    # without info: classes named by their ids, images stretched to [0, 1] per image
    bare = collect_region_predictions(teacher, None, dls.valid, (1,), max_items=2)
    assert bare.class_names == [str(i) for i in range(10)]
    assert [float(bare.images[i].min()) for i in range(2)] == [0.0, 0.0]
    assert [float(bare.images[i].max()) for i in range(2)] == pytest.approx([1.0, 1.0])


@pytest.mark.slow  # draws every figure
def test_figures_cover_every_class_of_a_test_set_stored_class_by_class(tmp_path):
    """An image folder or ImageNet's test set is stored class by class: the first images would be one class."""
    y = torch.arange(10).repeat_interleave(20)                       # 200 images, class-sorted
    x = torch.randn(200, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ds = TensorDataset(x, y)
    ds.targets = y                                                   # read without a pass over the loader
    dls = DataLoaders(DataLoader(ds, bs=32, shuffle=True), DataLoader(ds, bs=32), device="cpu")
    dls.info = INFO
    picked = stratified_indices(y, 30, seed=0)
    assert sorted(picked) == picked and len(set(picked)) == 30
    assert torch.bincount(y[picked], minlength=10).tolist() == [3] * 10      # 3 of every class, not 30 of class 0
    assert picked != stratified_indices(y, 30, seed=1) and picked == stratified_indices(y, 30, seed=0)
    assert sorted(y[stratified_indices(y, 7, seed=0)].tolist()) == sorted(set(y[stratified_indices(y, 7, 0)].tolist()))
    teacher, student = create_model("resnet8", num_classes=10), create_model("resnet8", num_classes=10)
    save_run_figures(teacher, student, dls, (1, 2), None, tmp_path / "figures", max_items=30)
    assert json.loads((tmp_path / "figures" / viz.SAMPLE_FILE).read_text()) == {
        "images": 30, "classes": 10, "num_classes": 10, "test_images": 200, "seed": 0}
    shares = pd.read_csv(tmp_path / "figures" / "fig3a_category_shares.csv")
    assert set(shares.sample_images) == {30} and set(shares.sample_classes) == {10}
    assert viz.sample_sentence(tmp_path).startswith("Figures 1, 2, 3a, 4 and 5 are drawn from 30 test images "
                                                   "covering 10 of the 10 classes (a class-stratified sample of 200")


@pytest.mark.slow  # draws region maps
def test_digit_layouts_are_drawn_when_the_loader_keeps_dataset_order(tmp_path):
    dls = digit_mosaic(tmp_path, bs=5, n_train=20, n_test=12, num_workers=0)
    teacher = create_model("resnet8", num_classes=10)
    ordered = collect_region_predictions(teacher, None, dls, (1, 2))
    layout = dls.valid.dataset.layout
    assert ordered.layouts == [layout[i] for i in range(12)] and ordered.layouts[3]["label"] == int(ordered.targets[3])
    fig = plot_region_map(ordered, indices=[3])
    boxes = [p for p in fig.axes[0].patches if not p.get_fill()]
    assert [b.get_linestyle() for b in boxes] == ["-"] + ["--"] * len(layout[3]["distractors"])
    assert collect_region_predictions(teacher, None, dls.train, (1, 2)).layouts is None   # shuffled: no layout


def test_show_run_figures_display_saved_pngs_with_captions(tmp_path, capsys):
    from sddlib.viz import FIGURE_CAPTIONS, FIGURE_FILES, show_run_figure, show_run_figures
    plot_category_history([{"epoch": 1, **{f"{c}@1": 0.25 for c in CATEGORIES}}], (1,),
                          path=tmp_path / "figures" / FIGURE_FILES["category_history"])
    assert (tmp_path / "figures" / "fig3b_category_history.csv").is_file()
    show_run_figure(tmp_path, "category_history")
    show_run_figure(tmp_path, "region_map")
    out = capsys.readouterr().out
    assert "IPython.core.display.Image" in out and "no fig1_region_map.png" in out
    show_run_figures(tmp_path, ["region_map", "category_history"])
    out = capsys.readouterr().out
    assert out.count("IPython.core.display.Markdown") == 3 and out.count("IPython.core.display.Image") == 1
    assert set(FIGURE_CAPTIONS) == set(FIGURE_FILES)
    with pytest.raises(ValueError, match="figure 'fig9' is unknown"):
        show_run_figure(tmp_path, "fig9")


@pytest.mark.slow  # t-SNE of three models' features
def test_feature_figures_tsne_and_correlation_difference(tmp_path):
    """Figures 6 and 7 (sddlib.viz.features) on a class-sorted test set."""
    torch.manual_seed(0)
    x, y = torch.randn(60, 3, 32, 32), torch.arange(10).repeat_interleave(6)       # stored class by class
    dl = DataLoader(TensorDataset(x, y), bs=16)
    teacher, student = create_model("resnet8", num_classes=10), create_model("resnet8", num_classes=10)
    student.train()
    feats = viz.collect_features({"teacher": teacher, "student": student, "same as teacher": teacher}, dl,
                                 class_names=INFO.class_names)
    assert student.training and feats.features["student"].shape == (60, 64) and feats.logits["teacher"].shape == (60, 10)
    with torch.inference_mode():
        torch.testing.assert_close(feats.logits["teacher"], teacher.eval()(x), rtol=1e-4, atol=1e-5)
    assert viz.collect_features({"teacher": teacher}, dl, positions=[3, 17, 40]).targets.tolist() == [0, 2, 6]

    tsne = viz.tsne_frame(feats, n=20)                  # a class-stratified sample of the class-sorted set
    assert len(tsne) == 3 * 20 and set(tsne["n_images"]) == {20} and set(tsne["n_classes"]) == {10}
    assert list(tsne.columns) == ["model", "index", "target", "x", "y", "class", "n_images", "n_classes"]
    assert tsne["x"].std() > 0 and set(tsne["class"]) == set(INFO.class_names)

    corr = viz.correlation_frame(feats)
    assert set(corr["model"]) == {"student", "same as teacher"} and len(corr) == 2 * 10 * 10
    assert (corr[corr["model"] == "same as teacher"]["abs_diff"] == 0).all()
    ours = corr[corr["model"] == "student"]
    t = np.corrcoef(feats.logits["teacher"].double().numpy(), rowvar=False)
    s = np.corrcoef(feats.logits["student"].double().numpy(), rowvar=False)
    assert ours["abs_diff"].to_numpy() == pytest.approx(np.abs(t - s).ravel())          # plain restatement
    assert ours["mean_abs_diff"].iloc[0] == pytest.approx(np.abs(t - s).mean())
    assert set(viz.correlation_frame(feats, classes=4)["classes_shown"]) == {4}
    with pytest.raises(ValueError, match="needs a student besides the teacher"):
        viz.correlation_frame(viz.collect_features({"teacher": teacher}, dl))

    viz.plot_tsne(feats, n=20, path=tmp_path / "fig6_tsne.png")
    viz.plot_correlation(feats, path=tmp_path / "fig7_correlation.png")
    for name, frame in (("fig6_tsne", tsne), ("fig7_correlation", corr)):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
        saved = pd.read_csv(tmp_path / f"{name}.csv")
        pd.testing.assert_frame_equal(saved, frame, check_dtype=False, check_exact=False, obj=name)
        viz.draw_tsne(saved) if name == "fig6_tsne" else viz.draw_correlation(saved)   # re-plot from the CSV


# Machado, Oliveira & Fernandes (2009): linear-RGB matrices simulating full protan, deutan and tritan vision
_CVD = {"normal": np.eye(3),
        "protan": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
        "deutan": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                            [-0.011820, 0.042940, 0.968881]]),
        "tritan": np.array([[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                            [0.004733, 0.691367, 0.303900]])}


def _linear(rgb):
    rgb = np.asarray(rgb, dtype=float)
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _lab(linear_rgb):
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear_rgb
    t = xyz / np.array([0.9505, 1.0, 1.089])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_the_four_categories_stay_apart_over_the_image_and_for_colour_blind_readers():
    """Each pair of category colours, laid at the figures' alpha over the greys figure 1 draws the image in (0.25 to
    1), differs by at least 15 CIELAB units for normal vision and under simulated protan, deutan and tritan vision
    (the earlier palette of green, vermillion, orange and blue: 8.6, green against blue under tritan vision)."""
    from matplotlib.colors import to_rgb
    from sddlib.viz.style import CATEGORY_HATCHES, OVERLAY_ALPHA
    worst = {}
    for vision, matrix in _CVD.items():
        for grey in (0.25, 0.6, 1.0):
            seen = {c: _lab(np.clip(matrix @ (OVERLAY_ALPHA * _linear(to_rgb(viz.CATEGORY_COLORS[c]))
                                              + (1 - OVERLAY_ALPHA) * _linear([grey] * 3)), 0, 1))
                    for c in CATEGORIES}
            for i, a in enumerate(CATEGORIES):
                for b in CATEGORIES[i + 1:]:
                    worst[(vision, grey, a, b)] = float(np.linalg.norm(seen[a] - seen[b]))
    pair = min(worst, key=worst.get)
    assert worst[pair] >= 15, f"{pair}: {worst[pair]:.1f}"
    assert all(CATEGORY_HATCHES[c] for c in CATEGORIES if c.startswith("complementary"))   # a cue without colour
    assert not any(CATEGORY_HATCHES[c] for c in CATEGORIES if c.startswith("consistent"))


def test_region_map_rows_say_why_they_were_picked_and_whether_the_teacher_was_right():
    preds = make_preds()
    frame = region_map_frame(preds, n=4)
    fig = viz.draw_region_map(frame, preds.images)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    whole = preds.teacher_regions[:, :, 0].argmax(1)              # each image's global top-1
    for label, image, kind in zip(labels, *frame.drop_duplicates("row")[["image", "kind"]].T.values):
        right = bool(whole[image] == preds.targets[image])
        assert label.startswith(f"#{image} target ") and ("teacher right" in label) == right, label
        assert ("teacher WRONG" in label) == (not right), label
        assert "picked" in label
        if kind == "global wrong, local right":                   # picked for such cells: always a teacher error
            assert "teacher WRONG" in label
    assert "right exactly when the global top-1 is right" in fig._suptitle.get_text()
    hatched = {p.get_hatch() for ax in fig.axes for p in ax.patches if p.get_hatch()}
    assert hatched == {"///", "\\\\\\"}                             # both complementary kinds drawn hatched


def test_figures_show_as_pictures_in_a_headless_kernel():
    """A figure made without pyplot, displayed by IPython's own formatter (what a papermill kernel uses): a PNG,
    not the text '<Figure size ...>'."""
    import base64
    from IPython.core.formatters import DisplayFormatter
    data, _ = DisplayFormatter().format(viz.plot_samples(_sample_loaders()))
    assert base64.b64decode(data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<Figure size" not in data["text/plain"]


def _sample_loaders():
    images = torch.rand(8, 3, 16, 16)
    targets = torch.tensor([0, 1] * 4)
    ds = TensorDataset(images, targets)
    ds.targets = targets.tolist()
    dls = DataLoaders(DataLoader(ds, bs=4), DataLoader(ds, bs=4))
    dls.info = DatasetInfo(name="toy", class_names=["a", "b"], mean=(0.5,) * 3, std=(0.5,) * 3, image_size=16)
    return dls
