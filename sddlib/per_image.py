"""Each test image's top-1 class at a run's last epoch, kept in the run folder (`test_predictions.npz`): what a
gain's interval needs when it is to count the test set's sampling as well as the seeds (a paired bootstrap over
seeds and test images, `sddlib.viz.findings`). Recorded during the last epoch's own evaluation: no extra pass.
In a distributed run each process scores part of every test batch; rank 0 puts the parts back in order."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from fastai.callback.core import Callback

from .checkpoints import atomic_write

__all__ = ["PREDICTIONS_FILE", "LastEpochPredictions", "load_test_predictions"]

PREDICTIONS_FILE = "test_predictions.npz"


def _gathered(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per batch, every process's part in rank order (one process: the parts themselves)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return parts
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, [p.cpu() for p in parts])
    return [torch.cat([rank_parts[b] for rank_parts in everyone]) for b in range(len(parts))]


class LastEpochPredictions(Callback):
    """In the last epoch's evaluation, the top-1 class and the target of every test image, in the test loader's
    order, written by rank 0 into `folder/test_predictions.npz` (arrays `top1`, `target`)."""
    order = 60  # after the metrics have read the batch

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def before_validate(self):
        self.top1, self.target = [], []

    def after_batch(self):
        if self.training or self.epoch != self.n_epoch - 1:
            return
        pred = self.learn.pred[0] if isinstance(self.learn.pred, tuple) else self.learn.pred
        self.top1.append(pred.argmax(-1).to(torch.int32))
        self.target.append(self.learn.yb[0].to(torch.int32))

    def after_validate(self):
        if self.epoch != self.n_epoch - 1 or not self.top1:
            return
        top1, target = torch.cat(_gathered(self.top1)), torch.cat(_gathered(self.target))
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        buffer = io.BytesIO()
        np.savez(buffer, top1=top1.cpu().numpy(), target=target.cpu().numpy())
        atomic_write(self.folder / PREDICTIONS_FILE, buffer.getvalue())


def load_test_predictions(run_dir) -> dict | None:
    """{"top1", "target", "correct"} of a run's last epoch, or None for a run recorded without them."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        top1, target = data["top1"], data["target"]
    return {"top1": top1, "target": target, "correct": top1 == target}
