"""Figures that show *why* scale-decoupled distillation works: per-region teacher predictions that
agree with the global one (consistent) or disagree in an informative way (complementary).

    preds = collect_region_predictions(teacher, student, dls.valid, (1, 2, 4), max_items=512)
    plot_region_map(preds)            # fig 1: images with their region grids coloured by category
    plot_region_logits(preds)         # fig 2: region x class logits of one image, teacher vs student
    plot_category_shares(preds)       # fig 3a: share of regions per category and scale
    plot_category_history(cb.history, (1, 2, 4))   # fig 3b: the same shares per training epoch
    plot_per_class(preds)             # fig 4: classes with the most complementary regions
    plot_agreement(preds_plain, preds)  # fig 5: student/teacher top-1 agreement per finest-grid region
    save_run_figures(teacher, student, dls, scales, cb, out_dir)  # all of them as PNGs

Every plot function returns a `matplotlib.figure.Figure` (made without pyplot, so nothing is left
open in pyplot's registry and a notebook shows it once) and writes a PNG when given `path=`.
Colours are the Okabe-Ito palette, one fixed colour per category in every figure (`CATEGORY_COLORS`).

Each figure also carries what it drew as `fig.sdd_data` (plain Python / numpy values), for tests
and for notebooks that want the numbers:

  plot_region_map      indices (dataset positions shown, per row), kinds (why each was chosen:
                       "global right, local wrong" / "global wrong, local right" / "consistent"),
                       targets, and per scale s: categories[s] (rows x s x s category ids, ids index
                       CATEGORIES), top1[s] (class ids) and prob[s] (teacher top-1 probabilities)
  plot_region_logits   index, target, classes (column class ids: target, then k others),
                       class_names, row_labels, teacher (N x columns logits), student (same or
                       None), categories (N teacher category ids)
  plot_category_shares scales, counts / shares: {"teacher"|"student": {scale: [4 values]}}
  plot_category_history epochs, shares: {scale: {category: [one value per epoch]}}
  plot_per_class       classes, class_names, gr_lw, gw_lr (complementary-region counts), images
  plot_agreement       scale, sd / plain (s x s agreement fractions; plain None without a baseline),
                       sd_global / plain_global (agreement of the 1x1 region)

Category ids follow `CATEGORIES` (the `RegionMasks` order): 0 consistent, both right;
1 consistent, both wrong; 2 complementary, global right / local wrong; 3 complementary, global
wrong / local right. Student categories are defined by the student's own predictions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from matplotlib import patheffects
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from .data import unnormalize
from .distill import CATEGORIES
from .losses import RegionMasks, region_masks
from .regions import ScaleDecoupled, parse_scales

__all__ = ["CATEGORIES", "CATEGORY_COLORS", "CATEGORY_LABELS", "RegionPredictions", "region_labels",
           "collect_region_predictions", "plot_region_map", "plot_region_logits", "plot_category_shares",
           "plot_category_history", "plot_per_class", "plot_agreement", "save_run_figures", "FIGURE_FILES",
           "show_run_figure"]

DPI = 120
# Okabe-Ito: distinguishable with the common colour-vision deficiencies, fixed per category.
CATEGORY_COLORS = {
    "consistent_right": "#009E73",      # bluish green
    "consistent_wrong": "#D55E00",      # vermillion
    "complementary_gr_lw": "#E69F00",   # orange
    "complementary_gw_lr": "#0072B2",   # blue
}
CATEGORY_LABELS = {
    "consistent_right": "consistent: global right, region right",
    "consistent_wrong": "consistent: global wrong, region wrong",
    "complementary_gr_lw": "complementary: global right, region wrong",
    "complementary_gw_lr": "complementary: global wrong, region right",
}
_TEXT_ON = {"consistent_right": "white", "consistent_wrong": "white", "complementary_gr_lw": "black",
            "complementary_gw_lr": "white"}
FIGURE_FILES = {
    "region_map": "fig1_region_map.png",
    "region_logits": "fig2_region_logits.png",
    "category_shares": "fig3a_category_shares.png",
    "category_history": "fig3b_category_history.png",
    "per_class": "fig4_per_class.png",
    "agreement": "fig5_agreement.png",
}
_ACCEPTED = "use (1,), (1, 2) or (1, 2, 4)"


# --------------------------------------------------------------------------------------------------
# inputs


def _check_scales(scales, what="scales") -> tuple[int, ...]:
    """parse_scales, but a set without 1 is named as missing the global region first."""
    values = scales
    if isinstance(scales, str):
        values = tuple(int(v) for v in re.findall(r"\d+", scales))
    try:
        has_global = any(v == 1 and not isinstance(v, bool) for v in values)
    except TypeError:
        has_global = True   # not iterable: parse_scales says what is wrong
    if not has_global:
        raise ValueError(f"{what} {scales!r} must include the global 1x1 region (region 0 of every "
                         f"region tensor); {_ACCEPTED}.")
    return parse_scales(scales)


def region_labels(scales) -> list[str]:
    """Row labels in region order: '1x1', '2x2 (0,0)', '2x2 (0,1)', ... ('(row,col)' of the cell)."""
    scales = _check_scales(scales)
    return [f"{s}x{s}" if s == 1 else f"{s}x{s} ({r},{c})" for s in scales for r in range(s) for c in range(s)]


def _scale_slices(scales) -> dict[int, slice]:
    out, start = {}, 0
    for s in scales:
        out[s] = slice(start, start + s * s)
        start += s * s
    return out


def _category_ids(masks: RegionMasks) -> torch.Tensor:
    """B x N category ids (index into CATEGORIES); the four masks partition every region."""
    return torch.stack([m.to(torch.int64) for m in masks]).argmax(0)


@dataclass
class RegionPredictions:
    """Everything the figures need, on the CPU.

    images           B x 3 x H x W in [0, 1] (un-normalised; 1 channel is accepted too)
    targets          B class ids
    teacher_regions  B x K x N teacher region logits (region order of `sddlib.regions`, 0 = global)
    student_regions  B x K x N student region logits, or None
    scales           the scale set the regions were pooled at, e.g. (1, 2, 4)
    class_names      K names
    layouts          optional per-image dicts of where the digits of a digit mosaic lie
                     (`sddlib.data.MosaicLayout[i]`); drawn on the images of figure 1
    """
    images: torch.Tensor
    targets: torch.Tensor
    teacher_regions: torch.Tensor
    student_regions: torch.Tensor | None
    scales: tuple[int, ...]
    class_names: list[str]
    layouts: list[dict] | None = None

    def __post_init__(self):
        self.scales = _check_scales(self.scales)
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
        self.validate()

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.teacher_regions.shape[1])

    def validate(self) -> None:
        """Raise ValueError (one sentence) when the fields do not fit together."""
        scales = _check_scales(self.scales)
        n_regions = sum(s * s for s in scales)
        for name in ("images", "targets", "teacher_regions"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise ValueError(f"RegionPredictions.{name} must be a torch.Tensor, got "
                                 f"{type(getattr(self, name)).__name__}.")
        t = self.teacher_regions
        if t.dim() != 3 or t.shape[2] != n_regions:
            raise ValueError(f"teacher_regions must be B x classes x {n_regions} (regions of scales "
                             f"{list(scales)}: the sum of s^2), got shape {tuple(t.shape)}.")
        B, K, _ = t.shape
        if B == 0:
            raise ValueError("RegionPredictions holds no images; collect at least one.")
        if self.targets.dim() != 1 or self.targets.shape[0] != B or self.targets.is_floating_point():
            raise ValueError(f"targets must hold one integer class id per image ({B}), got shape "
                             f"{tuple(self.targets.shape)} of {self.targets.dtype}.")
        if int(self.targets.min()) < 0 or int(self.targets.max()) >= K:
            raise ValueError(f"targets must lie in [0, {K - 1}] for {K} classes, got values from "
                             f"{int(self.targets.min())} to {int(self.targets.max())}.")
        if self.student_regions is not None and (not isinstance(self.student_regions, torch.Tensor)
                                                 or self.student_regions.shape != t.shape):
            shape = getattr(self.student_regions, "shape", type(self.student_regions).__name__)
            raise ValueError(f"student_regions must be None or a tensor shaped like teacher_regions "
                             f"{tuple(t.shape)}, got {tuple(shape) if not isinstance(shape, str) else shape}.")
        im = self.images
        if im.dim() != 4 or im.shape[0] != B or im.shape[1] not in (1, 3):
            raise ValueError(f"images must be {B} x 3 x H x W (one per target), got shape {tuple(im.shape)}.")
        if self.class_names is None or len(self.class_names) != K:
            got = None if self.class_names is None else len(self.class_names)
            raise ValueError(f"class_names must name all {K} classes of the region logits, got {got} names.")
        if self.layouts is not None and len(self.layouts) != B:
            raise ValueError(f"layouts must hold one entry per image ({B}) or be None, got {len(self.layouts)}.")

    def masks(self) -> RegionMasks:
        """Teacher-defined region categories (B x N each), as the SD loss uses them."""
        return region_masks(self.teacher_regions, self.targets)

    def student_masks(self) -> RegionMasks:
        """The student's own categories: its region top-1s against its own global top-1."""
        if self.student_regions is None:
            raise ValueError("these predictions hold no student_regions; collect them with a student.")
        return region_masks(self.student_regions, self.targets)


def _check_preds(preds, name="preds", need_student=False) -> RegionPredictions:
    if not isinstance(preds, RegionPredictions):
        raise ValueError(f"{name} must be a RegionPredictions (from collect_region_predictions), "
                         f"got {type(preds).__name__}.")
    preds.validate()
    if need_student and preds.student_regions is None:
        raise ValueError(f"{name} holds no student_regions; collect it with a student model.")
    return preds


# --------------------------------------------------------------------------------------------------
# collecting predictions


def _plain(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    return t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t


def _lookup(name, *objs):
    for obj in objs:
        if obj is None:
            continue
        try:
            value = getattr(obj, name)
        except Exception:   # fastai delegates unknown attributes to the dataset; anything may fail
            continue
        if value is not None:
            return value
    return None


def _is_sequential(dl) -> bool:
    if isinstance(dl, torch.utils.data.DataLoader):
        return isinstance(dl.sampler, torch.utils.data.SequentialSampler)
    return getattr(dl, "shuffle", True) is False


def _unnormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    x = x.float()
    if mean is not None and std is not None:
        c = x.shape[1]
        m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        s = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if m.numel() not in (1, c) or s.numel() not in (1, c):
            raise ValueError(f"mean and std must have 1 or {c} values (one per channel), got "
                             f"{m.numel()} and {s.numel()}.")
        return unnormalize(x, m, s)
    if float(x.min()) >= 0 and float(x.max()) <= 1:
        return x
    lo = x.amin(dim=(1, 2, 3), keepdim=True)   # no statistics known: stretch each image to [0, 1]
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp(min=1e-8)


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _collect(models, dl, scales, max_items, device):
    """One pass over dl: un-normalised inputs, targets and region logits of every model (CPU)."""
    wrapped = [ScaleDecoupled(m, scales) for m in models]
    states = [(m, m.training, _model_device(m)) for m in models]
    xs, ys, regions, count = [], [], [[] for _ in models], 0
    try:
        for m in models:
            m.eval().to(device)
        with torch.inference_mode():
            for batch in dl:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError("the DataLoader must yield (images, targets) batches, got "
                                     f"{type(batch).__name__}.")
                x, y = _plain(batch[0]), _plain(batch[1])
                if max_items is not None:
                    x, y = x[: max_items - count], y[: max_items - count]
                xd = x.to(device)
                for out, sd in zip(regions, wrapped):
                    out.append(sd(xd)[1].float().cpu())
                xs.append(x.cpu())
                ys.append(y.cpu().long())
                count += len(y)
                if max_items is not None and count >= max_items:
                    break
    finally:
        for m, training, dev in states:
            m.train(training).to(dev)
    if not count:
        raise ValueError("the DataLoader yielded no images; pass a non-empty validation loader.")
    return torch.cat(xs), torch.cat(ys), [torch.cat(r) for r in regions]


def _resolve_loader(dl):
    from fastai.data.core import DataLoaders
    if isinstance(dl, DataLoaders):
        return dl, dl.valid
    return None, dl


def _meta(dl, dls, class_names, mean, std, num_classes):
    if class_names is None:
        class_names = _lookup("class_names", dl, dls)
    if class_names is None:
        vocab = _lookup("vocab", dl, getattr(dl, "dataset", None), dls)
        if vocab is None:
            vocab = _lookup("classes", getattr(dl, "dataset", None))
        if vocab is not None and len(vocab) == num_classes:
            class_names = list(vocab)
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    if mean is None and std is None:
        mean, std = _lookup("mean", dl, dls), _lookup("std", dl, dls)
    if mean is None and std is None:
        norm = _find_normalize(getattr(dl, "dataset", None))
        if norm is not None:
            mean, std = norm.mean, norm.std
    return [str(c) for c in class_names], mean, std


def _find_normalize(dataset):
    """The torchvision Normalize a dataset applies (`sddlib.data` datasets), else None."""
    from torchvision.transforms import Compose, Normalize
    candidates = [getattr(dataset, "normalize", None)]
    transform = getattr(dataset, "transform", None)
    candidates += list(transform.transforms) if isinstance(transform, Compose) else [transform]
    return next((t for t in candidates if isinstance(t, Normalize)), None)


def _layouts(dl, n):
    """Per-image digit layouts of a digit-mosaic loader read in dataset order, else None."""
    layout = _lookup("layout", getattr(dl, "dataset", None))
    if layout is None or not _is_sequential(dl):
        return None
    try:
        if len(layout) < n:
            return None
        return [layout[i] for i in range(n)]
    except Exception:
        return None


def collect_region_predictions(teacher, student, dl, scales, *, class_names=None, mean=None, std=None,
                               max_items=None, device=None) -> RegionPredictions:
    """Run `ScaleDecoupled(teacher/student, scales)` in eval mode under inference_mode over `dl`.

    `dl` is a fastai or torch DataLoader of (x, y) batches, or a fastai DataLoaders (its `valid` is
    used). Explicit `class_names`, `mean` and `std` win; otherwise they come from the loader's
    attributes (those of a DataLoaders from `sddlib.data`), then from its dataset's `vocab` and
    `Normalize` transform. Images are un-normalised with mean/std (without them, images already in
    [0, 1] are kept and others stretched to [0, 1] per image). `device` defaults to the teacher's;
    the models' train/eval modes and devices are restored afterwards. `student` may be None.
    """
    scales = _check_scales(scales)
    if not isinstance(teacher, nn.Module):
        raise ValueError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}.")
    if student is not None and not isinstance(student, nn.Module):
        raise ValueError(f"student must be a torch.nn.Module or None, got {type(student).__name__}.")
    if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1):
        raise ValueError(f"max_items must be a positive integer or None, got {max_items!r}.")
    dls, dl = _resolve_loader(dl)
    if dl is None or not hasattr(dl, "__iter__"):
        raise ValueError(f"dl must be a DataLoader of (images, targets) batches, got {type(dl).__name__}.")
    device = torch.device(device) if device is not None else _model_device(teacher)
    models = [teacher] + ([student] if student is not None else [])
    x, y, regions = _collect(models, dl, scales, max_items, device)
    names, mean, std = _meta(dl, dls, class_names, mean, std, regions[0].shape[1])
    return RegionPredictions(images=_unnormalize(x, mean, std), targets=y, teacher_regions=regions[0],
                             student_regions=regions[1] if student is not None else None, scales=scales,
                             class_names=names, layouts=_layouts(dl, len(y)))


# --------------------------------------------------------------------------------------------------
# drawing helpers


def _new_figure(width, height) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained", facecolor="white")


def _finish(fig: Figure, path, data: dict) -> Figure:
    fig.sdd_data = data
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, facecolor="white")
    return fig


def _category_handles(categories=CATEGORIES):
    return [Patch(facecolor=CATEGORY_COLORS[c], edgecolor="none", label=CATEGORY_LABELS[c]) for c in categories]


def _short(name: str, width: int) -> str:
    name = name.replace("_", " ")
    return name if len(name) <= width else name[: width - 1] + "…"


_OUTLINE = [patheffects.withStroke(linewidth=1.8, foreground="black")]
_THIN_OUTLINE = [patheffects.withStroke(linewidth=1.2, foreground="black")]


def _image(preds: RegionPredictions, i: int) -> np.ndarray:
    img = preds.images[i].float().clamp(0, 1).permute(1, 2, 0).numpy()
    return img[..., 0] if img.shape[-1] == 1 else img


def _grey(img: np.ndarray) -> np.ndarray:
    """Luminance, lifted towards white, so category colours on top stay recognisable."""
    lum = img if img.ndim == 2 else img @ np.array([0.299, 0.587, 0.114], dtype=img.dtype)
    return 0.25 + 0.75 * lum


def _check_index(index, n, name="index") -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
        raise ValueError(f"{name} must be an image position in [0, {n - 1}], got {index!r}.")
    return int(index) % n


def _check_path(path):
    if path is not None and not isinstance(path, (str, Path)):
        raise ValueError(f"path must be a file name (str or Path) or None, got {type(path).__name__}.")


# --------------------------------------------------------------------------------------------------
# figure 1: region map


def _pick_images(cats: torch.Tensor, n: int) -> tuple[list[int], list[str]]:
    """Images with complementary regions of both kinds first (most first, alternating), one fully
    consistent image as contrast when n >= 4, then the rest in order."""
    gr_lw, gw_lr = (cats == 2).sum(1), (cats == 3).sum(1)
    order = lambda counts: [int(i) for i in torch.argsort(-counts, stable=True) if counts[i] > 0]  # noqa: E731
    a, b = order(gr_lw), order(gw_lr)
    plain = [i for i in range(len(cats)) if gr_lw[i] == 0 and gw_lr[i] == 0]
    picked, kinds = [], []
    reserve = 1 if n >= 4 and plain else 0
    while len(picked) < n - reserve and (a or b):
        for queue, kind in ((a, "global right, local wrong"), (b, "global wrong, local right")):
            while queue and queue[0] in picked:
                queue.pop(0)
            if queue and len(picked) < n - reserve:
                picked.append(queue.pop(0))
                kinds.append(kind)
    for i in plain:
        if len(picked) >= n:
            break
        picked.append(i)
        kinds.append("consistent")
    return picked, kinds


def _draw_layout(ax, layout: dict):
    if not isinstance(layout, dict):
        return
    boxes = [(layout.get("target_box"), "-")]
    boxes += [(d.get("box"), "--") for d in layout.get("distractors", [])]
    for box, style in boxes:
        if box is None or min(box) < 0:
            continue
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white",
                               linestyle=style, linewidth=1.0, path_effects=_OUTLINE))


def plot_region_map(preds: RegionPredictions, n: int = 6, *, indices=None, path=None) -> Figure:
    """Figure 1: per row an image and, per scale, the image under its region grid; each cell is
    coloured by its teacher category and labelled with the teacher's top-1 class and probability."""
    preds = _check_preds(preds)
    _check_path(path)
    B = len(preds)
    cats = _category_ids(preds.masks())
    if indices is None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive number of images, got {n!r}.")
        indices, kinds = _pick_images(cats, min(n, B))
    else:
        try:
            indices = [_check_index(i, B, "each of indices") for i in indices]
        except TypeError:
            raise ValueError(f"indices must be a list of image positions, got {indices!r}.") from None
        if not indices:
            raise ValueError("indices must name at least one image.")
        kinds = ["chosen"] * len(indices)
    probs = preds.teacher_regions.float().softmax(1)
    top_p, top1 = probs.max(1)                                    # B x N
    slices = _scale_slices(preds.scales)
    names = preds.class_names
    rows, cols = len(indices), 1 + len(preds.scales)
    fig = _new_figure(max(2.25 * cols + 0.6, 7.5), 2.25 * rows + 1.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    data = {"indices": list(indices), "kinds": list(kinds), "targets": [int(preds.targets[i]) for i in indices],
            "categories": {}, "top1": {}, "prob": {}}
    font = {1: 8.5, 2: 7.5, 4: 6.5}
    width = {1: 16, 2: 10, 4: 7}
    for s in preds.scales:
        sl = slices[s]
        data["categories"][s] = cats[indices][:, sl].reshape(rows, s, s).numpy()
        data["top1"][s] = top1[indices][:, sl].reshape(rows, s, s).numpy()
        data["prob"][s] = top_p[indices][:, sl].reshape(rows, s, s).numpy()
    for r, i in enumerate(indices):
        img = _image(preds, i)
        H, W = img.shape[:2]
        interp = "nearest" if max(H, W) <= 64 else "antialiased"
        target = int(preds.targets[i])
        grey = _grey(img)
        for c in range(cols):
            ax = axes[r, c]
            shown = img if c == 0 else grey
            ax.imshow(shown, extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation=interp,
                      cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"#{i}  target: {_short(names[target], 18)}", fontsize=8)
                if preds.layouts is not None:
                    _draw_layout(ax, preds.layouts[i])
                if r == 0:
                    ax.set_title("image", fontsize=9)
                continue
            s = preds.scales[c - 1]
            if r == 0:
                ax.set_title(f"{s}x{s} regions" if s > 1 else "1x1 (global)", fontsize=9)
            cat_grid, cls_grid, p_grid = (data[k][s][r] for k in ("categories", "top1", "prob"))
            cw, ch = W / s, H / s
            for rr in range(s):
                for cc in range(s):
                    cat = CATEGORIES[int(cat_grid[rr, cc])]
                    ax.add_patch(Rectangle((cc * cw - 0.5, rr * ch - 0.5), cw, ch,
                                           facecolor=to_rgba(CATEGORY_COLORS[cat], 0.6),
                                           edgecolor="white", linewidth=1.0))
                    label = f"{_short(names[int(cls_grid[rr, cc])], width[s])}\n{p_grid[rr, cc]:.0%}"
                    ax.text((cc + 0.5) * cw - 0.5, (rr + 0.5) * ch - 0.5, label, ha="center", va="center",
                            fontsize=font.get(s, 6), color="white", linespacing=1.1, fontweight="bold",
                            path_effects=_OUTLINE if s < 4 else _THIN_OUTLINE)
            ax.set_xlim(-0.5, W - 0.5)
            ax.set_ylim(H - 0.5, -0.5)
    handles = _category_handles()
    if preds.layouts is not None:
        handles += [Line2D([], [], color="black", linestyle="-", label="target digit"),
                    Line2D([], [], color="black", linestyle="--", label="distractor digit")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("Teacher's top-1 class and probability per region, coloured by whether the region\n"
                 "agrees with the global (1x1) prediction about the target (consistent) or not (complementary)",
                 fontsize=10)
    return _finish(fig, path, data)


# --------------------------------------------------------------------------------------------------
# figure 2: region logits of one image


def _logit_columns(preds, index, k) -> list[int]:
    """The target, then the k other classes that are the teacher's top-1 in the most regions (ties
    and classes that are nobody's top-1: highest teacher logit over the regions)."""
    t = preds.teacher_regions[index].float()               # K x N
    target = int(preds.targets[index])
    wins = torch.bincount(t.argmax(0), minlength=t.shape[0]).float()
    score = wins * (t.abs().max() * 4 + 1) + t.max(1).values   # wins first, then the best logit
    score[target] = -float("inf")
    others = score.argsort(descending=True)[: min(k, t.shape[0] - 1)].tolist()
    return [target] + others


def _heatmap(ax, values: np.ndarray, cmap, vmin, vmax, fmt, fontsize, bold=None):
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    norm = im.norm
    cm = im.get_cmap()
    for (r, c), v in np.ndenumerate(values):
        rgb = cm(norm(v))[:3]
        light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.5
        ax.text(c, r, fmt(v), ha="center", va="center", fontsize=fontsize, color="black" if light else "white",
                fontweight="bold" if bold is not None and bold[r, c] else "normal")
    return im


def plot_region_logits(preds: RegionPredictions, index=None, *, k: int = 5, path=None) -> Figure:
    """Figure 2: for one image (default: the one with the most complementary teacher regions), the
    region x class logits of teacher and student side by side, for the target and the `k` classes
    that are the teacher's top-1 in the most regions; the target column is outlined and each
    region's top-1 is bold. The strip on the left gives each region's teacher category."""
    preds = _check_preds(preds)
    _check_path(path)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive number of classes, got {k!r}.")
    cats = _category_ids(preds.masks())
    if index is None:
        index = int(torch.argmax((cats >= 2).sum(1)))
    index = _check_index(index, len(preds))
    cols = _logit_columns(preds, index, k)
    target = int(preds.targets[index])
    labels = region_labels(preds.scales)
    names = preds.class_names
    panels = [("teacher", preds.teacher_regions)]
    if preds.student_regions is not None:
        panels.append(("student", preds.student_regions))
    N, C = len(labels), len(cols)
    fig = _new_figure(1.4 + len(panels) * (0.62 * C + 1.3), max(0.26 * N + 2.2, 4.2))
    gs = fig.add_gridspec(1, 1 + len(panels), width_ratios=[0.35 / C] + [1.0] * len(panels))
    strip = fig.add_subplot(gs[0, 0])
    row_cats = cats[index].numpy()
    strip.imshow(np.array([[to_rgba(CATEGORY_COLORS[CATEGORIES[c]]) for c in row_cats]]).transpose(1, 0, 2),
                 aspect="auto", interpolation="nearest")
    strip.set_yticks(range(N), labels, fontsize=7)
    strip.set_xticks([])
    strip.set_ylabel("region (scale, row, col)", fontsize=8)
    strip.set_title("teacher\ncategory", fontsize=7)
    data = {"index": index, "target": target, "classes": cols, "class_names": [names[c] for c in cols],
            "row_labels": labels, "teacher": None, "student": None, "categories": row_cats.tolist()}
    xt = [("★ " if c == target else "") + _short(names[c], 14) for c in cols]
    for p, (who, regions) in enumerate(panels):
        ax = fig.add_subplot(gs[0, 1 + p], sharey=strip)
        full = regions[index].float()                                      # K x N
        values = full[cols].T.numpy()                                      # N x C
        bold = np.zeros_like(values, dtype=bool)
        top = full.argmax(0).tolist()
        for r, c in enumerate(top):
            if c in cols:
                bold[r, cols.index(c)] = True
        im = _heatmap(ax, values, "viridis", None, None, lambda v: f"{v:.1f}", 6.5, bold)
        ax.set_xticks(range(C), xt, rotation=40, ha="right", fontsize=7.5)
        ax.tick_params(axis="y", labelleft=False)
        ax.get_xticklabels()[0].set_fontweight("bold")
        ax.add_patch(Rectangle((-0.5, -0.5), 1, N, fill=False, edgecolor="black", linewidth=3.2))
        ax.add_patch(Rectangle((-0.5, -0.5), 1, N, fill=False, edgecolor="white", linewidth=1.4))
        for s_end in np.cumsum([s * s for s in preds.scales])[:-1]:
            ax.axhline(s_end - 0.5, color="white", linewidth=1.5)
        ax.set_title(f"{who} logits", fontsize=9)
        ax.set_xlabel("class (★ = target)", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.06, pad=0.02, label="logit")
        data[who] = values
    fig.legend(handles=_category_handles(), loc="outside lower center", ncol=2, fontsize=7.5, frameon=False)
    fig.suptitle(f"Region logits of image #{index} (target: {names[target]}): the target's logit\n"
                 "rises in some regions and falls in others (bold = each region's top-1)", fontsize=10)
    return _finish(fig, path, data)


# --------------------------------------------------------------------------------------------------
# figure 3: category shares (evaluation set, and per training epoch)


def _counts_per_scale(cats: torch.Tensor, scales) -> dict[int, list[int]]:
    sl = _scale_slices(scales)
    return {s: [int((cats[:, sl[s]] == j).sum()) for j in range(len(CATEGORIES))] for s in scales}


def _text_color(cat):
    return _TEXT_ON[cat]


def plot_category_shares(preds: RegionPredictions, *, path=None) -> Figure:
    """Figure 3a: per scale, the share of (image, region) pairs in each category, teacher vs trained
    student (the student's categories come from its own predictions), as stacked bars."""
    preds = _check_preds(preds)
    _check_path(path)
    who = {"teacher": _category_ids(preds.masks())}
    if preds.student_regions is not None:
        who["student"] = _category_ids(preds.student_masks())
    counts = {w: _counts_per_scale(c, preds.scales) for w, c in who.items()}
    shares = {w: {s: [v / max(sum(cs), 1) for v in cs] for s, cs in per.items()} for w, per in counts.items()}
    fig = _new_figure(max(1.6 + 1.5 * len(preds.scales) * len(who), 6.5), 4.8)
    ax = fig.add_subplot()
    xs, ticks = [], []
    for g, s in enumerate(preds.scales):
        for j, w in enumerate(who):
            x = g * (len(who) + 0.7) + j
            bottom = 0.0
            for cat, v in zip(CATEGORIES, shares[w][s]):
                ax.bar(x, v, bottom=bottom, width=0.8, color=CATEGORY_COLORS[cat], edgecolor="white", linewidth=0.5)
                if v >= 0.05:
                    ax.text(x, bottom + v / 2, f"{v:.0%}", ha="center", va="center", fontsize=7.5,
                            color=_text_color(cat))
                bottom += v
            comp = shares[w][s][2] + shares[w][s][3]
            ax.text(x, 1.01, f"compl.\n{comp:.0%}", ha="center", va="bottom", fontsize=7.5)
            xs.append(x)
            ticks.append(f"{w}\n{s}x{s}")
    ax.set_xticks(xs, ticks, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_ylabel("share of regions")
    ax.set_xlabel("model and scale")
    ax.spines[["top", "right"]].set_visible(False)
    fig.legend(handles=_category_handles(), loc="outside lower center", ncol=2, fontsize=7.5, frameon=False)
    fig.suptitle(f"Region categories over {len(preds)} test images, per scale\n"
                 "(1x1 is the global region, always consistent)", fontsize=10)
    return _finish(fig, path, {"scales": list(preds.scales), "counts": counts, "shares": shares})


def _history_rows(history) -> list[dict]:
    try:
        import pandas as pd
        if isinstance(history, pd.DataFrame):
            return history.to_dict("records")
    except ImportError:  # pragma: no cover
        pass
    if hasattr(history, "history") and not isinstance(history, (list, tuple)):
        history = history.history      # a DistillationCallback
    if not isinstance(history, (list, tuple)) or not all(isinstance(r, dict) for r in history):
        raise ValueError("history must be DistillationCallback.history (a list of per-epoch dicts) or "
                         f"its stats_frame(), got {type(history).__name__}.")
    return list(history)


def plot_category_history(history, scales, *, path=None) -> Figure:
    """Figure 3b: per training epoch, the share of regions in each teacher category (one panel per
    scale, from `DistillationCallback.history` or `.stats_frame()`); the dashed line is the total
    complementary share, the part of the SD loss that gets the extra weight."""
    scales = _check_scales(scales)
    _check_path(path)
    rows = _history_rows(history)
    if not rows:
        raise ValueError("history is empty; fit at least one epoch with a DistillationCallback first.")
    needed = ["epoch"] + [f"{c}@{s}" for s in scales for c in CATEGORIES]
    missing = [k for k in needed if any(k not in r for r in rows)]
    if missing:
        raise ValueError(f"history lacks {missing[:3]}{' ...' if len(missing) > 3 else ''}; pass the history "
                         f"of a DistillationCallback run with scales {list(scales)}.")
    epochs = [int(r["epoch"]) for r in rows]
    shares = {s: {c: [float(r[f"{c}@{s}"]) for r in rows] for c in CATEGORIES} for s in scales}
    fig = _new_figure(max(0.8 + 3.4 * len(scales), 6.5), 3.9)
    axes = fig.subplots(1, len(scales), squeeze=False, sharey=True)[0]
    for ax, s in zip(axes, scales):
        for c in CATEGORIES:
            ax.plot(epochs, shares[s][c], marker="o", markersize=3.5, color=CATEGORY_COLORS[c],
                    label=CATEGORY_LABELS[c])
        total = np.add(shares[s]["complementary_gr_lw"], shares[s]["complementary_gw_lr"])
        ax.plot(epochs, total, linestyle="--", color="black", linewidth=1.2, label="complementary (total)")
        ax.set_title(f"{s}x{s} regions" if s > 1 else "1x1 (global)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("share of regions\n(training batches)")
    handles = _category_handles() + [Line2D([], [], color="black", linestyle="--", label="complementary (total)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3 if len(scales) > 1 else 1, fontsize=7.5,
               frameon=False)
    fig.suptitle("Teacher region categories per training epoch", fontsize=10)
    return _finish(fig, path, {"epochs": epochs, "shares": shares})


# --------------------------------------------------------------------------------------------------
# figure 4: classes with the most complementary regions


def plot_per_class(preds: RegionPredictions, *, top: int = 15, path=None) -> Figure:
    """Figure 4: the `top` target classes whose test images have the most complementary teacher
    regions (all scales), split into global right / region wrong and global wrong / region right."""
    preds = _check_preds(preds)
    _check_path(path)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive number of classes, got {top!r}.")
    cats = _category_ids(preds.masks())
    K = preds.num_classes
    gr_lw = torch.zeros(K, dtype=torch.long).index_add_(0, preds.targets, (cats == 2).sum(1))
    gw_lr = torch.zeros(K, dtype=torch.long).index_add_(0, preds.targets, (cats == 3).sum(1))
    images = torch.bincount(preds.targets, minlength=K)
    total = gr_lw + gw_lr
    order = [int(c) for c in torch.argsort(-total, stable=True) if total[c] > 0][:top]
    names = [preds.class_names[c] for c in order]
    data = {"classes": order, "class_names": names, "gr_lw": [int(gr_lw[c]) for c in order],
            "gw_lr": [int(gw_lr[c]) for c in order], "images": [int(images[c]) for c in order]}
    fig = _new_figure(7.2, 1.9 + 0.3 * max(len(order), 3))
    ax = fig.add_subplot()
    if not order:
        ax.text(0.5, 0.5, f"no complementary regions at scales {list(preds.scales)}", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        y = np.arange(len(order))
        a, b = np.array(data["gr_lw"]), np.array(data["gw_lr"])
        ax.barh(y, a, color=CATEGORY_COLORS["complementary_gr_lw"], label=CATEGORY_LABELS["complementary_gr_lw"])
        ax.barh(y, b, left=a, color=CATEGORY_COLORS["complementary_gw_lr"],
                label=CATEGORY_LABELS["complementary_gw_lr"])
        for yi, (n_img, t) in enumerate(zip(data["images"], a + b)):
            ax.text(t, yi, f"  {n_img} img", va="center", fontsize=7, color="0.3")
        ax.set_yticks(y, [_short(n, 24) for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, (a + b).max() * 1.15)
        ax.set_xlabel("complementary regions (over the class's test images)")
        ax.spines[["top", "right"]].set_visible(False)
        fig.legend(handles=_category_handles(CATEGORIES[2:]), loc="outside lower center", ncol=1, fontsize=7.5,
                   frameon=False)
    fig.suptitle("Classes whose images have the most complementary teacher regions", fontsize=10)
    return _finish(fig, path, data)


# --------------------------------------------------------------------------------------------------
# figure 5: local agreement of student and teacher


def _agreement(preds: RegionPredictions, s: int) -> tuple[np.ndarray, float]:
    sl = _scale_slices(preds.scales)[s]
    same = (preds.student_regions.argmax(1) == preds.teacher_regions.argmax(1)).float()   # B x N
    return same[:, sl].mean(0).reshape(s, s).numpy(), float(same[:, 0].mean())


def plot_agreement(preds_plain, preds_sd, *, path=None) -> Figure:
    """Figure 5: per region position of the finest grid, how often the student's top-1 equals the
    teacher's: a plain-KD (M=[1]) student next to the SD student, and their difference. Both
    predictions must come from the same images and scales; `preds_plain=None` draws the SD panel only."""
    preds_sd = _check_preds(preds_sd, "preds_sd", need_student=True)
    _check_path(path)
    if preds_plain is not None:
        preds_plain = _check_preds(preds_plain, "preds_plain", need_student=True)
        if preds_plain.scales != preds_sd.scales or preds_plain.teacher_regions.shape != preds_sd.teacher_regions.shape:
            raise ValueError(f"preds_plain {tuple(preds_plain.teacher_regions.shape)} at scales "
                             f"{list(preds_plain.scales)} and preds_sd {tuple(preds_sd.teacher_regions.shape)} at "
                             f"{list(preds_sd.scales)} differ; collect both on the same images and scales.")
    s = max(preds_sd.scales)
    sd, sd_global = _agreement(preds_sd, s)
    plain, plain_global = _agreement(preds_plain, s) if preds_plain is not None else (None, None)
    panels = ([("plain KD student (M=[1])", plain, plain_global)] if plain is not None else [])
    panels.append((f"SD student (M=[{','.join(map(str, preds_sd.scales))}])", sd, sd_global))
    n_axes = len(panels) + (1 if plain is not None else 0)
    fig = _new_figure(max(0.6 + 3.3 * n_axes, 7.5), 3.9)
    axes = fig.subplots(1, n_axes, squeeze=False)[0]
    fs = 9 if s <= 2 else 8
    im = None
    for ax, (title, values, glob) in zip(axes, panels):
        im = _heatmap(ax, values, "cividis", 0.0, 1.0, lambda v: f"{v:.0%}", fs)
        ax.set_title(f"{title}\nglobal (1x1) agreement {glob:.0%}", fontsize=8.5)
    if plain is not None:
        diff = sd - plain
        lim = max(float(np.abs(diff).max()), 0.05)
        dim = _heatmap(axes[-1], diff, "PuOr", -lim, lim, lambda v: f"{v * 100:+.0f}", fs)
        axes[-1].set_title(f"SD minus plain\n(percentage points; global {100 * (sd_global - plain_global):+.0f})",
                           fontsize=8.5)
        fig.colorbar(dim, ax=axes[-1], fraction=0.05, pad=0.03, label="difference (points)",
                     format=lambda v, _: f"{100 * v:+.0f}")
    for ax in axes:
        ax.set_xticks(range(s), [str(c) for c in range(s)], fontsize=8)
        ax.set_yticks(range(s), [str(r) for r in range(s)], fontsize=8)
        ax.set_xlabel("region column")
    axes[0].set_ylabel("region row")
    fig.colorbar(im, ax=list(axes[:len(panels)]), fraction=0.05, pad=0.03, label="top-1 agreement",
                 format=lambda v, _: f"{v:.0%}")
    if plain is not None:
        axes[-1].set_ylabel("region row")
    fig.suptitle(f"How often student and teacher agree on each {s}x{s} region's top-1 class "
                 f"({len(preds_sd)} test images)", fontsize=10)
    return _finish(fig, path, {"scale": s, "sd": sd, "plain": plain, "sd_global": sd_global,
                               "plain_global": plain_global})


# --------------------------------------------------------------------------------------------------
# all figures of a run


def save_run_figures(teacher, student, dls, scales, distill_cb, out_dir, *, baseline_student=None,
                     max_items: int = 512) -> list[Path]:
    """Compute region predictions on `dls.valid` (first `max_items` images) once and write every
    figure as a PNG into `out_dir` (created); returns the written paths (`FIGURE_FILES` names).

    `distill_cb` is the run's DistillationCallback (its history gives figure 3b; None skips it).
    `baseline_student` is the plain (M=[1]) student of the same configuration, compared with
    `student` in figure 5 on the finest grid of `scales`; None draws the SD student alone.
    """
    scales = _check_scales(scales)
    if getattr(dls, "valid", None) is None:
        raise ValueError(f"dls must be a fastai DataLoaders with a valid loader, got {type(dls).__name__}.")
    if not isinstance(student, nn.Module):
        raise ValueError(f"student must be a torch.nn.Module, got {type(student).__name__}.")
    if baseline_student is not None and not isinstance(baseline_student, nn.Module):
        raise ValueError(f"baseline_student must be a torch.nn.Module or None, got {type(baseline_student).__name__}.")
    if not isinstance(out_dir, (str, Path)):
        raise ValueError(f"out_dir must be a folder path, got {type(out_dir).__name__}.")
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise ValueError(f"max_items must be a positive integer, got {max_items!r}.")
    if not isinstance(teacher, nn.Module):
        raise ValueError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}.")
    history = None
    if distill_cb is not None:
        history = _history_rows(distill_cb)
    _, dl = _resolve_loader(dls)
    models = [teacher, student] + ([baseline_student] if baseline_student is not None else [])
    x, y, regions = _collect(models, dl, scales, max_items, _model_device(teacher))
    names, mean, std = _meta(dl, dls, None, None, None, regions[0].shape[1])
    common = dict(images=_unnormalize(x, mean, std), targets=y, teacher_regions=regions[0], scales=scales,
                  class_names=names, layouts=_layouts(dl, len(y)))
    preds = RegionPredictions(student_regions=regions[1], **common)
    plain = RegionPredictions(student_regions=regions[2], **common) if baseline_student is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(key, make):
        target = out / FIGURE_FILES[key]
        make(target)
        written.append(target)

    save("region_map", lambda p: plot_region_map(preds, path=p))
    save("region_logits", lambda p: plot_region_logits(preds, path=p))
    save("category_shares", lambda p: plot_category_shares(preds, path=p))
    if history:
        save("category_history", lambda p: plot_category_history(history, scales, path=p))
    save("per_class", lambda p: plot_per_class(preds, path=p))
    save("agreement", lambda p: plot_agreement(plain, preds, path=p))
    return written


def show_run_figure(run_dir, key: str) -> None:
    """Display one figure that `save_run_figures` wrote for a run (in a notebook), or say it is missing."""
    from IPython.display import Image, display

    if key not in FIGURE_FILES:
        raise ValueError(f"figure {key!r} is unknown; use one of {sorted(FIGURE_FILES)}.")
    path = Path(run_dir) / "figures" / FIGURE_FILES[key]
    display(Image(filename=str(path)) if path.exists() else f"(no {path.name}: this run did not draw it)")
