"""Validation on several processes whose shares of the test set differ (issue 31): two gloo processes on the CPU give
exactly the loss, top-1 and top-5 one process gives, for test sets that leave one process fewer test batches than the
other (where fastai's per-batch gather used to wait forever) or no test image at all, and never wait on a collective
the other process does not call (a child that hangs is killed and the test fails)."""
import os
import socket

import pytest
import torch
import torch.nn as nn
from fastai.callback.core import Callback, CancelStepException

from forked import run_children
from sddlib import distributed
from sddlib.data import digit_mosaic
from sddlib.training import build_learner

BATCH = 4
HANG = 120  # seconds: each case takes a few; a child still running after this is waiting on a collective
FAVOUR = 20.0  # added to one class's logit: far above the untrained net's other logits


class NoStep(Callback):
    """Trains without changing a weight (no optimizer step; the model has no BatchNorm statistics to update), so the
    fit's validation sees the same weights on every process and alone."""

    def before_step(self):
        raise CancelStepException


def tiny_model(favoured: int) -> nn.Module:
    """An untrained net whose head favours class `favoured` (the first test image's): it predicts that class for
    every image, so top-1 is the share of test images of that class (neither 0 nor 100 % on a mixed test set), which
    a process that drops or double-counts images changes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10))
    with torch.no_grad():
        model[-1].bias[favoured] += FAVOUR
    return model


def validate(data_dir, n_test: int, pipeline: str, out=None) -> list[float]:
    """One epoch of a fit that changes no weight, on this process group (or alone): the recorded validation
    loss, top-1 and top-5 (and the test images this process held), saved to `out` when given."""
    with distributed.process_group("cpu"):
        whole = digit_mosaic(data_dir, bs=BATCH, n_train=8, n_test=n_test, device="cpu", pipeline=pipeline,
                             num_workers=0)
        dls = distributed.shard_dataloaders(whole)
        favoured = int(whole.valid.dataset.targets[0])
        learn = build_learner(dls, tiny_model(favoured), dict(dataset="digit_mosaic", batch_size=BATCH, device="cpu",
                                                      progress=False), cbs=[NoStep()])
        learn.fit(1)
        values = [float(v) for v in learn.recorder.values[-1][1:]]   # valid_loss, accuracy, top5_accuracy
        held = sum(len(y) for _, y in dls.valid)
    if out is not None:
        torch.save({"values": values, "held": held}, out)
    return values


def validate_as_rank(rank, port, data_dir, n_test, pipeline, folder):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    validate(data_dir, n_test, pipeline, out=f"{folder}/rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# test images -> each process's share of the global batches of 4: 3 -> 1 + 2 (one batch each: the 3-image split
# that logged accuracy 0.5000), 5 -> 2 + (2, 1) (one test batch on rank 0, two on rank 1: the hang),
# 1 -> 0 + 1 (rank 0 holds no test image), 10 -> (2, 2, 1) + (2, 2, 1)
@pytest.mark.trains
@pytest.mark.parametrize("pipeline", ["device", "workers"])
@pytest.mark.parametrize("n_test, held", [(3, [1, 2]), (5, [2, 3]), (1, [0, 1]), (10, [5, 5])])
def test_two_processes_validate_as_one(tmp_path, n_test, held, pipeline):
    alone = validate(tmp_path, n_test, pipeline)
    assert all(round(v * n_test, 6) == round(v * n_test) for v in alone[1:])   # counts out of n_test
    labels = torch.as_tensor(digit_mosaic(tmp_path, bs=BATCH, n_train=8, n_test=n_test, device="cpu",
                                          num_workers=0).valid.dataset.targets)
    favoured_share = (labels == labels[0]).float().mean().item()
    assert alone[1] == pytest.approx(favoured_share) and (n_test == 1 or 0 < favoured_share < 1)
    port = free_port()
    ranks = run_children(validate_as_rank, [(r, port, tmp_path, n_test, pipeline, tmp_path) for r in (0, 1)],
                         timeout=HANG)
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].stdout[-3000:] + ranks[1].stdout[-3000:]
    saved = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [s["held"] for s in saved] == held                      # the uneven shares this case is about
    for rank in saved:                                             # every process records the single-process numbers
        assert rank["values"] == pytest.approx(alone, rel=1e-6)    # (float sums in another order)
