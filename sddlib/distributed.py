"""One run on several processes: the same experiment, launched by `torchrun`, trained with PyTorch's
DistributedDataParallel around the fastai Learner's model.

    torchrun --nproc_per_node 8 -m sddlib -f params/imagenet/ResNet50-MobileNetV1-sd_dkd.yaml

What makes N processes train the run one process would:
- `batch_size` stays the global batch. Every step the N processes split the global batch one process
  would draw (the same seeded order, the same augmentation draws on the device pipeline) into equal
  parts (`Shard`), and DDP averages their gradients: the step, the LR schedule, the warm-up and the
  epoch count are those of one process. A training epoch whose last batch does not split evenly is
  padded with the epoch's first images, as torch's `DistributedSampler` does, so all processes step
  together.
- BatchNorm: `sync_bn` turns the trained model's BatchNorm layers into SyncBatchNorm (statistics over
  the global batch, as the authors ran ImageNet; GPUs only, a torch limit). Before every validation
  the buffers of rank 0 are copied to all processes, so every process holds rank 0's weights.
- Validation and the teacher's accuracy count each test image exactly once: the test set is split
  without padding (a process may hold fewer test batches than another, or none), each process sums its own
  losses and counts (fastai's per-batch gather is off for a share: the loaders' `to_detach`), and the sums are added
  over the processes once, after validation.
- Only rank 0 writes (checkpoints, metrics.json, figures, the run lock) and prints; decisions that
  read the disk (is the run complete, is a teacher cached) are taken on rank 0 and broadcast
  (`run_on_main`), so the processes never disagree. A teacher that has to be trained is trained by
  all the processes together and cached by rank 0.

`launch` runs one experiment on N local processes through torchrun from a notebook and reads its
metrics back. Outside torchrun (WORLD_SIZE unset or 1) everything here is a no-op.
"""
from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.data.load import DataLoader
from fastai.torch_core import to_detach

from .config import ConfigError
from .runs import load_metrics

__all__ = ["world_size", "rank", "is_main", "process_group", "per_rank_batch", "check", "Shard", "ShardedDL",
           "shard_dataloaders", "whole", "sum_over_shards", "run_on_main", "main_only", "DistributedTraining",
           "callbacks", "describe", "launch"]


# --- who am I --------------------------------------------------------------------------------------
def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    """Rank 0: the process that writes and prints."""
    return rank() == 0


def _launched_processes() -> int:
    """How many processes torchrun started for this run (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def process_group(device: str):
    """Join torchrun's process group for the duration and yield the device this process trains on:
    GPU LOCAL_RANK of its node (NCCL) when `device` allows a GPU and one is there, else the CPU (gloo).
    Outside torchrun it yields `device` unchanged."""
    if _launched_processes() <= 1:
        yield device
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda:"):
        raise ConfigError(f"device={device!r} names one GPU, but torchrun started {_launched_processes()} processes; "
                          "use device 'auto' or 'cuda' (process k of a node takes GPU k) or 'cpu'.")
    gpu = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not available on this machine (no CUDA GPU); use 'auto' or 'cpu'.")
    if gpu:
        if local >= torch.cuda.device_count():
            raise ConfigError(f"process {local} of this node has no GPU of its own (the node has "
                              f"{torch.cuda.device_count()}); start at most that many processes per node "
                              "(torchrun --nproc_per_node).")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if gpu else "gloo")
    try:
        yield f"cuda:{local}" if gpu else "cpu"
    finally:
        dist.destroy_process_group()


def per_rank_batch(batch_size: int, processes: int | None = None) -> int:
    """The images each process takes per step; the global batch must split evenly."""
    processes = processes or world_size()
    if batch_size % processes:
        lower = batch_size - batch_size % processes
        raise ConfigError(f"batch_size={batch_size} does not split evenly over {processes} processes; batch_size is "
                          f"the global batch of all processes together, so use a multiple of {processes} "
                          f"(e.g. {lower or processes}).")
    return batch_size // processes


def check(cfg, device: torch.device) -> None:
    """What a run on this process group needs, checked before any work: a global batch that splits evenly,
    GPUs for SyncBatchNorm."""
    if world_size() == 1:
        return
    per_rank_batch(cfg.batch_size)
    if cfg.sync_bn and device.type != "cuda":
        raise ConfigError("sync_bn=True needs GPUs (torch's SyncBatchNorm does not run on the CPU); run on GPUs, or "
                          "set sync_bn to false for BatchNorm statistics per process.")


def describe(cfg) -> dict:
    """How a run was spread over processes (metrics.json's `distributed`)."""
    world = world_size()
    return {"world_size": world, "per_rank_batch": cfg.batch_size // world,
            "sync_bn": bool(cfg.sync_bn and world > 1), "bn_batch": cfg.on_processes(world).bn_batch,
            "backend": dist.get_backend() if _active() else None}


# --- decisions and writes ----------------------------------------------------------------------------
def main_only(context):
    """`context` (e.g. a run lock) on rank 0; nothing on the other processes."""
    return context if is_main() else contextlib.nullcontext()


def run_on_main(fn, *args, **kwargs):
    """`fn` on rank 0 only; every process returns its result (or raises its exception), so all take the same
    decision from one look at the disk."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    outcome = [None, None]
    if is_main():
        try:
            outcome[0] = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised on every process below
            outcome[1] = err
    dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _all_reduce(values: torch.Tensor, op=None) -> torch.Tensor:
    """Sum (or `op`) of a tensor over the processes, returned on the tensor's own device."""
    moved = values.detach().to(_comm_device()).clone()
    dist.all_reduce(moved, op=op or dist.ReduceOp.SUM)
    return moved.to(values.device)


# --- data: each process's share of every global batch ------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Process `rank` of `world` takes part `rank` of every global batch (batch sizes b*rank//world up to
    b*(rank+1)//world). `even` (training): the epoch's order is first padded with its own head to a multiple
    of `world`, so every part of every batch has the same size and all processes take the same steps."""
    rank: int
    world: int
    even: bool

    def order(self, order):
        """The epoch's sample order (list or 1-d tensor), padded when `even`."""
        n = len(order)
        extra = (-n) % self.world if self.even and n else 0
        if not extra:
            return order
        if torch.is_tensor(order):
            return torch.cat([order, order[torch.arange(extra, device=order.device) % n]])
        return list(order) + [order[i % n] for i in range(extra)]

    def part(self, size: int) -> slice:
        return slice(size * self.rank // self.world, size * (self.rank + 1) // self.world)

    def batches(self, n: int, bs: int, drop_last: bool) -> int:
        """How many batches this process gets from a loader of `n` samples and global batch `bs`."""
        n += (-n) % self.world if self.even else 0
        full, rest = divmod(n, bs)
        part = self.part(rest)
        return full + (0 if drop_last or part.stop == part.start else 1)


class ShardedDL(DataLoader):
    """A fastai DataLoader over this process's share (`Shard`) of the batches of `dl`, a fastai DataLoader whose
    `bs` is the global batch: the same seeded order on every process (the RNG state of `dl`), the same
    worker settings, a per-process batch of bs/world."""

    def __init__(self, dl: DataLoader, shard: Shard):
        super().__init__(dl.dataset, bs=-(-dl.bs // shard.world), shuffle=dl.shuffle, drop_last=dl.drop_last,
                         num_workers=dl.fake_l.num_workers, pin_memory=dl.pin_memory, timeout=dl.timeout,
                         persistent_workers=dl.fake_l.persistent_workers, device=dl.device)
        self.global_bs, self.shard = dl.bs, shard
        # the loader's own way of making batches (DeviceDecodeDL collates file bytes and decodes on the device)
        self.create_batch, self.retain, self.after_batch = dl.create_batch, dl.retain, dl.after_batch
        self.rng = random.Random()
        self.rng.setstate(dl.rng.getstate())

    def get_idxs(self):
        order, bs = self.shard.order(super().get_idxs()), self.global_bs
        stop = len(order) - len(order) % bs if self.drop_last else len(order)
        batches = (order[start:start + bs] for start in range(0, stop, bs))
        return [i for batch in batches for i in batch[self.shard.part(len(batch))]]

    def __len__(self):
        return self.shard.batches(self.n, self.global_bs, self.drop_last)

    def to_detach(self, b, cpu=True, gather=True):
        """fastai's `Learner.to_detach` asks the loader: a share keeps this process's own values, never gathered per
        batch (fastai's default under torchrun), since the processes may hold different numbers of test batches and
        a gather would wait for one that never comes; `DistributedTraining` sums the validation totals once."""
        return to_detach(b, cpu, gather=False)


def shard_dataloaders(dls):
    """`dls` split over the processes of this run (`dls` itself in one process); the result keeps the whole
    loaders as `.unsharded` (figures are drawn from the whole test set)."""
    world = world_size()
    if world == 1:
        return dls
    from fastai.data.core import DataLoaders

    from .data.device import DeviceImageDL
    per_rank_batch(dls.train.bs, world)
    loaders = []
    for dl, even in ((dls.train, True), (dls.valid, False)):
        shard = Shard(rank(), world, even)
        if isinstance(dl, DeviceImageDL):
            state = dl.rng.getstate()
            sharded = dl.new(shard=shard)
            sharded.rng.setstate(state)
        else:
            sharded = ShardedDL(dl, shard)
        loaders.append(sharded)
    out = DataLoaders(*loaders, device=dls.device)
    out.info, out.c, out.unsharded = dls.info, dls.c, dls
    return out


def whole(dls):
    """The loaders over the whole data (undoing `shard_dataloaders`)."""
    return getattr(dls, "unsharded", dls)


def sum_over_shards(dl, *values):
    """`values` summed over the processes when `dl` is one process's share of the data; else as they are."""
    if getattr(dl, "shard", None) is None:
        return values
    return tuple(_all_reduce(torch.tensor(values, dtype=torch.float64)).tolist())


# --- the fit ---------------------------------------------------------------------------------------------
class DistributedTraining(Callback):
    """Fit on every process of the group: DistributedDataParallel around the model (SyncBatchNorm first when
    `sync_bn`), validation on the plain model holding rank 0's buffers, and every number the run records
    (training loss, validation loss and metrics, distillation terms and region counts) taken over all processes.
    (fastai's own DistributedTrainer/DistributedDL pads the test set with repeated images and draws per-item indices,
    which the device-resident loader has not, hence this callback.)"""
    order = 11  # after TrainEvalCallback has put the model on the device, before the Recorder (50)

    def __init__(self, sync_bn: bool):
        self.sync_bn, self.ddp = sync_bn, None

    def before_fit(self):
        model = self.learn.model
        if self.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.plain = model
        # device_ids=None: a single-device module whose inputs are already on its device (GPU or CPU)
        self.ddp = nn.parallel.DistributedDataParallel(model)
        self.learn.model = self.ddp

    def after_train(self):
        smooth = self.recorder.smooth_loss  # what fastai records as the epoch's train_loss
        smooth.val = _all_reduce(torch.as_tensor(smooth.val, dtype=torch.float32)) / world_size()
        from .distill import DistillationCallback
        for cb in self.learn.cbs:
            if isinstance(cb, DistillationCallback) and cb._watch.rows:
                cb._counts = _all_reduce(cb._counts)
                rows = _all_reduce(torch.stack(cb._watch.rows)) / world_size()
                cb._watch.rows = list(rows)

    def before_validate(self):
        if self.ddp is None:
            return  # a validation outside fit: the model is not wrapped
        with torch.no_grad():
            for buffer in self.plain.buffers():  # BatchNorm running statistics: rank 0's everywhere
                moved = buffer.to(_comm_device())
                dist.broadcast(moved, src=0)
                buffer.copy_(moved)
        self.learn.model = self.plain  # no collective calls while processes validate different numbers of batches

    def after_validate(self):
        # each process's loss and metric sums over its own test images (its loader does not gather): added once here
        metrics = list(self.recorder._valid_mets)
        if metrics:
            sums = [float(m.total) for m in metrics] + [float(m.count) for m in metrics]
            sums = _all_reduce(torch.tensor(sums, dtype=torch.float64)).tolist()
            for m, total, count in zip(metrics, sums, sums[len(metrics):]):
                m.total, m.count = total, int(count)
        if self.ddp is not None:
            self.learn.model = self.ddp

    def after_fit(self):
        self.learn.model, self.ddp = self.plain, None


def callbacks(cfg) -> list:
    """The callbacks a Learner needs on this process group (none in one process)."""
    return [DistributedTraining(cfg.sync_bn)] if world_size() > 1 else []


# --- a notebook launching torchrun -----------------------------------------------------------------------
def launch(params, nproc: int, force: bool = False) -> dict:
    """Run one experiment on `nproc` local processes (`torchrun --standalone -m sddlib`), print its log as it
    comes (rank 0's lines) and return its metrics; a failed run raises with its error sentences (or the end of
    its log)."""
    import yaml

    from .config import RunConfig
    cfg = RunConfig.from_params(params)
    per_rank_batch(cfg.batch_size, nproc)
    with tempfile.TemporaryDirectory() as tmp:
        params_file = Path(tmp) / "params.yaml"
        # the log comes back line by line: one line per epoch, no progress bars
        params_file.write_text(yaml.safe_dump({**cfg.to_params(), "progress": False}))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   "-m", "sddlib", "-f", str(params_file)] + (["--force"] if force else [])
        print(" ".join(command[1:]), flush=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              bufsize=1) as proc:
            tail, errors = [], []
            for line in proc.stdout:
                print(line, end="", flush=True)
                tail = (tail + [line.rstrip()])[-20:]
                if line.startswith(("error: ", "failed: ")) and line.rstrip() not in errors:  # sddlib's sentences
                    errors.append(line.rstrip())
        if proc.returncode:
            raise RuntimeError(f"the run on {nproc} processes failed (exit status {proc.returncode}): "
                               + ("\n".join(errors) if errors else "its log ends:\n" + "\n".join(tail)))
    metrics = load_metrics(cfg.directory / "metrics.json")
    if metrics is None:
        raise RuntimeError(f"the run on {nproc} processes ended without a complete {cfg.directory / 'metrics.json'}.")
    return metrics
