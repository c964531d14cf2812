"""A folder of images in memory when it fits: what its decoded images take at the size they are kept, what the
machine can give them (`memory_budget`), the decision with its reason in one sentence, and the one pass over the
files, on every core, that decodes each image once (the check that refuses a bad file) and keeps its pixels.

Kept sizes: the small-image recipes (`cifar`, `crop`) keep every image at the training size, the square their
per-image path crops from; the ImageNet recipe keeps training images at a short side of image_size / 0.875 (256
for 224: the eval resize), aspect ratio intact (up to 2:1; a longer one keeps the centre of its long side), and
test images as their eval centre crop.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..console import progress_bars_wanted

__all__ = ["IN_MEMORY", "DEFAULT_MEMORY_BUDGET", "PROGRESS_FROM", "MemoryPlan", "kept_side", "resized_size",
           "folder_bytes", "available_memory", "plan_memory", "MemoryBudgetError", "parallel_map", "SquareStore", "CanvasStore",
           "canvas_length", "MAX_ASPECT"]

IN_MEMORY = ("auto", True, False)
# The share of the memory available when a folder is loaded that its decoded images may take: half leaves the
# machine usable (the training step, the notebook, other runs of a sweep).
DEFAULT_MEMORY_BUDGET = 0.5
PROGRESS_FROM = 2_000  # images: the check pass of a longer folder shows a progress bar
MAX_ASPECT = 2.0       # in memory, a longer image (a panorama) keeps the centre of its long side at twice the short


def kept_side(image_size: int, augment: str) -> int:
    """The short side training images are kept at: the image size for the small-image recipes, the eval
    resize (image_size / 0.875) for the ImageNet recipe, enough for a random resized crop of the whole image."""
    return round(image_size / 0.875) if augment == "imagenet" else image_size


def resized_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(height, width) of a `width` x `height` image after `torchvision.transforms.Resize(side)` (shorter side to
    `side`, the longer one scaled and truncated, as torchvision computes it)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(side * long / short)
    return (new_long, side) if width <= height else (side, new_long)


def canvas_length(sizes, side: int) -> int:
    """The long side of the canvas that holds images of `sizes` ((width, height) each) at short side `side`: the
    longest of them, at most MAX_ASPECT x side."""
    longest = max((max(resized_size(w, h, side)) for w, h in sizes if w and h), default=side)
    return min(longest, round(MAX_ASPECT * side))


def folder_bytes(train_sizes, n_valid: int, image_size: int, augment: str) -> int:
    """Bytes the decoded images take in memory: `train_sizes` is the training images' count (small-image recipes)
    or their (width, height) list (ImageNet recipe: a canvas slot of the kept short side by the longest side)."""
    square = 3 * image_size * image_size
    if augment != "imagenet":
        return (int(train_sizes) + n_valid) * square
    side = kept_side(image_size, augment)
    return len(train_sizes) * 3 * side * canvas_length(train_sizes, side) + n_valid * square


def available_memory(device) -> dict:
    """Bytes available to this process's data now: the host's available memory shared by the processes of a
    torchrun job on this host (each keeps its own copy), and on a GPU its free memory as well."""
    host = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                host = int(line.split()[1]) * 1024
    if host is None:  # no /proc (macOS): the physical memory, as a bound
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    out = {"host": host // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))}
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        out[str(device)] = torch.cuda.mem_get_info(device)[0]
    return out


def _bytes(n: int) -> str:
    """Bytes for people: 512.0 KiB, 37.5 MiB, 1.57 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


@dataclass
class MemoryPlan:
    """Whether a folder's decoded images are kept in memory, and why (one sentence, printed and recorded)."""
    in_memory: bool
    reason: str
    footprint_bytes: int | None
    budget_bytes: int | None
    asked: object
    memory_budget: float

    def record(self) -> dict:
        return {"in_memory": self.in_memory, "asked": self.asked, "reason": self.reason,
                "footprint_bytes": self.footprint_bytes, "budget_bytes": self.budget_bytes,
                "memory_budget": self.memory_budget}


class MemoryBudgetError(ValueError):
    """in_memory=True for a folder whose decoded images exceed the memory budget (one sentence)."""


def plan_memory(in_memory, memory_budget: float, footprint: int | None, available: dict) -> MemoryPlan:
    """The decision for a folder whose decoded images take `footprint` bytes, given `available` (bytes per
    place, `available_memory`): in memory when `footprint` is within `memory_budget` of the tightest place;
    otherwise the files (in_memory 'auto'), or a refusal naming the budget and the parameter (in_memory True)."""
    if in_memory not in IN_MEMORY:
        raise ValueError(f"in_memory={in_memory!r} is not accepted; use 'auto', True or False.")
    if not 0 < memory_budget <= 1:
        raise ValueError(f"memory_budget={memory_budget!r} is not accepted; give the share of the available "
                         "memory the images may take, a number in (0, 1].")
    if in_memory is False:
        return MemoryPlan(False, "in_memory=False: every epoch decodes the image files again",
                          footprint, None, in_memory, memory_budget)
    where, free = min(available.items(), key=lambda kv: kv[1])
    place = "host memory" if where == "host" else f"{where} memory"
    budget = int(memory_budget * free)
    if footprint <= budget:
        return MemoryPlan(True, f"in memory: the decoded images take {_bytes(footprint)}, within memory_budget="
                          f"{memory_budget} of the {_bytes(free)} of {place} available ({_bytes(budget)})",
                          footprint, budget, in_memory, memory_budget)
    over = (f"the decoded images would take {_bytes(footprint)}, more than memory_budget={memory_budget} of the "
            f"{_bytes(free)} of {place} available ({_bytes(budget)})")
    if in_memory is True:
        raise MemoryBudgetError(f"in_memory=True but {over}; raise memory_budget, free memory, or set in_memory="
                                "'auto' to read the files in every epoch when they do not fit.")
    return MemoryPlan(False, f"from the files: {over} (in_memory='auto'; a larger memory_budget keeps them in "
                      "memory)", footprint, budget, in_memory, memory_budget)


def decode_threads() -> int:
    """Threads for the check pass: every core this process may use (PIL decodes and resizes without the GIL)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(32, cores or 1))


def parallel_map(work, items: list, threads: int, what: str = "decoding") -> tuple[list, float]:
    """`[work(i, item) ...]` on `threads` threads, in order, with a progress bar from PROGRESS_FROM items on;
    and the seconds it took."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = pool.map(work, range(len(items)), items)
        if len(items) >= PROGRESS_FROM and progress_bars_wanted():
            from fastprogress.fastprogress import progress_bar
            results = progress_bar(results, total=len(items), leave=False)
            results.comment = what
        results = list(results)
    return results, time.perf_counter() - start


class SquareStore:
    """n images of `side` x `side` pixels kept as one N x 3 x side x side uint8 tensor, written in place by the
    decoding threads (each to its own slot: no copy, no lock)."""

    def __init__(self, n: int, side: int):
        self.images = torch.empty(n, 3, side, side, dtype=torch.uint8)

    def put(self, k: int, pixels: np.ndarray) -> None:
        self.images[k].permute(1, 2, 0).numpy()[...] = pixels   # through a numpy view: PIL's arrays are read-only

    def select(self, slots: list[int]) -> torch.Tensor:
        """The kept images in `slots` order (the whole tensor, uncopied, when that is all of them in order)."""
        if slots == list(range(len(self.images))):
            return self.images
        return self.images[torch.as_tensor(slots, dtype=torch.long)]


class CanvasStore:
    """Images of many sizes kept at one short side `side` in the slots of one N x 3 x side x L uint8 canvas, the
    short side vertical (portrait images transposed); L is the longest long side, at most MAX_ASPECT x side
    (a longer image keeps the centre of its long side). The sizes come from the files' headers, before decoding,
    so the threads write in place."""

    def __init__(self, sizes: list[tuple[int, int]], side: int):
        kept = [resized_size(w, h, side) if w and h else (side, side) for w, h in sizes]   # (height, width)
        self.length = canvas_length(sizes, side)
        self.sizes = [(min(h, self.length), min(w, self.length)) for h, w in kept]
        self.transposed = [h > w for h, w in self.sizes]
        self.images = torch.zeros(len(sizes), 3, side, self.length, dtype=torch.uint8)

    def put(self, k: int, pixels: np.ndarray) -> None:
        h, w = self.sizes[k]
        top, left = (pixels.shape[0] - h) // 2, (pixels.shape[1] - w) // 2   # the centre of a too-long side
        pixels = pixels[top:top + h, left:left + w]
        if pixels.shape[:2] != (h, w):
            raise RuntimeError(f"image {k} decoded to {pixels.shape[:2]}, its header said {(h, w)}.")
        if self.transposed[k]:
            pixels, (h, w) = pixels.transpose(1, 0, 2), (w, h)
        self.images[k, :, :h, :w].permute(1, 2, 0).numpy()[...] = pixels

    def select(self, slots: list[int]) -> tuple[torch.Tensor, list, list]:
        """(canvas, sizes, transposed) of the kept images in `slots` order (the canvas uncopied when that is all of
        them in order)."""
        images = self.images if slots == list(range(len(self.images))) else \
            self.images[torch.as_tensor(slots, dtype=torch.long)]
        return images, [self.sizes[k] for k in slots], [self.transposed[k] for k in slots]
