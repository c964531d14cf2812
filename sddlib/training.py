"""The Learner of every run and its resumable fit.

`build_learner` is the one place a Learner is made (the authors' SGD, step schedule, clipping, metrics);
`distill_learner` is the same Learner, with the distillation callback, for anyone's DataLoaders and models.
`fit_resumable` fits it for a run folder: after every epoch the epoch's row, the best weights and an
atomic resume checkpoint (weights, optimizer, epoch, every RNG including the DataLoader's shuffling,
fastai's smoothed loss, the distillation history, best-so-far); a later call with the same configuration
fingerprint continues after the last completed epoch with the numbers an uninterrupted fit gives
(fastai's `fit(start_epoch=)` skips the finished epochs); another configuration's checkpoint is refused.
A non-finite loss or an out-of-memory GPU ends the run as "failed" in metrics.json, never "complete".
"""
from __future__ import annotations

import math
import random
import signal
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.callback.training import GradientClip
from fastai.learner import AvgSmoothLoss, Learner
from fastai.metrics import accuracy, top_k_accuracy
from fastai.optimizer import OptimWrapper
from fastcore.basics import noop

from . import distributed
from .acceleration import SpeedSwitches
from .checkpoints import CheckpointError, DiskFullError, read_checkpoint, save_checkpoint, write_json
from .config import METHODS, RunConfig
from .console import live_notebook
from .data.spec import DATASETS
from .distill import FINITE_CHECK_EVERY, DistillationCallback, LossWatch, NonFiniteLossError
from .per_image import LastEpochPredictions

__all__ = ["RESUME_FILE", "RunFailedError", "RunStopped", "RunInterrupted", "CtrlC", "StepLR", "CosineLR",
           "live_notebook",
           "EpochLogger",
           "FiniteLoss", "SmoothLossOnDevice", "top5_accuracy", "build_learner", "distillation_callback", "distill_learner",
           "RunRecorder", "fit_resumable", "differences"]

RESUME_FILE = "checkpoint.pth"  # the last completed epoch; removed when the run is complete


class RunFailedError(RuntimeError):
    """A run that stopped (non-finite loss, out of memory: its metrics.json says "failed" and why; a full disk)."""


class RunStopped(RuntimeError):
    """A fit that a callback cancelled before its last epoch (a tuner's pruner): its metrics.json says "stopped" and
    after which epoch, never "complete"; its resume checkpoint is kept."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a fit, said in one sentence: the epoch whose checkpoint is kept, and that the same run resumes
    from it. Still a KeyboardInterrupt, so a notebook or script stops as it would for any interrupt."""

    def __init__(self, out: Path, epoch: int, epochs: int):
        kept = (f"interrupted after epoch {epoch}/{epochs} of {out.name}; its checkpoint {out / RESUME_FILE} is kept "
                "and the same command resumes the run from it") if epoch else \
            (f"interrupted in epoch 1/{epochs} of {out.name}, before any epoch was kept; the same command starts it "
             "again")
        super().__init__(kept)


class StepLR(Callback):
    """The authors' step schedule: lr * rate^(number of stages the 1-based epoch has passed); with
    `warmup_epochs` > 0 the LR first rises linearly from 0, step by step (not in the authors' protocol)."""
    order = 1

    def __init__(self, lr, stages, rate, warmup_epochs=0.0):
        self.lr, self.stages, self.rate, self.warmup_epochs = lr, list(stages), rate, warmup_epochs

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.rate ** sum(epoch > s for s in self.stages)

    def before_epoch(self):
        self.opt.set_hyper("lr", self.lr_at(self.epoch + 1))

    def before_batch(self):
        if self.training and self.epoch < self.warmup_epochs:
            done = self.epoch + (self.iter + 1) / self.n_iter   # epochs done after this step
            self.opt.set_hyper("lr", self.lr_at(self.epoch + 1) * min(1.0, done / self.warmup_epochs))


class CosineLR(Callback):
    """The LR of fine-tuning recipes, set before every step: with `warmup_epochs` > 0 it rises linearly from 0 over
    them as `StepLR`'s does, then falls as half a cosine from `lr` to 0 over the remaining steps of the fit (not in
    the authors' protocol)."""
    order = 1

    def __init__(self, lr, warmup_epochs=0.0):
        self.lr, self.warmup_epochs = lr, warmup_epochs

    def lr_at(self, step: int, steps_per_epoch: int, epochs: int) -> float:
        """The LR of the 0-based training `step` of a fit of `epochs` epochs."""
        warmup = self.warmup_epochs * steps_per_epoch
        if step < warmup:
            return self.lr * (step + 1) / warmup
        return self.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (epochs * steps_per_epoch - warmup)))

    def before_batch(self):
        if self.training:
            self.opt.set_hyper("lr", self.lr_at(self.epoch * self.n_iter + self.iter, self.n_iter, self.n_epoch))


class EpochLogger(Callback):
    """One plain line per epoch, readable in headless (papermill) logs; silent where fastai's progress bar and
    its table of epochs are shown instead (`show=False`)."""
    order = 90  # after the Recorder has the epoch's values

    def __init__(self, show: bool = True):
        self.show = show

    def after_epoch(self):
        if not self.show or not self.recorder.values or not self.recorder.values[-1]:
            return  # an epoch skipped while resuming
        names = self.recorder.metric_names[1:-1]
        text = " ".join(f"{n}={v:.4f}" for n, v in zip(names, self.recorder.values[-1]))
        print(f"epoch {self.epoch + 1}/{self.n_epoch} {text} lr={self.opt.hypers[-1]['lr']:.4g}", flush=True)


class FiniteLoss(Callback):
    """Stop at a non-finite loss of a fit without distillation (`DistillationCallback` watches its own terms),
    reading the losses on the host only every `FINITE_CHECK_EVERY` batches and at the end of the epoch."""
    order = 101

    def before_train(self):
        self._losses = None if any(isinstance(cb, DistillationCallback) for cb in self.learn.cbs) \
            else LossWatch(("cross-entropy",))

    def after_loss(self):
        if self.training and self._losses is not None:
            self._losses.add(self.learn.loss)
            if (self.iter + 1) % FINITE_CHECK_EVERY == 0:
                self._losses.check(self.epoch + 1, self.n_iter)

    def after_train(self):
        if self._losses is not None:
            self._losses.check(self.epoch + 1, self.n_iter)


class _DeviceSmoothLoss(AvgSmoothLoss):
    """fastai's smoothed training loss, kept on the loss's device (fastai's own copies it to the host)."""

    def accumulate(self, learn):
        self.count += 1
        loss = learn.loss.detach().float().mean()
        self.val = torch.lerp(loss, self.val.to(loss.device), self.beta)


class SmoothLossOnDevice(Callback):
    """The Recorder's per-batch smoothed loss without a device-to-host copy per batch: smoothing stays on the
    device and the epoch's recorded values move to the host in one copy after the epoch."""
    order = 51  # after the Recorder

    def before_fit(self):
        self.recorder.smooth_loss = _DeviceSmoothLoss(self.recorder.smooth_loss.beta)

    def before_epoch(self):
        self.first = len(self.recorder.losses)

    def after_epoch(self):
        new = self.recorder.losses[self.first:]
        if new:
            self.recorder.losses[self.first:] = list(torch.stack([v.reshape(()) for v in new]).cpu())


def top5_accuracy(inp, targ):
    """Top-5 accuracy (top-k for fewer than 5 classes, e.g. tiny test sets)."""
    return top_k_accuracy(inp, targ, k=min(5, inp.shape[-1]))


def _weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """timm's convention for transformers: no weight decay on norms, biases and the model's
    `no_weight_decay()` parameters (position embeddings, class/distillation tokens)."""
    from timm.optim import param_groups_weight_decay
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


def build_learner(dls, model, params, cbs=()) -> Learner:
    """The one place a Learner is made: torch SGD (no dampening, no Nesterov) with L2 on every
    parameter, the authors' step schedule, gradient clipping, top-1/top-5 metrics, the run's speed switches.
    optimizer="adamw" (not the paper's) uses torch AdamW with timm's weight-decay groups instead of SGD;
    lr_schedule="cosine" (not the paper's) `CosineLR` instead of the step schedule."""
    cfg = RunConfig.from_params(params)
    splitter = None
    if cfg.optimizer == "adamw":
        opt_func = partial(OptimWrapper, opt=torch.optim.AdamW)
        splitter = partial(_weight_decay_groups, weight_decay=cfg.weight_decay)
    else:
        opt_func = partial(OptimWrapper, opt=partial(torch.optim.SGD, momentum=cfg.momentum, dampening=0,
                                                      nesterov=False, weight_decay=cfg.weight_decay))
    bar = cfg.progress and live_notebook()   # the progress bar in JupyterLab, the plain line headless: not both
    schedule = (CosineLR(cfg.lr, cfg.lr_warmup_epochs) if cfg.lr_schedule == "cosine" else
                StepLR(cfg.lr, cfg.lr_decay_stages, cfg.lr_decay_rate, cfg.lr_warmup_epochs))
    callbacks = [schedule,
                 EpochLogger(show=not bar), FiniteLoss(), SmoothLossOnDevice(), *distributed.callbacks(cfg),
                 SpeedSwitches(cfg.channels_last, cfg.precision, cfg.compile), *cbs]
    if cfg.clip_grad_norm:
        callbacks.append(GradientClip(max_norm=cfg.clip_grad_norm))
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), opt_func=opt_func, lr=cfg.lr,
                    metrics=[accuracy, top5_accuracy], wd=None, wd_bn_bias=True, train_bn=True, cbs=callbacks,
                    **({"splitter": splitter} if splitter else {}))
    if not bar:
        from fastai.callback.progress import ProgressCallback
        learn.remove_cb(ProgressCallback)
        learn.logger = noop  # fastai would print its raw list beside EpochLogger's line
    return learn


def distillation_callback(teacher: nn.Module, cfg: RunConfig) -> DistillationCallback:
    """The configuration's distillation: its method, scales, loss weights, warm-up, loss hyper-parameters and
    logit standardization."""
    return DistillationCallback(teacher, cfg.method, cfg.scales, ce_weight=cfg.ce_weight, kd_weight=cfg.kd_weight,
                                warmup_epochs=cfg.warmup_epochs, complementary_weight=cfg.complementary_weight,
                                logit_standardization=cfg.logit_standardization, **cfg.loss_kwargs)


def distill_learner(dls, student: nn.Module, teacher: nn.Module, method: str = "kd", M="[1,2,4]",
                    epochs: int | None = None, **overrides) -> Learner:
    """A fastai Learner that distils `teacher` into `student` on your DataLoaders under the authors' protocol,
    so that `learn.fit(epochs)` trains as the paper does. By default their CIFAR-100 solver: SGD (momentum 0.9,
    L2 weight decay 5e-4 on every parameter), LR 0.05 multiplied by 0.1 after the same fractions of `epochs` as
    their stages 150, 180, 210 of 240 epochs (`epochs=None`: 240), gradient-norm clipping at 40, the method's
    loss weights, and its warm-up over the same fraction of `epochs` (DKD, NKD: 20 of 240). `M="[1]"` is the
    plain method. `overrides` are run parameters (`sddlib.config.RunConfig`: lr, lr_decay_stages, weight_decay,
    T, channels_last, ...; dataset="imagenet" for that dataset's solver), each checked; the callback is
    `learn.distillation`. Images must have the channels the student's first convolution takes (one sentence
    otherwise)."""
    protocol = DATASETS.get(overrides.get("dataset", "cifar100"), DATASETS["cifar100"]).protocol
    epochs = protocol["epochs"] if epochs is None else epochs
    # the protocol's LR, not that of the default student (`student` is yours, not a named one)
    params = {"dataset": "cifar100", "method": method, "M": M, "epochs": epochs, "lr": protocol["lr"], **overrides}
    if isinstance(epochs, int) and not isinstance(epochs, bool):   # the schedule's shape kept for other lengths
        if "lr_decay_stages" not in overrides:
            stages = {round(epochs * s / protocol["epochs"]) for s in protocol["lr_decay_stages"]}
            params["lr_decay_stages"] = sorted(s for s in stages if s >= 1)
        if "warmup_epochs" not in overrides and method in METHODS:
            params["warmup_epochs"] = METHODS[method].warmup_epochs * epochs / protocol["epochs"]
    cfg = RunConfig.from_params(params)
    _check_channels(dls, student)
    return build_learner(dls, student, cfg, cbs=[distillation_callback(teacher, cfg)])


def _check_channels(dls, model: nn.Module) -> None:
    """Images whose channels the model's first convolution does not take (grey 1-channel images for the
    3-channel models) are refused in one sentence before any work, not by a shape error from inside torch."""
    expected = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    x = dls.valid.one_batch()[0]
    if expected is not None and x.dim() == 4 and x.shape[1] != expected:
        raise ValueError(f"the images have {x.shape[1]} channel(s) but the model's first layer takes {expected}; "
                         f"give it {expected}-channel images (grey ones: load them as RGB, as sddlib's and fastai's "
                         "image loaders do, or repeat the channel).")


def _rng_state(dls) -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate(), "train_dl": dls.train.rng.getstate(), "valid_dl": dls.valid.rng.getstate()}


def _set_rng_state(state: dict, dls) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    as_tuple = lambda s: (s[0], tuple(s[1]), s[2])  # noqa: E731  (lists after a round trip)
    random.setstate(as_tuple(state["python"]))
    dls.train.rng.setstate(as_tuple(state["train_dl"]))
    dls.valid.rng.setstate(as_tuple(state["valid_dl"]))


class CtrlC(Callback):
    """Ctrl-C (SIGINT) during a fit stops it at the end of the batch it lands in, or of the epoch's writing.

    A KeyboardInterrupt raised where the signal lands could fall between writing the resume checkpoint and noting
    its epoch, and the one line that `python -m sddlib` prints would name an epoch that is not the one on disk.
    A second Ctrl-C before the batch ends interrupts at once. Installed by `fit_resumable` from the main thread
    (the only one that receives signals), unless the process ignores SIGINT (started with `nohup ... &`)."""
    order = 96  # after RunRecorder: an epoch's files are written before an interrupt is let through

    def __init__(self):
        self.pressed, self.previous = False, None

    def _press(self, signum, frame):
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def before_fit(self):
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self.previous = signal.signal(signal.SIGINT, self._press)

    def stop_if_pressed(self):
        if self.pressed:
            raise KeyboardInterrupt

    after_batch = after_epoch = stop_if_pressed

    def restore(self):
        """Put back the handler the fit found (fastai calls no after_fit when an exception escapes the fit)."""
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


class RunRecorder(Callback):
    """After every epoch: the epoch's row (losses, top-1/top-5 in percent, lr, distillation stats), the
    best weights, and the resume checkpoint, all written atomically. Given a resume state, it puts back
    what fastai resets at the start of a fit (the smoothed loss, the iteration count)."""
    order = 95  # after the Recorder and EpochLogger

    def __init__(self, out: Path, fingerprint: dict, distill: DistillationCallback | None, best_name: str,
                 resume: dict | None = None):
        self.out, self.fingerprint, self.distill, self.best_name = out, fingerprint, distill, best_name
        self.resume = resume
        self.rows = list(resume["rows"]) if resume else []
        self.best = resume["best_top1"] if resume else -1.0
        self.first_epoch = resume["epoch"] if resume else 0
        self.kept_epoch = self.first_epoch  # the epoch of the resume checkpoint on disk
        self.elapsed = resume["elapsed_s"] if resume else 0.0
        self._start = time.time()

    def before_fit(self):
        if self.resume:
            smooth = self.recorder.smooth_loss
            smooth.count, smooth.val = self.resume["smooth_loss"]
            self.learn.train_iter = self.resume["train_iter"]

    def after_epoch(self):
        if self.epoch < self.first_epoch:
            return  # skipped: done before the interruption
        names, values = self.recorder.metric_names[1:-1], self.recorder.values[-1]
        row = dict(zip(names, (float(v) for v in values)))
        self.rows.append({"epoch": self.epoch + 1, "train_loss": row.get("train_loss"),
                          "valid_loss": row.get("valid_loss"), "top1": 100 * row["accuracy"],
                          "top5": 100 * row["top5_accuracy"], "lr": self.opt.hypers[-1]["lr"]})
        if self.distill is not None:
            self.rows[-1].update({k: v for k, v in self.distill.history[-1].items() if k != "epoch"})
        model = getattr(self.learn.model, "module", self.learn.model)  # unwrapped from DistributedDataParallel
        better = self.rows[-1]["top1"] > self.best
        self.best = max(self.best, self.rows[-1]["top1"])
        if not distributed.is_main():
            self.kept_epoch = self.epoch + 1
            return  # every process keeps the same rows; rank 0 writes
        if better:
            save_checkpoint(model, self.out / self.best_name, epoch=self.epoch + 1, top1=self.best)
        smooth = self.recorder.smooth_loss
        save_checkpoint(model, self.out / RESUME_FILE, fingerprint=self.fingerprint, epoch=self.epoch + 1,
                        optimizer=self.learn.opt.state_dict(), rows=self.rows, best_top1=self.best,
                        elapsed_s=self.elapsed_s, rng=_rng_state(self.dls), train_iter=self.learn.train_iter,
                        smooth_loss=(smooth.count, smooth.val),
                        distill_history=self.distill.history if self.distill else [],
                        region_counts=self.distill.region_counts if self.distill else None)
        self.kept_epoch = self.epoch + 1

    @property
    def elapsed_s(self) -> float:
        return self.elapsed + time.time() - self._start


def differences(saved: dict, wanted: dict) -> str:
    """The first few parameters that differ, in words: `lr 0.05 there, 0.1 here`."""
    keys = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    return ", ".join(f"{k} {saved.get(k)!r} there, {wanted.get(k)!r} here" for k in keys[:3])


def _resume_state(out: Path, fingerprint: dict, force: bool) -> dict | None:
    """The checkpoint to continue from, None to start afresh; another configuration's is an error."""
    path = out / RESUME_FILE
    if not path.is_file():
        return None
    if force:
        path.unlink()
        return None
    state = read_checkpoint(path, "resume checkpoint")
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise CheckpointError(f"resume checkpoint {path} is not one sddlib wrote; delete it to start the run over "
                              "(or run with force=True).")
    if state["fingerprint"] != fingerprint:
        raise CheckpointError(f"resume checkpoint {path} belongs to another configuration "
                              f"({differences(state['fingerprint'], fingerprint)}); run with force=True to start "
                              "over, or give this configuration another run_name.")
    return state


def fit_resumable(learn: Learner, cfg: RunConfig, out: Path, fingerprint: dict, force: bool, best_name: str,
                  distill: DistillationCallback | None = None) -> RunRecorder:
    """Fit for `cfg.epochs`, continuing from the run folder's checkpoint of the same configuration; a
    non-finite loss or an out-of-memory GPU ends the run as "failed" in metrics.json, a callback that cancels the
    fit before its last epoch as "stopped" (`RunStopped`)."""
    resume = distributed.run_on_main(_resume_state, out, fingerprint, force)  # rank 0 reads it, every process gets it
    recorder = RunRecorder(out, fingerprint, distill, best_name, resume)
    start_epoch = 0
    if resume is not None:
        start_epoch = resume["epoch"]
        print(f"resuming {out.name} after epoch {start_epoch}/{cfg.epochs} from {out / RESUME_FILE}", flush=True)
        learn.model.load_state_dict(resume["model"])
        learn.create_opt()
        learn.opt.load_state_dict(resume["optimizer"])
        if distill is not None:
            distill.history = list(resume["distill_history"])
            distill.region_counts = resume["region_counts"]
        _set_rng_state(resume["rng"], learn.dls)
    if start_epoch >= cfg.epochs:
        return recorder
    ctrl_c = CtrlC()
    status = "failed"
    try:
        learn.fit(cfg.epochs, cbs=[recorder, ctrl_c, LastEpochPredictions(out)], start_epoch=start_epoch)
        ctrl_c.stop_if_pressed()  # pressed after the last check: the rerun finds every epoch kept and completes
        if recorder.kept_epoch >= cfg.epochs:
            return recorder
        status, reason = "stopped", (f"stopped after epoch {recorder.kept_epoch}/{cfg.epochs}: a callback cancelled "
                                     "the fit (a tuner's pruner)")
    except NonFiniteLossError as err:
        reason = err.sentence
    except torch.OutOfMemoryError:
        reason = (f"the GPU ran out of memory with batch_size={cfg.batch_size} on {cfg.device}; use a smaller "
                  "batch_size or run fewer jobs on this GPU at once.")
    except KeyboardInterrupt:
        raise RunInterrupted(out, recorder.kept_epoch, cfg.epochs) from None
    except DiskFullError as err:  # a checkpoint could not be written: the previous one is whole, the run resumes
        raise RunFailedError(f"{out.name}: {err.sentence}") from None
    finally:  # fastai calls no after_fit when an exception escapes: no autocast hook may outlive the fit
        ctrl_c.restore()
        for cb in learn.cbs:
            if isinstance(cb, SpeedSwitches):
                cb.release()
    if distributed.is_main():
        write_json(out / "metrics.json", {"status": status, "reason": reason, "run_name": out.name,
                                          "dataset": cfg.data_name, "params": cfg.to_params(),
                                          "fingerprint": fingerprint, "history": recorder.rows})
    raise (RunStopped if status == "stopped" else RunFailedError)(f"{out.name}: {reason}") from None
