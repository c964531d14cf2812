"""Region predictions of a run, collected once: the teacher's and every student's region logits on
test images (the first ones, or a seeded class-stratified sample of the test set: `stratified_indices`), their
targets and the un-normalised images, checked once (`RegionPredictions`).

The figures' tidy frames (`sddlib.viz.frames`) are computed from these; nothing else runs a model.
"""
from __future__ import annotations

import contextlib
import itertools
import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..data import DatasetInfo, MosaicLayout, unnormalize
from ..losses import RegionMasks, region_masks
from ..regions import ScaleDecoupled, parse_scales

__all__ = ["RegionPredictions", "check_scales", "collect_region_predictions", "collect_run_predictions",
           "region_labels", "scale_slices", "stratified_indices", "FIGURE_SAMPLE_SIZE", "FIGURE_SAMPLE_SEED"]

# A run's figures and its region file are drawn from one class-stratified sample of this many test images, with this
# seed (`viz.run_figures.save_run_figures`, `viz.region_file.region_predictions`).
FIGURE_SAMPLE_SIZE = 512
FIGURE_SAMPLE_SEED = 0

_ACCEPTED = "use an increasing tuple of grid sizes starting at 1, e.g. (1,), (1, 2, 4) or (1, 2, 4, 7)"


def check_scales(scales, what="scales") -> tuple[int, ...]:
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
    scales = check_scales(scales)
    return [f"{s}x{s}" if s == 1 else f"{s}x{s} ({r},{c})" for s in scales for r in range(s) for c in range(s)]


def scale_slices(scales) -> dict[int, slice]:
    """The region indices of each scale: {1: slice(0, 1), 2: slice(1, 5), 4: slice(5, 21)}."""
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
        self.scales = check_scales(self.scales)
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
        scales = check_scales(self.scales)
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

    def categories(self) -> torch.Tensor:
        """B x N teacher category ids (index into `CATEGORIES`)."""
        return _category_ids(self.masks())

    def student_categories(self) -> torch.Tensor:
        """B x N category ids from the student's own predictions (its region top-1s against its own
        global top-1)."""
        if self.student_regions is None:
            raise ValueError("these predictions hold no student_regions; collect them with a student.")
        return _category_ids(region_masks(self.student_regions, self.targets))


def check_preds(preds, name="preds", need_student=False) -> RegionPredictions:
    if not isinstance(preds, RegionPredictions):
        raise ValueError(f"{name} must be a RegionPredictions (from collect_region_predictions), "
                         f"got {type(preds).__name__}.")
    preds.validate()
    if need_student and preds.student_regions is None:
        raise ValueError(f"{name} holds no student_regions; collect it with a student model.")
    return preds


# --------------------------------------------------------------------------------------------------
# one pass over a loader


def _plain(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    return t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def stratified_indices(targets, n: int, seed: int = 0) -> list[int]:
    """`n` positions of a test set spread over its classes, whatever order it is stored in (class by class for
    ImageNet, CUB-200 or an image folder): each class's positions in a seeded random order, taken in turns (one
    of every class, then a second of every class, ...), so `n` images cover min(n, classes) classes; sorted."""
    targets = torch.as_tensor(targets).flatten().tolist()
    by_class: dict[int, list[int]] = {}
    for i in torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed)).tolist():
        by_class.setdefault(int(targets[i]), []).append(i)
    turns = itertools.chain.from_iterable(itertools.zip_longest(*by_class.values()))
    return sorted(itertools.islice((i for i in turns if i is not None), n))


def _loader_targets(dl) -> torch.Tensor:
    """Every target of `dl` in loader order: the dataset's `targets` when it has them, else one pass over dl."""
    targets = getattr(getattr(dl, "dataset", None), "targets", None)
    if targets is not None and len(targets) == len(dl.dataset):
        return torch.as_tensor(targets)
    return torch.cat([_plain(batch[1]).flatten().cpu() for batch in dl])


@contextlib.contextmanager
def evaluating(models, device):
    """The models in eval mode on `device` for the duration; their train/eval modes and devices restored after."""
    states = [(m, m.training, _model_device(m)) for m in models]
    try:
        for m in models:
            m.eval().to(device)
        yield
    finally:
        for m, training, dev in states:
            m.train(training).to(dev)


def batches_at(dl, positions=None):
    """The (x, y) batches of `dl` as plain tensors, holding only the images at `positions` (sorted loader
    positions; None: every image); stops after the last position."""
    wanted = None if positions is None else torch.as_tensor(list(positions), dtype=torch.long)
    start = 0
    for batch in dl:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(f"the DataLoader must yield (images, targets) batches, got {type(batch).__name__}.")
        x, y = _plain(batch[0]), _plain(batch[1])
        start, first = start + len(y), start
        if wanted is not None:
            keep = wanted[(wanted >= first) & (wanted < start)] - first
            x, y = x[keep.to(x.device)], y[keep.to(y.device)]
        if len(y):
            yield x, y
        if wanted is not None and (not len(wanted) or start > wanted[-1]):
            return


def _collect(models, dl, scales, positions, device):
    """One pass over dl: inputs, targets and region logits of every model (CPU) at `positions` (sorted loader
    positions; None: all), in eval mode."""
    wrapped = [ScaleDecoupled(m, scales) for m in models]
    xs, ys, regions = [], [], [[] for _ in models]
    with evaluating(models, device), torch.inference_mode():
        for x, y in batches_at(dl, positions):
            xd = x.to(device)
            for out, sd in zip(regions, wrapped):
                out.append(sd(xd)[1].float().cpu())
            xs.append(x.cpu())
            ys.append(y.cpu().long())
    if not ys:
        raise ValueError("the DataLoader yielded no images; pass a non-empty validation loader.")
    return torch.cat(xs), torch.cat(ys), [torch.cat(r) for r in regions]


def _images(x: torch.Tensor, info: DatasetInfo | None) -> torch.Tensor:
    """Inputs back in [0, 1]: un-normalised with the dataset's mean/std; without them, images already
    in [0, 1] are kept and others stretched to [0, 1] per image."""
    x = x.float()
    if info is not None:
        if len(info.mean) not in (1, x.shape[1]) or len(info.std) not in (1, x.shape[1]):
            raise ValueError(f"info.mean and info.std must have 1 or {x.shape[1]} values (one per channel), "
                             f"got {len(info.mean)} and {len(info.std)}.")
        return unnormalize(x, info.mean, info.std)
    if float(x.min()) >= 0 and float(x.max()) <= 1:
        return x
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp(min=1e-8)


def _layouts(dl, positions):
    """Per-image digit layouts when `dl` reads a digit-mosaic dataset in dataset order, else None."""
    from torch.utils.data import DataLoader, SequentialSampler
    layout = getattr(getattr(dl, "dataset", None), "layout", None)
    in_order = (isinstance(dl.sampler, SequentialSampler) if isinstance(dl, DataLoader)
                else getattr(dl, "shuffle", True) is False)
    if not isinstance(layout, MosaicLayout) or not in_order or len(layout) <= max(positions):
        return None
    return [layout[i] for i in positions]


def _check_inputs(teacher, students: dict, dl, scales, max_items, info):
    """Every check of a collection, up front, each one sentence."""
    if not isinstance(teacher, nn.Module):
        raise ValueError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}.")
    for name, model in students.items():
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"{name} must be a torch.nn.Module or None, got {type(model).__name__}.")
    if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1):
        raise ValueError(f"max_items must be a positive integer or None, got {max_items!r}.")
    if info is not None and not isinstance(info, DatasetInfo):
        raise ValueError(f"info must be a sddlib.data.DatasetInfo or None, got {type(info).__name__}.")
    from fastai.data.core import DataLoaders
    if isinstance(dl, DataLoaders):
        info = info if info is not None else getattr(dl, "info", None)
        info = info if isinstance(info, DatasetInfo) else None
        dl = dl.valid
    if dl is None or not hasattr(dl, "__iter__"):
        raise ValueError(f"dl must be a DataLoader of (images, targets) batches, got {type(dl).__name__}.")
    return check_scales(scales), dl, info


def collect_region_predictions(teacher, student, dl, scales, *, info: DatasetInfo | None = None,
                               max_items=None, sample_seed=None, device=None) -> RegionPredictions:
    """Run `ScaleDecoupled(teacher/student, scales)` in eval mode under inference_mode over `dl`.

    `dl` is a fastai or torch DataLoader of (x, y) batches, or a fastai DataLoaders (its `valid` is
    used, and its `dls.info` when `info` is not given). `info` names the classes and undoes the
    normalisation; without it classes are named by their ids (see `_images` for the pixels).
    `max_items` images: the first ones in loader order, or with `sample_seed` (an int) a class-stratified
    sample drawn with that seed (`stratified_indices`). `device` defaults to the teacher's. `student` may be None.
    """
    return collect_run_predictions(teacher, student, dl, scales, info=info, max_items=max_items,
                                   sample_seed=sample_seed, device=device)[0]


def collect_run_predictions(teacher, student, dl, scales, *, baseline_student=None, info=None, max_items=None,
                            sample_seed=None, device=None) -> tuple[RegionPredictions, RegionPredictions | None]:
    """The predictions of a run in one pass over the loader: (teacher with `student`, teacher with
    `baseline_student` or None). Arguments as `collect_region_predictions`."""
    scales, dl, info = _check_inputs(teacher, {"student": student, "baseline_student": baseline_student},
                                     dl, scales, max_items, info)
    device = torch.device(device) if device is not None else _model_device(teacher)
    students = [m for m in (student, baseline_student) if m is not None]
    positions = None
    if max_items is not None:
        positions = (range(max_items) if sample_seed is None
                     else stratified_indices(_loader_targets(dl), max_items, sample_seed))
    x, y, regions = _collect([teacher, *students], dl, scales, positions, device)
    names = list(info.class_names) if info is not None else [str(i) for i in range(regions[0].shape[1])]
    common = dict(images=_images(x, info), targets=y, teacher_regions=regions[0], scales=scales, class_names=names,
                  layouts=_layouts(dl, list(positions or range(len(y)))[:len(y)]))
    found = iter(regions[1:])
    preds = RegionPredictions(student_regions=next(found) if student is not None else None, **common)
    plain = RegionPredictions(student_regions=next(found), **common) if baseline_student is not None else None
    return preds, plain
