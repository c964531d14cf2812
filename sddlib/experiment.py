"""Run one experiment from a flat parameter dict (a papermill parameters cell or a params/ file):
data -> teacher -> student -> fastai Learner with `DistillationCallback` -> outputs/<dataset>/<run>/.

The training protocol is the authors' (mdistiller trainer): SGD with momentum 0.9, no dampening,
no Nesterov, L2 weight decay on every parameter (BN and biases included), the LR multiplied by
rate^k from epoch stage_k + 1 on (epochs counted from 1), gradient-norm clipping at 40, test top-1 and
top-5 after every epoch; both the best epoch (what papers report) and the last are recorded.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.callback.training import GradientClip
from fastai.learner import Learner
from fastai.metrics import accuracy, top_k_accuracy
from fastai.optimizer import OptimWrapper
from fastai.torch_core import set_seed

from .data import get_dataloaders
from .distill import METHOD_DEFAULTS, DistillationCallback
from .models import create_model
from .regions import parse_scales
from .teachers import (CheckpointError, cifar100_teacher_path, fetch_cifar100_teachers, load_checkpoint,
                       save_checkpoint, teacher_cache_path)

__all__ = ["PROTOCOLS", "DEFAULTS", "resolve_params", "notebook_params", "run_name", "run_dir", "vanilla_dir",
           "load_metrics", "run", "run_vanilla", "train_teacher", "get_teacher", "build_learner", "evaluate",
           "StepLR", "EpochLogger", "top5_accuracy"]

# Solver of each dataset as the authors ran it (their configs merged with mdistiller's defaults).
# Student-specific learning rates (0.01 for ShuffleNet/MobileNet students) live in params/ files.
PROTOCOLS = {
    "cifar100": dict(epochs=240, batch_size=64, lr=0.05, lr_decay_stages=[150, 180, 210], lr_decay_rate=0.1,
                     weight_decay=5e-4, momentum=0.9),
    "cub200": dict(epochs=240, batch_size=64, lr=0.05, lr_decay_stages=[150, 180, 210], lr_decay_rate=0.1,
                   weight_decay=5e-4, momentum=0.9),
    # 512: the authors ran 2 processes x 256 with SyncBatchNorm (BN and each step over 512 images)
    "imagenet": dict(epochs=100, batch_size=512, lr=0.2, lr_decay_stages=[30, 60, 90], lr_decay_rate=0.1,
                     weight_decay=1e-4, momentum=0.9),
    # the embedded demo data: a short schedule with the same shape (two decays near the end)
    "digit_mosaic": dict(epochs=8, batch_size=64, lr=0.05, lr_decay_stages=[5, 7], lr_decay_rate=0.1,
                         weight_decay=5e-4, momentum=0.9),
}
STEMS = {"cifar100": "cifar", "digit_mosaic": "cifar", "cub200": "cub", "imagenet": "torchvision"}

# Every parameter a notebook or params file may set; None means "the dataset's or method's default".
DEFAULTS = dict(
    dataset="cifar100", teacher="resnet32x4", student="ShuffleV1", method="dkd", M="[1,2,4]",
    epochs=None, batch_size=None, lr=None, lr_decay_stages=None, lr_decay_rate=None, weight_decay=None,
    momentum=None, ce_weight=None, kd_weight=None, warmup_epochs=None, T=None, alpha=None, beta=None,
    gamma=None, exclude_target=False, complementary_weight=2.0, clip_grad_norm=40.0,
    seed=0, data_dir="data", output_dir="outputs", teacher_ckpt="", teacher_weights="", teacher_epochs=None,
    subset=0, device="auto", num_workers=None, run_name="", figures=True, progress=True,
)
_LOSS_KEYS = {"kd": ("T",), "dkd": ("alpha", "beta", "T"), "nkd": ("T", "gamma", "exclude_target")}


def resolve_params(params: dict) -> dict:
    """Fill defaults and check every value, so a typo stops the run with one sentence up front."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; the accepted ones are {sorted(DEFAULTS)}.")
    p = {**DEFAULTS, **params}
    if p["dataset"] not in PROTOCOLS:
        raise ValueError(f"dataset {p['dataset']!r} is unknown; use one of {sorted(PROTOCOLS)}.")
    if p["method"] not in METHOD_DEFAULTS:
        raise ValueError(f"method {p['method']!r} is unknown; use one of {sorted(METHOD_DEFAULTS)}.")
    p["M"] = "[" + ",".join(str(s) for s in parse_scales(p["M"])) + "]"
    for key, value in PROTOCOLS[p["dataset"]].items():
        if p[key] is None:
            p[key] = value
    for key in ("ce_weight", "kd_weight", "warmup_epochs"):
        if p[key] is None:
            p[key] = METHOD_DEFAULTS[p["method"]][key]
    for key, value in METHOD_DEFAULTS[p["method"]]["loss"].items():
        if p[key] is None:
            p[key] = value
    for key in ("epochs", "batch_size"):
        if not isinstance(p[key], int) or p[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {p[key]!r}.")
    if not isinstance(p["lr"], (int, float)) or p["lr"] <= 0:
        raise ValueError(f"lr must be a positive number, got {p['lr']!r}.")
    if not isinstance(p["subset"], int) or p["subset"] < 0:
        raise ValueError(f"subset must be 0 (all data) or a positive integer, got {p['subset']!r}.")
    if p["device"] not in ("auto", "cpu") and not str(p["device"]).startswith("cuda"):
        raise ValueError(f"device {p['device']!r} is not understood; use 'auto', 'cpu' or 'cuda[:N]'.")
    return p


def notebook_params(namespace: dict, **fixed) -> dict:
    """The run parameters among a notebook's variables (its `parameters` cell), resolved and checked."""
    return resolve_params({**{k: namespace[k] for k in DEFAULTS if k in namespace}, **fixed})


def run_name(params: dict) -> str:
    """e.g. `resnet32x4-ShuffleV1-sd_dkd-M124-seed0`; M=[1] runs are the plain baselines (`dkd`)."""
    p = resolve_params(params)
    if p["run_name"]:
        return p["run_name"]
    variant = p["method"] if p["M"] == "[1]" else f"sd_{p['method']}"
    return f"{p['teacher']}-{p['student']}-{variant}-M{''.join(c for c in p['M'] if c.isdigit())}-seed{p['seed']}"


def run_dir(params: dict) -> Path:
    p = resolve_params(params)
    return Path(p["output_dir"]) / p["dataset"] / run_name(p)


def vanilla_dir(params: dict, arch: str) -> Path:
    """Where `arch` trained alone (no teacher) is recorded."""
    p = resolve_params(params)
    return Path(p["output_dir"]) / p["dataset"] / f"{arch}-alone-seed{p['seed']}"


def load_metrics(path) -> dict | None:
    """A finished run's metrics, or None when the file is missing, partial or unreadable."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return metrics if metrics.get("status") == "complete" else None


# --- training pieces ---------------------------------------------------------------------------
class StepLR(Callback):
    """The authors' step schedule: lr * rate^(number of stages the 1-based epoch has passed)."""
    order = 1

    def __init__(self, lr, stages, rate):
        self.lr, self.stages, self.rate = lr, list(stages), rate

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.rate ** sum(epoch > s for s in self.stages)

    def before_epoch(self):
        self.opt.set_hyper("lr", self.lr_at(self.epoch + 1))


class EpochLogger(Callback):
    """One plain line per epoch, readable in headless (papermill) logs."""
    order = 90  # after the Recorder has the epoch's values

    def after_epoch(self):
        names = self.recorder.metric_names[1:-1]
        values = self.recorder.values[-1] if self.recorder.values else []
        text = " ".join(f"{n}={v:.4f}" for n, v in zip(names, values))
        print(f"epoch {self.epoch + 1}/{self.n_epoch} {text} lr={self.opt.hypers[-1]['lr']:.4g}", flush=True)


def top5_accuracy(inp, targ):
    """Top-5 accuracy (top-k for fewer than 5 classes, e.g. tiny test sets)."""
    return top_k_accuracy(inp, targ, k=min(5, inp.shape[-1]))


def build_learner(dls, model, p: dict, cbs=()) -> Learner:
    """The one place a Learner is made: torch SGD (no dampening, no Nesterov) with L2 on every
    parameter, the authors' step schedule, gradient clipping, top-1/top-5 metrics."""
    opt_func = partial(OptimWrapper, opt=partial(torch.optim.SGD, momentum=p["momentum"], dampening=0,
                                                  nesterov=False, weight_decay=p["weight_decay"]))
    callbacks = [StepLR(p["lr"], p["lr_decay_stages"], p["lr_decay_rate"]), EpochLogger(), *cbs]
    if p["clip_grad_norm"]:
        callbacks.append(GradientClip(max_norm=p["clip_grad_norm"]))
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), opt_func=opt_func, lr=p["lr"],
                    metrics=[accuracy, top5_accuracy], wd=None, wd_bn_bias=True, train_bn=True, cbs=callbacks)
    if not p["progress"]:
        from fastai.callback.progress import ProgressCallback
        learn.remove_cb(ProgressCallback)
    return learn


def _fit(learn: Learner, epochs: int, best_path: Path | None = None) -> list[dict]:
    """Fit and return per-epoch rows (losses, top-1/top-5 in percent, lr); keep the best weights."""
    rows, best = [], -1.0

    class Track(Callback):
        order = 95

        def after_epoch(self):
            names, values = self.recorder.metric_names[1:-1], self.recorder.values[-1]
            row = dict(zip(names, (float(v) for v in values)))
            rows.append({"epoch": self.epoch + 1, "train_loss": row.get("train_loss"),
                         "valid_loss": row.get("valid_loss"), "top1": 100 * row["accuracy"],
                         "top5": 100 * row["top5_accuracy"], "lr": self.opt.hypers[-1]["lr"]})
            nonlocal best
            if best_path is not None and rows[-1]["top1"] > best:
                best = rows[-1]["top1"]
                save_checkpoint(self.learn.model, best_path, epoch=self.epoch + 1, top1=best)

    learn.fit(epochs, cbs=Track())
    return rows


def evaluate(model: nn.Module, dl, device) -> tuple[float, float]:
    """Top-1 and top-5 (percent) of `model` on a DataLoader."""
    model.eval().to(device)
    correct1 = correct5 = total = 0
    with torch.inference_mode():
        for x, y in dl:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top5[:, 0] == y).sum().item()
            correct5 += (top5 == y[:, None]).any(1).sum().item()
            total += y.numel()
    return 100 * correct1 / max(total, 1), 100 * correct5 / max(total, 1)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_vanilla(params: dict, arch: str | None = None, force: bool = False) -> dict:
    """Train `arch` (default: the student) alone with cross-entropy under the same protocol and
    record it like any run (`<arch>-alone-seed<s>`): the paper's "student" rows, and how missing
    teachers are made."""
    p = resolve_params(params)
    arch = arch or p["student"]
    out = vanilla_dir(p, arch)
    done = load_metrics(out / "metrics.json")
    if done is not None and not force:
        return done
    start = time.time()
    set_seed(p["seed"], reproducible=True)
    device = _device(p["device"])
    dls = _dataloaders(p, device)
    model = create_model(arch, num_classes=dls.info.num_classes, stem=STEMS[p["dataset"]])
    out.mkdir(parents=True, exist_ok=True)
    rows = _fit(build_learner(dls, model, p), p["epochs"], best_path=out / "model_best.pth")
    save_checkpoint(model, out / "model.pth", epoch=p["epochs"])
    metrics = _summary(p, rows, variant="alone", arch=arch)
    metrics["wall_time_s"] = time.time() - start
    _write_json(out / "metrics.json", metrics)
    print(f"{arch} alone: best top-1 {metrics['best_top1']:.2f}, last {metrics['last_top1']:.2f}", flush=True)
    return metrics


def train_teacher(p: dict) -> Path:
    """Train a missing teacher with the vanilla protocol on the same data and cache it."""
    q = {**p, "epochs": p["teacher_epochs"] or p["epochs"], "run_name": ""}
    print(f"no checkpoint for teacher {p['teacher']} on {p['dataset']}: training it for {q['epochs']} epochs",
          flush=True)
    metrics = run_vanilla(q, arch=p["teacher"])
    out = vanilla_dir(q, p["teacher"])
    cached = teacher_cache_path(p["output_dir"], p["dataset"], p["teacher"])
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "model.pth", cached)
    print(f"teacher cached at {cached} (top-1 {metrics['last_top1']:.2f})", flush=True)
    return cached


def get_teacher(p: dict, dls) -> nn.Module:
    """The teacher for a run: given checkpoint > torchvision weights > cache > published CIFAR-100
    release > train it here (and cache it)."""
    stem = STEMS[p["dataset"]]
    if p["teacher_weights"]:
        return create_model(p["teacher"], num_classes=dls.info.num_classes, stem=stem, weights=p["teacher_weights"])
    teacher = create_model(p["teacher"], num_classes=dls.info.num_classes, stem=stem)
    if p["teacher_ckpt"]:
        return load_checkpoint(teacher, p["teacher_ckpt"], arch=p["teacher"])
    cached = teacher_cache_path(p["output_dir"], p["dataset"], p["teacher"])
    if cached.is_file():
        return load_checkpoint(teacher, cached, arch=p["teacher"])
    if p["dataset"] == "cifar100" and not p["subset"]:
        try:
            fetch_cifar100_teachers(p["data_dir"])
            return load_checkpoint(teacher, cifar100_teacher_path(p["data_dir"], p["teacher"]), arch=p["teacher"])
        except CheckpointError as err:
            print(f"published teacher unavailable ({err}); training one instead", flush=True)
    return load_checkpoint(teacher, train_teacher(p), arch=p["teacher"])


def _environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import fastai
    import torchvision

    from . import __version__
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "gpu": gpu},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "fastai": fastai.__version__,
                         "numpy": np.__version__, "sddlib": __version__},
            "git_commit": commit}


def _dataloaders(p: dict, device):
    return get_dataloaders(p["dataset"], p["data_dir"], bs=p["batch_size"], subset=p["subset"],
                           num_workers=p["num_workers"], seed=p["seed"], device=device)


def _summary(p: dict, rows: list[dict], variant: str, arch: str | None = None) -> dict:
    """The metrics.json body shared by distillation and vanilla runs."""
    best = max(rows, key=lambda r: r["top1"])
    scales = list(parse_scales(p["M"]))
    alone = variant == "alone"
    return {
        "status": "complete", "run_name": vanilla_dir(p, arch).name if alone else run_name(p),
        "dataset": p["dataset"], "teacher": None if alone else p["teacher"],
        "student": arch if alone else p["student"], "method": None if alone else p["method"],
        "scales": None if alone else scales, "sd": False if alone else scales != [1],
        "variant": variant, "seed": p["seed"],
        "best_top1": best["top1"], "best_top5": best["top5"], "best_epoch": best["epoch"],
        "last_top1": rows[-1]["top1"], "last_top5": rows[-1]["top5"],
        "teacher_top1": None, "teacher_top5": None,
        "params": p, "history": rows, "wall_time_s": None, **_environment(),
    }


def _write_json(path: Path, data: dict) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(data, tmp, indent=2)
    Path(tmp.name).replace(path)


def run(params: dict, force: bool = False) -> dict:
    """Train one student as `params` say and write outputs/<dataset>/<run>/; return its metrics.

    A run whose metrics.json is complete is returned as it is unless `force=True`.
    """
    p = resolve_params(params)
    out = run_dir(p)
    done = load_metrics(out / "metrics.json")
    if done is not None and not force:
        print(f"{out} is complete; returning its metrics (force=True re-runs it)", flush=True)
        return done
    start = time.time()
    set_seed(p["seed"], reproducible=True)
    device = _device(p["device"])
    dls = _dataloaders(p, device)
    teacher = get_teacher(p, dls)
    teacher_top1, teacher_top5 = evaluate(teacher, dls.valid, device)
    set_seed(p["seed"], reproducible=True)
    student = create_model(p["student"], num_classes=dls.info.num_classes, stem=STEMS[p["dataset"]])
    loss_kwargs = {k: p[k] for k in _LOSS_KEYS[p["method"]]}
    distill = DistillationCallback(teacher, p["method"], p["M"], ce_weight=p["ce_weight"],
                                   kd_weight=p["kd_weight"], warmup_epochs=p["warmup_epochs"],
                                   complementary_weight=p["complementary_weight"], **loss_kwargs)
    out.mkdir(parents=True, exist_ok=True)
    learn = build_learner(dls, student, p, cbs=[distill])
    rows = _fit(learn, p["epochs"], best_path=out / "student_best.pth")
    for row, stats in zip(rows, distill.history):
        row.update({k: v for k, v in stats.items() if k != "epoch"})
    save_checkpoint(student, out / "student.pth", epoch=p["epochs"])
    scales = list(parse_scales(p["M"]))
    metrics = _summary(p, rows, variant=p["method"] if scales == [1] else f"sd_{p['method']}")
    metrics.update(teacher_top1=teacher_top1, teacher_top5=teacher_top5)
    if p["figures"]:
        from .viz import save_run_figures
        baseline = _baseline_student(p, dls.info.num_classes)
        metrics["figures"] = [str(f.relative_to(out)) for f in
                              save_run_figures(teacher, student, dls, parse_scales(p["M"]), distill,
                                               out / "figures", baseline_student=baseline)]
    metrics["wall_time_s"] = time.time() - start
    _write_json(out / "metrics.json", metrics)
    print(f"{metrics['run_name']}: best top-1 {metrics['best_top1']:.2f} (epoch {metrics['best_epoch']}), "
          f"last {metrics['last_top1']:.2f}, teacher {teacher_top1:.2f}", flush=True)
    return metrics


def _baseline_student(p: dict, num_classes: int):
    """The plain-method (M=[1]) student of the same configuration, if that run is complete."""
    if p["M"] == "[1]":
        return None
    base_dir = run_dir({**p, "M": "[1]", "run_name": ""})
    if load_metrics(base_dir / "metrics.json") is None:
        return None
    model = create_model(p["student"], num_classes=num_classes, stem=STEMS[p["dataset"]])
    return load_checkpoint(model, base_dir / "student.pth", arch=p["student"])
