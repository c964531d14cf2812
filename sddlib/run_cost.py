"""What a plan costs before it starts (`python -m sddlib.sweep ... --estimate`), measured on this machine's device.

Each distinct configuration of the plan (dataset, teacher, student or the model alone, batch, pipeline, precision,
speed switches, device; an SD run stands for its plain baseline) is timed once, in a forked child of one fresh
process (the memory planning's probe, `sddlib.run_memory`, which gives each its peak memory the same way): its
data loaded as the run loads it (where it is on disk) and a few batches drawn from its loaders, then a few real
training and evaluation steps of its Learner on random batches of the dataset's image shape. A run's estimate is

    fixed + epochs x (training steps x (step + draw) + evaluation steps x (evaluation step + draw))

where the steps per epoch follow from the dataset's sizes (and the run's subset), a draw counts only where it holds
up the step (a loader in the training process), and `fixed` is what a run does besides its epochs: starting the
process and importing the training code, loading the data, building the models (all measured) and evaluating the
teacher once (a distillation run). The figures after training are not counted. The wall time at `--jobs N`
schedules the runs on N workers (teachers first), each run as long as it takes alone: N devices, or one device N
runs share without slowing each other (an optimistic bound there). It takes seconds to a few minutes (on a
CPU, full-size models): no run is trained.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time

__all__ = ["TIMED_STEPS", "RunCost", "estimate_plan", "wall_time", "describe_total", "device_name"]

TIMED_STEPS = 8  # training steps timed per configuration, after one untimed warm-up step
SETTLING_BYTES = 32 * 2**20  # glibc's largest dynamic mmap threshold (`_settle_allocator`)


@dataclasses.dataclass(frozen=True)
class RunCost:
    """One run's estimate: seconds in all, of which `fixed` outside its epochs; its peak memory in bytes."""
    run: str
    seconds: float
    fixed: float
    epochs: int
    peak_bytes: int


def _timed_probe(params: dict) -> dict:
    """Runs in the measuring child: the Learner of `params` (alone: `params["alone"]`) built, TIMED_STEPS + 1
    training steps and two evaluation steps run, each timed; the data loaded once when it is on disk."""
    import torch
    from fastai.callback.core import Callback

    from .config import RunConfig
    from .run_memory import peak_bytes, probe_learner
    from .run_pipeline import _device

    class StepTimes(Callback):
        order = 100

        def __init__(self):
            self.train, self.valid = [], []

        def before_batch(self):
            self.start = time.perf_counter()

        def after_batch(self):
            if self.dls.device.type == "cuda":
                torch.cuda.synchronize(self.dls.device)
            (self.train if self.training else self.valid).append(time.perf_counter() - self.start)

    cfg = RunConfig.from_params({k: v for k, v in params.items() if k != "alone"} | {"progress": False})
    device = _device(cfg.device)
    data, draw_train, draw_valid = _data_times(cfg, device)  # first, as in a run: the steps then see its allocator
    _settle_allocator()
    start = time.perf_counter()
    learn = probe_learner(cfg, device, arch=params.get("alone") or None, train_batches=TIMED_STEPS + 1,
                          valid_batches=2)
    build = time.perf_counter() - start
    times = StepTimes()
    learn.fit(1, cbs=[times])
    peak = peak_bytes(cfg, device)
    return {"train_s": statistics.median(times.train[1:]) + draw_train, "valid_s": times.valid[-1] + draw_valid,
            "build_s": build, "data_s": data, "bytes": peak}


def _settle_allocator() -> None:
    """Free one block of SETTLING_BYTES, as loading a run's data does before its first step. glibc's malloc
    serves every block over its mmap threshold (128 KiB at the start) with fresh pages, and raises the threshold
    (up to 32 MiB) only once such a block is freed; until then each CPU step pays page faults for its activations,
    and a probe in a fresh process timed steps a third slower than the run it stands for (benchmarks/results.md)."""
    import torch
    torch.empty(SETTLING_BYTES, dtype=torch.uint8).fill_(0)


def _data_times(cfg, device) -> tuple[float, float, float]:
    """Seconds to load the run's data, and to draw one training and one evaluation batch from its loaders where
    the draw holds up the step (a loader in the training process: the device pipeline's crops and flips, a folder
    read without workers); (0, 0, 0) when the data is not on disk yet (its download is not counted either)."""
    from .data import get_dataloaders
    from .run_models import loader_options
    try:
        if not cfg.data_spec.check_layout(cfg.data_dir):
            return 0.0, 0.0, 0.0
    except ValueError:
        return 0.0, 0.0, 0.0
    start = time.perf_counter()
    dls = get_dataloaders(cfg.dataset, cfg.data_dir, bs=cfg.batch_size, subset=cfg.subset,
                          num_workers=cfg.num_workers, seed=cfg.seed, device=device, pipeline=cfg.data_pipeline,
                          download=False, **loader_options(cfg), **cfg.memory_options)
    load = time.perf_counter() - start
    return load, _draw_time(dls.train, TIMED_STEPS + 1), _draw_time(dls.valid, 2)


def _draw_time(loader, batches: int) -> float:
    """Median seconds to draw a batch after the first (0 when worker processes draw them beside the steps)."""
    if getattr(getattr(loader, "fake_l", loader), "num_workers", 0):   # fastai's count is its `_FakeLoader`'s
        return 0.0
    times, batches_left = [], iter(loader)
    for _ in range(batches):
        start = time.perf_counter()
        if next(batches_left, None) is None:
            break
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) if len(times) > 1 else 0.0


def _run_shape(run) -> tuple:
    """(probe parameters, epochs, training steps and evaluation steps per epoch, teacher evaluation) of a
    planned run (`sddlib.plan.PlannedRun`)."""
    from .config import RunConfig
    from .run_memory import _sizes, probe_params
    cfg = RunConfig.from_params(run.params)
    alone = ""
    if run.kind == "teacher":
        cfg, alone = cfg.teacher_training_config(), cfg.teacher
    elif run.kind == "alone":
        alone = cfg.student
    n_train, n_test, _ = _sizes(cfg)
    if cfg.subset:
        n_train, n_test = min(cfg.subset, n_train), min(cfg.subset, n_test)
    steps = max(n_train // cfg.batch_size, 1), math.ceil(n_test / cfg.batch_size)
    probe = {**probe_params(cfg), "alone": alone}
    return probe, cfg.epochs, steps, run.kind in ("sd", "baseline")


def estimate_plan(runs) -> dict[str, RunCost]:
    """{run folder: RunCost} of every planned run, each distinct configuration timed once on this device."""
    from .run_memory import measure_in_fresh_process
    shapes = {run.folder: _run_shape(run) for run in runs}
    distinct = {}
    for run in reversed(runs):  # an SD run stands for its pair's baseline (the dearer of the two: never under)
        distinct.setdefault(_key(shapes[run.folder][0]), (shapes[run.folder][0], run.run))
    start = time.perf_counter()
    answers = measure_in_fresh_process([p for p, _ in distinct.values()], [name for _, name in distinct.values()],
                                       probe="sddlib.run_cost:_timed_probe", what="cost")
    imports = time.perf_counter() - start - sum(a["build_s"] + a["data_s"] for a in answers) \
        - sum(a["train_s"] * (TIMED_STEPS + 1) + 2 * a["valid_s"] for a in answers)
    measured = dict(zip(distinct, answers))
    out = {}
    for run in runs:
        probe, epochs, (train_steps, eval_steps), teacher_eval = shapes[run.folder]
        m = measured[_key(probe)]
        epoch = train_steps * m["train_s"] + eval_steps * m["valid_s"]
        fixed = max(imports, 0.0) + m["build_s"] + m["data_s"] + (eval_steps * m["valid_s"] if teacher_eval else 0)
        out[run.folder] = RunCost(run.run, fixed + epochs * epoch, fixed, epochs, m["bytes"])
    return out


def _key(probe: dict) -> str:
    """A distinct configuration: everything its step depends on but the method and the scales (dataset, teacher,
    student or the model alone, batch, pipeline, precision, speed switches, device)."""
    return repr(sorted((k, v) for k, v in probe.items() if k not in ("method", "M")))


def wall_time(runs, costs: dict[str, RunCost], jobs: int) -> float:
    """Seconds from start to end on `jobs` workers: the teachers first, then the rest, each phase scheduled
    longest first onto the worker free soonest."""
    total = 0.0
    for phase in (lambda r: r.kind == "teacher", lambda r: r.kind != "teacher"):
        workers = [0.0] * max(jobs, 1)
        for seconds in sorted((costs[r.folder].seconds for r in runs if phase(r)), reverse=True):
            workers[workers.index(min(workers))] += seconds
        total += max(workers)
    return total


def describe_total(runs, costs: dict[str, RunCost], jobs: int, device: str) -> str:
    """The estimate in all: device-hours on `device` and the wall time at `jobs` (each run's own cost is on its line
    of the plan, `PlannedRun.line`)."""
    total = sum(costs[r.folder].seconds for r in runs)
    return (f"estimate: {total / 3600:.1f} device-hours on {device} for {len(runs)} runs; wall time "
            f"{wall_time(runs, costs, jobs) / 3600:.1f} h at --jobs {jobs} (timed here, not a run's record)")


def device_name(params) -> str:
    """The device the run would train on, in words: "cuda:0 (NVIDIA H100 80GB HBM3)", "cpu (16 cores)"."""
    import os

    import torch

    from .config import RunConfig
    from .run_pipeline import _device
    device = _device(RunConfig.from_params(params).device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores)"
