"""How a run departs from its published experiment, so that no table sets a smoke test beside the paper.

The published experiment of a run is its params file, found by what it runs (so a notebook run with the
same values is recognised too): `params/<dataset>/<teacher>-<student>-<variant>.yaml`, or for a plain run
(M=[1]) without its own file the SD file run with M=[1] (the CIFAR-100 / CUB-200 baselines). A run is
*as published* when every value that decides its numbers (the fingerprint, less the seed and the paths of
teacher files; the optimizer and LR warm-up included, so an AdamW run is never beside the paper's SGD) equals
that experiment's, its teacher comes from where the paper's did (the authors' published teachers on CIFAR-100
and CUB-200, torchvision weights on ImageNet), and the switches that change the numbers are at their
documented defaults (pipeline "auto", precision "fp32"). `channels_last` and `compile` compute the same fp32
function (tests/test_acceleration.py) and are not departures. What BatchNorm normalises over is compared as
`bn_batch` (from the process count, the per-process batch and `sync_bn`): every published experiment normalised
over its whole batch, so a run on several processes without SyncBatchNorm departs ("BatchNorm batch 32 (64)"),
and `sync_bn` itself, which changes nothing on one process, is not compared. The keys of both sides are
compared, so a value that one side's fingerprint leaves out (a parameter added later, at its old value) is
compared too.

Datasets without a paper (digit_mosaic) are compared with their dataset protocol and the method's
defaults, with a teacher trained here under the dataset's teacher protocol. A run on a paper dataset whose
pair and method the paper has no params file for departs by `experiment`: nothing published to compare; so does
every run on a folder of your own images (`experiment`: your data).
"""
from __future__ import annotations

from pathlib import Path

from .config import DEFAULTS, TEACHER_SEED, RunConfig
from .data.spec import DATASETS
from .regions import PAPER_SCALES
from .shipped import shipped_folder

__all__ = ["PARAMS_DIR", "published_file", "published_config", "teacher_description", "departures",
           "vanilla_departures", "describe"]

PARAMS_DIR = shipped_folder("params")  # the repository's params/ (an installed wheel: its copy, sddlib/params/)
_SAME_AS = {"shipped with sddlib": "trained here"}
# A folder of your own images (a dataset without a published teacher) has no published experiment to be
# compared with.
YOUR_DATA = {"experiment": ["your data", None]}
# Values that say where a file is, not what is trained (the teacher's origin is compared as `teacher`), and
# sync_bn, compared through what it decides (`bn_batch`).
_NOT_COMPARED = {"seed", "teacher_ckpt", "teachers_dir", "teacher_epochs", "teacher_lr", "teacher_lr_decay_stages",
                 "teacher_optimizer", "teacher_lr_schedule", "teacher_lr_warmup_epochs", "teacher_weight_decay",
                 "sync_bn"}
_LABELS = {"bn_batch": "BatchNorm batch"}
# What the paper ran as M: any other list departs from it, on every dataset.
_PAPER_M = "[1], [1,2] or [1,2,4]"


def published_file(cfg: RunConfig) -> Path | None:
    """The params file of the published experiment `cfg` runs, or None."""
    folder = PARAMS_DIR / cfg.dataset
    for variant in (cfg.variant, f"sd_{cfg.method}"):
        path = folder / f"{cfg.teacher}-{cfg.student}-{variant}.yaml"
        if path.is_file():
            return path
    return None


def published_config(cfg: RunConfig) -> tuple[Path | None, RunConfig]:
    """The published experiment's configuration at `cfg`'s seed (and M, when its file is the SD file of a plain
    run); without a file, the dataset protocol with the method's defaults. It is one process's: the authors'
    2 x 256 ImageNet runs with SyncBatchNorm computed what one process with the batch of 512 computes."""
    import yaml
    path = published_file(cfg)
    values = yaml.safe_load(path.read_text()) if path else {
        "dataset": cfg.dataset, "teacher": cfg.teacher, "student": cfg.student, "method": cfg.method, "M": cfg["M"]}
    if path and path.stem.endswith(f"sd_{cfg.method}") and not cfg.decoupled:
        values["M"] = "[1]"
    return path, RunConfig.from_params({**values, "seed": cfg.seed})


def teacher_description(source: dict | None, dataset: str) -> str:
    """A few words on where a teacher came from: "published", "torchvision weights IMAGENET1K_V1",
    "checkpoint <path>", "trained here" or "shipped with sddlib" (with how its protocol differs from the
    dataset's)."""
    if not source:
        return "not recorded"
    kind = source.get("source")
    if kind == "torchvision weights":
        return f"torchvision weights {source.get('weights')}"
    if kind == "checkpoint":
        return f"checkpoint {source.get('path')}"
    if kind in ("trained here", "shipped") and dataset not in DATASETS:  # your data: no dataset protocol
        protocol = source.get("protocol") or {}
        return "fine-tuned here from ImageNet weights" if protocol.get("pretrained") else "trained here"
    if kind in ("trained here", "shipped"):
        standard = {**DATASETS[dataset].protocol, "clip_grad_norm": DEFAULTS["clip_grad_norm"], "subset": 0,
                    "seed": TEACHER_SEED}
        protocol = source.get("protocol") or {}
        changed = [f"{k} {_short(v)}" for k, v in protocol.items() if _short(v) != _short(standard.get(k))]
        return ("trained here" if kind == "trained here" else "shipped with sddlib") + (
            f" ({', '.join(changed)})" if changed else "")
    return str(kind)


def departures(cfg: RunConfig, teacher_source: dict | None) -> tuple[Path | None, dict]:
    """The published params file (or None) and {parameter: [value used, published value]} (empty: as published)."""
    spec = cfg.data_spec
    if spec.published_teacher is None:
        return None, YOUR_DATA
    path, published = published_config(cfg)
    out = {}
    if path is None and spec.in_paper:
        out["experiment"] = [f"{cfg.teacher}-{cfg.student}-{cfg.variant}", None]
    out.update(_compared(cfg, cfg.fingerprint, published, published.fingerprint))
    if cfg.scales not in PAPER_SCALES and "M" not in out:   # a dataset without a paper compares M with itself
        out["M"] = [cfg["M"], _PAPER_M]
    used = teacher_description(teacher_source, cfg.dataset)
    expected = spec.published_teacher
    if expected == "torchvision weights":
        expected = f"torchvision weights {published.teacher_weights}"
    if _SAME_AS.get(used, used) != expected:
        out["teacher"] = [used, expected]
    return path, out


def vanilla_departures(cfg: RunConfig, arch: str) -> tuple[Path | None, dict]:
    """A model trained alone: its solver and speed switches against the published experiment it was started from
    (the student's own solver) or, for another model, the dataset protocol."""
    if cfg.data_spec.published_teacher is None:
        return None, YOUR_DATA
    if arch == cfg.student:
        path, published = published_config(cfg)
    else:
        path, published = None, RunConfig.from_params({"dataset": cfg.dataset, "seed": cfg.seed, "student": arch})
    numeric = ("pipeline", "precision")
    return path, _compared(cfg, {**cfg.solver, **{k: cfg[k] for k in numeric}},
                           published, {**published.solver, **{k: published[k] for k in numeric}})


def _compared(cfg: RunConfig, ours: dict, published: RunConfig, theirs: dict) -> dict:
    """{key: [ours, theirs]} over the keys of both records: a record leaves out a parameter added later while it
    keeps its old value, and `bn_batch` while BatchNorm sees the whole batch, so a key missing on one side is read
    from that side's configuration."""
    def value(c: RunConfig, record: dict, key):
        return record[key] if key in record else c.bn_batch if key == "bn_batch" else c[key]
    out = {}
    for key in [*ours, *(k for k in theirs if k not in ours)]:
        if key not in _NOT_COMPARED and value(cfg, ours, key) != value(published, theirs, key):
            out[key] = [value(cfg, ours, key), value(published, theirs, key)]
    return out


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe(found: dict | None) -> str:
    """"as published", or the departures in a few words: "epochs 1 (240), subset 256 (0)"."""
    if found is None:
        return "departures not recorded"
    if not found:
        return "as published"
    return ", ".join(f"{_LABELS.get(key, key)} {_short(used)} "
                     f"({'none published' if published is None else _short(published)})"
                     for key, (used, published) in found.items())
