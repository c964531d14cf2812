"""Opt-in run tracking: TensorBoard and/or Weights & Biases, as mdistiller users expect (`tracker` parameter).

    tracker: tensorboard            # or wandb, or [tensorboard, wandb]; "none" by default

Per epoch it logs the row the run records in metrics.json's history, so the tracked numbers are the recorded
ones: train loss and its CE and distillation parts, the warm-up factor, test top-1/top-5, the LR, and the
teacher's region-category shares per scale. Once per run it logs the resolved configuration, the departures
and the run's figures. The run's name is its output folder's name; TensorBoard writes into `<run>/tensorboard/`
and W&B into `<run>/wandb/`.

Why not fastai's TensorBoardCallback / WandbCallback: they log fastai's per-batch values, not this project's
per-epoch history (the distillation terms, warm-up and region shares live in DistillationCallback), they start
a new run when a run resumes, and fastai's TensorBoard callback hangs under DDP when every rank writes. Here
only rank 0 tracks, and a resumed run continues the same TensorBoard run (events after the resumed epoch are
purged) and the same W&B run (its id is kept in the run folder).

A tracker that cannot start (package missing, W&B neither logged in nor offline) is refused in one sentence
by `check` before any work.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import uuid
from pathlib import Path

from fastai.callback.core import Callback

from . import distributed
from .config import TRACKERS, ConfigError

__all__ = ["TRACKERS", "check", "tracked", "RunTracker"]

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
_WANDB_ID_FILE = "wandb-run-id.txt"


def check(trackers) -> None:
    """Every tracker of a run can start here: one sentence naming the first that cannot, and the fix."""
    for name in trackers:
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise ConfigError(f"tracker={name!r} needs the {_PACKAGES[name]} package, which is not installed; "
                              "install the tracking extra (pip install -e \".[tracking]\") or set tracker 'none'.")
    if "wandb" in trackers and os.environ.get("WANDB_MODE") not in ("offline", "disabled", "dryrun") \
            and not os.environ.get("WANDB_API_KEY") and not _wandb_logged_in():
        raise ConfigError("tracker='wandb' cannot reach W&B: there is no login (wandb login, or WANDB_API_KEY); "
                          "log in, or set WANDB_MODE=offline to keep the run's W&B files in its folder "
                          "(wandb sync uploads them later).")


@contextlib.contextmanager
def tracked(trackers, run_dir, params: dict):
    """The run's RunTracker for its Learner (None without trackers, and on every rank but 0); a run that fails
    closes it too (W&B marks it failed)."""
    tracker = RunTracker(trackers, run_dir, params) if trackers and distributed.is_main() else None
    try:
        yield tracker
    finally:
        if tracker is not None:
            tracker.finish()


def _wandb_logged_in() -> bool:
    import netrc
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class RunTracker(Callback):
    """Logs each history row the run records (after `training.RunRecorder`), then the run's summary and figures
    (`finish`). Create it on rank 0 only; with no trackers it does nothing."""
    order = 96  # after RunRecorder (95), which appends the epoch's row

    def __init__(self, trackers, run_dir, params: dict):
        self.trackers, self.run_dir, self.params = tuple(trackers), Path(run_dir), params
        self.logged = 0  # history rows tracked so far (a resumed run starts after those of its checkpoint)
        self.writer = self.wandb_run = None

    # --- opening: the same run again when a run resumes ------------------------------------------
    def before_fit(self):
        self.start(self.learn.run_recorder.first_epoch)

    def start(self, first_epoch: int) -> None:
        """Open the trackers; `first_epoch` is the number of epochs already done (resumed runs)."""
        self.logged = first_epoch
        if "tensorboard" in self.trackers:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step drops events a crashed attempt logged beyond the checkpoint this run continues from
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"),
                                        purge_step=first_epoch + 1 if first_epoch else None)
            if not first_epoch:
                self.writer.add_text("configuration", _as_code(self.params), 0)
        if "wandb" in self.trackers:
            import wandb
            id_file = self.run_dir / _WANDB_ID_FILE
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
            self.run_dir.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id)
            self.wandb_run = wandb.init(project="sddlib", name=self.run_dir.name, id=run_id, resume="allow",
                                        dir=str(self.run_dir), config=self.params, reinit="finish_previous")

    def after_epoch(self):
        rows = self.learn.run_recorder.rows  # what metrics.json's history will hold
        for row in rows[self.logged:]:
            self.log_row(row)
        self.logged = len(rows)

    def log_row(self, row: dict) -> None:
        step = row["epoch"]
        scalars = {k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({**scalars, "epoch": step}, step=step)

    # --- closing: what the run is, and its figures -------------------------------------------------
    def finish(self, metrics: dict | None = None, figures=()) -> None:
        """Log the run's departures and summary and its figures, and close the trackers (after a failure: without
        `metrics`). Closing twice does nothing."""
        if metrics is not None:
            from .departures import describe
            summary = {k: metrics.get(k) for k in ("best_top1", "best_top5", "best_epoch", "last_top1", "last_top5",
                                                    "teacher_top1")}
            departures = describe(metrics.get("departures"))
            if self.writer is not None:
                self.writer.add_text("departures", departures, self.logged)
                for path in figures:
                    self.writer.add_image(f"figures/{Path(path).stem}", _read_png(path), self.logged,
                                          dataformats="HWC")
            if self.wandb_run is not None:
                self.wandb_run.summary.update({**summary, "departures": departures})
                import wandb
                self.wandb_run.log({f"figures/{Path(p).stem}": wandb.Image(str(p)) for p in figures}
                                   | {"epoch": self.logged}, step=self.logged)
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=0 if metrics is not None else 1)
        self.writer = self.wandb_run = None


def _as_code(params: dict) -> str:
    import yaml
    return "```\n" + yaml.safe_dump(params, sort_keys=False) + "```"  # TensorBoard renders text as Markdown


def _read_png(path):
    import numpy as np
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
