"""Where a sweep's parallel local runs go: each on one device of those visible, the least loaded first, at most
`per_gpu` of them at once on one device (a CIFAR-100 run keeps only a small part of a large GPU busy, and on an
8-GPU node every GPU should be).

The placement is pure (devices are names, loads are counts), so it is tested on a machine without a GPU; whether
`per_gpu` runs of the largest configuration fit one GPU's free memory is the memory plan's to say
(`run_memory.check_per_gpu_fit`).
"""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait

__all__ = ["visible_devices", "least_loaded", "run_placed"]


def visible_devices() -> list[str]:
    """The devices runs may use: `cuda:0` ... (those CUDA_VISIBLE_DEVICES leaves visible), or `cpu` alone."""
    import torch
    count = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]


def least_loaded(devices: Sequence[str], running: Mapping[str, int], per_gpu: int) -> str | None:
    """The device running the fewest runs (the first listed among equals) if it has room for one more
    (fewer than `per_gpu`), else None: every device is full."""
    device = min(devices, key=lambda d: running.get(d, 0))
    return device if running.get(device, 0) < per_gpu else None


def run_placed(jobs: Iterable, devices: Sequence[str], per_gpu: int,
               start: Callable[[object, str], Future]) -> Iterator[tuple[object, str, Future]]:
    """Start the jobs in order, each by `start(job, device)` on the least loaded device with room, so that at most
    `per_gpu` run on one device at a time; yield (job, device, its finished future) as each ends, and start the next
    in its place."""
    if not devices:
        raise ValueError("no device to place runs on; give at least one (e.g. ['cuda:0'] or ['cpu']).")
    if per_gpu < 1:
        raise ValueError(f"--per-gpu {per_gpu} would run nothing; give 1 or more runs per device.")
    waiting, running, load = deque(jobs), {}, Counter()
    while waiting or running:
        while waiting and (device := least_loaded(devices, load, per_gpu)) is not None:
            job = waiting.popleft()
            running[start(job, device)] = job, device
            load[device] += 1
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            job, device = running.pop(future)
            load[device] -= 1
            yield job, device, future
