"""Figures of sddlib.viz: what is drawn (fig.sdd_data and the artists) for hand-made region logits
with known categories, the PNGs written, a small real distillation run, and rejected inputs."""
import matplotlib

matplotlib.use("Agg")

import fastai.callback.progress  # noqa: F401,E402  (adds Learner.no_bar)
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from fastai.data.core import DataLoaders  # noqa: E402
from fastai.data.load import DataLoader  # noqa: E402
from fastai.learner import Learner  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from sddlib import viz  # noqa: E402
from sddlib.distill import CATEGORIES, DistillationCallback  # noqa: E402
from sddlib.models import create_model  # noqa: E402
from sddlib.viz import (RegionPredictions, collect_region_predictions, plot_agreement,  # noqa: E402
                        plot_category_history, plot_category_shares, plot_per_class, plot_region_logits,
                        plot_region_map, region_labels, save_run_figures)

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


def assert_png(path, fig):
    assert path.is_file()
    h, w = mpimg.imread(path).shape[:2]
    fw, fh = fig.get_size_inches() * viz.DPI
    assert (h, w) == (round(fh), round(fw))


# --- hand-made predictions with known categories ---------------------------------------------------

def test_category_shares_counts_and_bars(tmp_path):
    preds = make_preds()
    fig = plot_category_shares(preds, path=tmp_path / "sub" / "shares.png")
    assert_png(tmp_path / "sub" / "shares.png", fig)
    assert fig.sdd_data["counts"]["teacher"] == EXPECTED_TEACHER
    s_top1 = preds.student_regions.argmax(1)
    cats = category_table(s_top1, preds.targets)
    expected_student = {1: [int((cats[:, :1] == j).sum()) for j in range(4)],
                        2: [int((cats[:, 1:5] == j).sum()) for j in range(4)],
                        4: [int((cats[:, 5:] == j).sum()) for j in range(4)]}
    assert fig.sdd_data["counts"]["student"] == expected_student
    assert fig.sdd_data["shares"]["teacher"][4] == pytest.approx([28 / 64, 26 / 64, 4 / 64, 6 / 64])
    # the bars drawn: heights per category colour, teacher's 4x4 bar is the 5th of 6 bars
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 3 * 2 * 4
    teacher_4x4 = bars[4 * 4: 5 * 4]
    for bar, cat, count in zip(teacher_4x4, CATEGORIES, EXPECTED_TEACHER[4]):
        assert bar.get_height() == pytest.approx(count / 64)
        assert bar.get_facecolor() == pytest.approx(to_rgba(viz.CATEGORY_COLORS[cat]))


def test_region_map_picks_complementary_images_and_colours_cells(tmp_path):
    preds = make_preds()
    fig = plot_region_map(preds, n=4, path=tmp_path / "map.png")
    assert_png(tmp_path / "map.png", fig)
    d = fig.sdd_data
    assert d["indices"][:2] == [0, 1] and set(d["indices"]) <= {0, 1, 2, 3} and len(d["indices"]) == 4
    assert d["kinds"][:2] == ["global right, local wrong", "global wrong, local right"]
    assert "consistent" in d["kinds"]
    np.testing.assert_array_equal(d["categories"][2][0], [[CR, CR], [GRLW, GRLW]])
    np.testing.assert_array_equal(d["categories"][4][1].reshape(-1), [GWLR] * 6 + [CW] * 10)
    np.testing.assert_array_equal(d["top1"][2][0], [[0, 0], [1, 2]])
    assert d["prob"][1][0, 0, 0] == pytest.approx(torch.softmax(preds.teacher_regions[0, :, 0], 0).max().item())
    # the 2x2 panel of row 0 (axes: 4 per row) carries four cells coloured by category
    ax = fig.axes[2]
    cells = [p for p in ax.patches if isinstance(p, Rectangle)]
    colours = [viz.CATEGORY_COLORS[CATEGORIES[c]] for c in (CR, CR, GRLW, GRLW)]
    assert [tuple(round(v, 3) for v in p.get_facecolor()[:3]) for p in cells] == \
        [tuple(round(v, 3) for v in to_rgba(c)[:3]) for c in colours]
    texts = [t.get_text() for t in ax.texts]
    assert texts[2].startswith("one\n") and texts[2].endswith("%")


def test_region_map_explicit_indices():
    fig = plot_region_map(make_preds(), indices=[3, 2])
    assert fig.sdd_data["indices"] == [3, 2]
    assert (fig.sdd_data["categories"][4][0] == CW).all() and (fig.sdd_data["categories"][4][1] == CR).all()


def test_region_logits_default_image_and_values(tmp_path):
    preds = make_preds()
    fig = plot_region_logits(preds, k=2, path=tmp_path / "logits.png")
    assert_png(tmp_path / "logits.png", fig)
    d = fig.sdd_data
    assert d["index"] == 1 and d["target"] == 1          # image 1 has 7 complementary regions, image 0 has 6
    assert d["classes"] == [1, 2, 3]        # target, most regions' top-1, then the highest logit
    assert d["row_labels"] == region_labels(SCALES) and d["row_labels"][:2] == ["1x1", "2x2 (0,0)"]
    np.testing.assert_allclose(d["teacher"], preds.teacher_regions[1][d["classes"]].T.numpy())
    np.testing.assert_allclose(d["student"], preds.student_regions[1][d["classes"]].T.numpy())
    assert d["categories"][:2] == [CW, GWLR]
    assert fig.axes[1].get_xticklabels()[0].get_text().startswith("★ one")


def test_per_class_counts(tmp_path):
    fig = plot_per_class(make_preds(), path=tmp_path / "per_class.png")
    assert_png(tmp_path / "per_class.png", fig)
    d = fig.sdd_data
    assert d["classes"] == [1, 0] and d["class_names"] == ["one", "zero"]
    assert d["gr_lw"] == [0, 6] and d["gw_lr"] == [7, 0] and d["images"] == [1, 1]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["one", "zero"]
    widths = sorted(round(p.get_width()) for p in ax.patches)
    assert widths == [0, 0, 6, 7]


def test_agreement_matrices(tmp_path):
    sd = make_preds()
    t, _ = known_top1()
    plain_top1 = t.clone()
    plain_top1[:2, 5:] = 3 - plain_top1[:2, 5:].clamp(max=3)   # images 0, 1 disagree on every 4x4 region
    plain_top1[:2, 5:] = torch.where(plain_top1[:2, 5:] == t[:2, 5:], (t[:2, 5:] + 1) % K, plain_top1[:2, 5:])
    plain = make_preds(student_top1=plain_top1)
    fig = plot_agreement(plain, sd, path=tmp_path / "agree.png")
    assert_png(tmp_path / "agree.png", fig)
    d = fig.sdd_data
    expected_sd = np.ones((4, 4))
    expected_sd[0, 0] = 0.75
    np.testing.assert_allclose(d["sd"], expected_sd)
    np.testing.assert_allclose(d["plain"], np.full((4, 4), 0.5))
    assert d["scale"] == 4 and d["sd_global"] == 1.0 and d["plain_global"] == 1.0
    assert "75%" in [t.get_text() for t in fig.axes[1].texts]
    single = plot_agreement(None, sd)
    assert single.sdd_data["plain"] is None and len([a for a in single.axes if a.images]) == 1


def test_agreement_uses_finest_available_scale():
    t, targets = known_top1()
    preds = RegionPredictions(torch.rand(4, 3, 8, 8), targets, logits_from_top1(t[:, :5]),
                              logits_from_top1(t[:, :5]), (1, 2), ["a", "b", "c", "d"])
    fig = plot_agreement(None, preds)
    assert fig.sdd_data["scale"] == 2 and fig.sdd_data["sd"].shape == (2, 2)


def test_category_history_from_list_and_frame(tmp_path):
    import pandas as pd
    rows = [{"epoch": e, "ce": 1.0, "distill": 1.0, "warmup_factor": 1.0,
             **{f"{c}@{s}": v for s in SCALES for c, v in zip(CATEGORIES, (0.5, 0.3, 0.1 * e, 0.2 - 0.1 * e))}}
            for e in (1, 2)]
    fig = plot_category_history(rows, SCALES, path=tmp_path / "hist.png")
    assert_png(tmp_path / "hist.png", fig)
    assert fig.sdd_data["epochs"] == [1, 2]
    assert fig.sdd_data["shares"][2]["complementary_gr_lw"] == pytest.approx([0.1, 0.2])
    assert len(fig.axes) == 3 and all(len(line.get_xdata()) == 2 for line in fig.axes[0].lines)
    frame = plot_category_history(pd.DataFrame(rows), SCALES)
    assert frame.sdd_data == fig.sdd_data


def test_teacher_only_predictions():
    preds = make_preds(with_student=False)
    assert list(plot_category_shares(preds).sdd_data["counts"]) == ["teacher"]
    assert plot_region_logits(preds, index=0).sdd_data["student"] is None
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

def make_dls(n=64, num_classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randn(n, 3, 32, 32, generator=g)
    ds = TensorDataset(x, y)
    dls = DataLoaders(DataLoader(ds, bs=32, shuffle=True), DataLoader(ds, bs=32), device="cpu")
    dls.class_names = [f"class_{i}" for i in range(num_classes)]
    dls.num_classes = num_classes
    dls.mean, dls.std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    return dls, x, y


def test_real_run_writes_every_figure(tmp_path):
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
    hist = plot_category_history(cb.history, SCALES)
    assert hist.sdd_data["epochs"] == [1, 2]
    assert all(len(line.get_xdata()) == 2 for ax in hist.axes for line in ax.lines)
    assert student.training == was_training                                # mode restored
    # the predictions themselves: un-normalised images, eval-mode region logits, max_items honoured
    student.train()
    preds = collect_region_predictions(teacher, student, dls.valid, SCALES, class_names=dls.class_names,
                                       mean=dls.mean, std=dls.std, max_items=40)
    assert student.training and len(preds) == 40 and preds.class_names == dls.class_names
    assert preds.teacher_regions.shape == (40, 10, 21)
    mean, std = torch.tensor(dls.mean).view(1, 3, 1, 1), torch.tensor(dls.std).view(1, 3, 1, 1)
    torch.testing.assert_close(preds.images, (x[:40] * std + mean).clamp(0, 1))
    with torch.inference_mode():
        expected = teacher.eval()(x[:40])
    torch.testing.assert_close(preds.teacher_regions[:, :, 0], expected, rtol=1e-4, atol=1e-4)
    # a whole DataLoaders is accepted too (its valid loader is used)
    whole = collect_region_predictions(teacher, None, dls, (1,), max_items=8)
    assert len(whole) == 8 and whole.class_names == dls.class_names
    torch.testing.assert_close(whole.images, preds.images[:8])


def test_digit_layouts_are_drawn_when_the_loader_keeps_dataset_order():
    class Mosaics(TensorDataset):   # duck-types sddlib.data's digit mosaics: a per-image `layout`
        layout = [{"label": i % 10, "target_box": (2, 2, 18, 18),
                   "distractors": [{"label": 1, "box": (20, 20, 30, 30), "scan": 0}]} for i in range(12)]

    torch.manual_seed(0)
    ds = Mosaics(torch.randn(12, 3, 32, 32), torch.arange(12) % 10)
    teacher = create_model("resnet8", num_classes=10)
    ordered = collect_region_predictions(teacher, None, torch.utils.data.DataLoader(ds, batch_size=5), (1, 2))
    assert ordered.layouts == Mosaics.layout
    fig = plot_region_map(ordered, indices=[3])
    boxes = [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert [b.get_linestyle() for b in boxes] == ["-", "--"]
    shuffled = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=True)
    assert collect_region_predictions(teacher, None, shuffled, (1, 2)).layouts is None


def test_show_run_figure_displays_a_saved_png_or_says_it_is_missing(tmp_path, capsys):
    from sddlib.viz import FIGURE_FILES, show_run_figure
    (tmp_path / "figures").mkdir()
    fig = plot_category_history([{"epoch": 1, **{f"{c}@1": 0.25 for c in CATEGORIES}}], (1,),
                                path=tmp_path / "figures" / FIGURE_FILES["category_history"])
    assert fig is not None
    show_run_figure(tmp_path, "category_history")
    show_run_figure(tmp_path, "region_map")
    out = capsys.readouterr().out
    assert "IPython.core.display.Image" in out and "no fig1_region_map.png" in out
    with pytest.raises(ValueError, match="figure 'fig9' is unknown"):
        show_run_figure(tmp_path, "fig9")
