"""The region predictions of a run, saved once beside its figures (`figures/region_predictions.npz`) so that the
explorer (`sddlib.viz.explore`) opens any finished run without a model, a GPU or the data set.

Per test image of the figures' class-stratified sample and per region (scales ascending, row-major, 0 = the
global region): the teacher's and the students' top-k classes and probabilities, their logit of the target
and of their own top-1, and the teacher's region category; per image the picture (at most 112 pixels a side,
uint8) and its target. Top-k, not every logit: a CIFAR-100 run's file stays small (`benchmarks/results.md`).

    save_region_file(preds, path, baseline=plain, complementary_weight=cfg.complementary_weight)
    data = load_region_file(path)                  # RegionFile: numpy arrays, no torch model
    data = region_predictions("outputs/cifar100/<run>")   # the run's file; made from its saved models if missing
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..regions import COMPLEMENTARY_WEIGHT, complementary
from .predictions import FIGURE_SAMPLE_SEED, FIGURE_SAMPLE_SIZE, RegionPredictions, collect_run_predictions

__all__ = ["REGION_FILE", "TOP_K", "RegionFile", "save_region_file", "load_region_file", "region_predictions"]

REGION_FILE = "region_predictions.npz"
TOP_K = 5
_MAX_SIDE = 112  # pixels: the explorer draws the picture at about 300 px; the grid matters more than detail
MODELS = ("teacher", "student", "baseline")


@dataclass
class RegionFile:
    """A run's saved region predictions (numpy). `models` lists which of teacher / student / baseline are in it;
    per model `topk_classes[m]`, `topk_probs[m]` (N x R x k), `target_logit[m]`, `top1_logit[m]` (N x R)."""
    images: np.ndarray
    targets: np.ndarray
    class_names: list
    scales: tuple
    categories: np.ndarray
    complementary_weight: float
    topk_classes: dict
    topk_probs: dict
    target_logit: dict
    top1_logit: dict

    @property
    def models(self) -> list[str]:
        return [m for m in MODELS if m in self.topk_classes]

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def weights(self) -> np.ndarray:
        """N x R weight of each region's term in the SD loss: complementary regions `complementary_weight`, others 1."""
        return np.where(complementary(self.categories), self.complementary_weight, 1.0)


def _small(images: torch.Tensor) -> np.ndarray:
    """B x C x H x W in [0, 1] -> B x h x w x 3 uint8 with the longer side at most _MAX_SIDE."""
    h, w = images.shape[-2:]
    if max(h, w) > _MAX_SIDE:
        size = (round(h * _MAX_SIDE / max(h, w)), round(w * _MAX_SIDE / max(h, w)))
        images = F.interpolate(images.float(), size=size, mode="area")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _model_arrays(regions: torch.Tensor, targets: torch.Tensor, k: int) -> dict:
    probs = regions.float().softmax(dim=1)                       # B x K x R
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    top1 = regions.argmax(dim=1, keepdim=True)
    return {"topk_classes": top.indices.permute(0, 2, 1).to(torch.int16).numpy(),
            "topk_probs": top.values.permute(0, 2, 1).to(torch.float16).numpy(),
            "target_logit": regions.gather(1, targets.view(-1, 1, 1).expand(-1, 1, regions.shape[2]))[:, 0]
            .float().numpy(),
            "top1_logit": regions.gather(1, top1)[:, 0].float().numpy()}


def save_region_file(preds: RegionPredictions, path, *, baseline: RegionPredictions | None = None,
                     complementary_weight: float = COMPLEMENTARY_WEIGHT, k: int = TOP_K) -> Path:
    """Write `preds` (teacher and student) and the plain-method student of `baseline` (same images) to `path`."""
    arrays = {"images": _small(preds.images), "targets": preds.targets.numpy().astype(np.int32),
              "categories": preds.categories().numpy().astype(np.int8)}
    sources = {"teacher": preds.teacher_regions, "student": preds.student_regions,
               "baseline": None if baseline is None else baseline.student_regions}
    for model, regions in sources.items():
        if regions is not None:
            arrays.update({f"{model}_{key}": value for key, value in _model_arrays(regions, preds.targets, k).items()})
    meta = {"class_names": list(preds.class_names), "scales": list(preds.scales),
            "complementary_weight": float(complementary_weight)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, meta=np.array(json.dumps(meta)), **arrays)
    partial.replace(path)
    return path


def load_region_file(path) -> RegionFile:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        per_model = {key: {m: data[f"{m}_{key}"] for m in MODELS if f"{m}_{key}" in data.files}
                     for key in ("topk_classes", "topk_probs", "target_logit", "top1_logit")}
        return RegionFile(images=data["images"], targets=data["targets"], class_names=meta["class_names"],
                          scales=tuple(meta["scales"]), categories=data["categories"],
                          complementary_weight=meta["complementary_weight"], **per_model)


def region_predictions(run_dir) -> RegionFile:
    """The region predictions of a finished distillation run: its saved file, or (a run recorded before runs
    saved one) made now from its saved student and teacher on the figures' sample, and saved."""
    from ..config import ConfigError
    run_dir = Path(run_dir)
    path = run_dir / "figures" / REGION_FILE
    if path.is_file():
        return load_region_file(path)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"run_dir={str(run_dir)!r} is not a finished run (no readable metrics.json); give a run "
                          "folder such as outputs/digit_mosaic/<run>/.") from None
    if metrics.get("status") != "complete" or metrics.get("variant") in ("alone", "teacher"):
        raise ConfigError(f"run_dir={str(run_dir)!r} holds no complete distillation run (status "
                          f"{metrics.get('status')!r}, variant {metrics.get('variant')!r}); region predictions need "
                          "a teacher and a student.")
    teacher_file = (metrics.get("teacher_source") or {}).get("path")
    missing = [str(p) for p in (run_dir / "student.pth", Path(teacher_file) if teacher_file else None)
               if p is None or not p.is_file()]
    if missing and (metrics.get("teacher_source") or {}).get("source") != "torchvision weights":
        raise ConfigError(f"run_dir={str(run_dir)!r} has no {REGION_FILE} and cannot make one: "
                          f"{', '.join(m for m in missing if m != 'None') or 'the teacher file is not recorded'} "
                          "is missing; run the experiment again (force=True) to write it.")
    return _from_saved_models(run_dir, metrics, path)


def _from_saved_models(run_dir: Path, metrics: dict, path: Path) -> RegionFile:
    from ..config import RunConfig
    from ..data import get_dataloaders
    from ..run_models import load_run_models, loader_options
    cfg = RunConfig.from_params(metrics["params"])
    dls = get_dataloaders(cfg.dataset, cfg.data_dir, bs=cfg.batch_size, subset=cfg.subset, num_workers=0,
                          seed=cfg.seed, device="cpu", **loader_options(cfg))
    student, teacher = load_run_models(run_dir, dls.info.num_classes, cfg=cfg, with_teacher=True)
    preds, _ = collect_run_predictions(teacher, student, dls.valid, cfg.scales, info=dls.info,
                                       max_items=FIGURE_SAMPLE_SIZE, sample_seed=FIGURE_SAMPLE_SEED)
    save_region_file(preds, path, complementary_weight=cfg.complementary_weight)
    return load_region_file(path)
