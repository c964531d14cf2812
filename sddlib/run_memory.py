"""How much memory one run takes, measured, so a sweep never starts more runs on a device than fit.

Small CIFAR models leave most of a large GPU idle, so `sweep --jobs N` runs N experiments on one
device at once; too many and every run dies of out-of-memory hours in. `run_memory(params)` measures a
run before any starts: two training steps of its real step (teacher, student, distillation loss, batch
size, speed switches) on random batches of the dataset's image shape, each in a process of its own so that
the figure is this run's alone: one fresh subprocess imports the training code once and forks a child per
configuration (a fresh interpreter per configuration would pay those imports, ~15 s here, every time). On
CUDA it is the allocator's peak, plus the dataset the device pipeline keeps there, plus the CUDA context;
on the CPU the child's peak resident memory (the imports and the data included, as in a fresh process).
`check_jobs_fit` refuses a job count whose runs would not fit what the device has free, in one sentence;
`check_per_gpu_fit` the same for `per_gpu` runs on each GPU (`sddlib.placement`).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["train_images", "folder_footprint", "run_memory", "check_jobs_fit", "check_per_gpu_fit", "too_many",
           "probe_learner", "probe_params", "peak_bytes", "measure_in_fresh_process"]

CUDA_CONTEXT_BYTES = 512 * 2**20  # the CUDA context and cuDNN workspaces the allocator does not see
HEADROOM = 0.9                    # never plan more than this share of the free memory
_PROBE_KEYS = ("dataset", "data_dir", "teacher", "student", "method", "M", "batch_size", "subset", "device", "pipeline",
               "channels_last", "precision", "compile", "imports", "image_size", "augment", "val_fraction",
               "in_memory", "memory_budget", "teacher_kwargs", "student_kwargs", "num_workers")


def _sizes(cfg) -> tuple:
    """(train images, test images, image side) of the run's dataset (`DatasetSpec.image_sizes`)."""
    return cfg.data_spec.image_sizes(cfg.data_dir, cfg.val_fraction, cfg.image_size)


def train_images(params) -> int:
    """Images one epoch of the run trains on (its subset, if any)."""
    from .config import RunConfig
    cfg = RunConfig.from_params(params)
    n = _sizes(cfg)[0]
    return min(cfg.subset, n) if cfg.subset else n


def folder_footprint(params) -> int:
    """Bytes a `dataset: folder` run keeps in memory for its decoded images, known before it starts: what they take
    at their kept size when the run would keep them (in_memory True, or 'auto' within its memory_budget of what
    the device has available now), 0 when it would read the files. On a GPU they are held on the host and again
    on the device. A run with in_memory=True over its budget is refused here, in the run's own sentence."""
    from .config import RunConfig
    from .data.folder import plan_folder_memory
    from .run_pipeline import _device
    cfg = RunConfig.from_params(params)
    plan = plan_folder_memory(cfg.data_dir, image_size=cfg.image_size, augment=cfg.augment,
                              val_fraction=cfg.val_fraction, device=_device(cfg.device), **cfg.memory_options)
    return plan.footprint_bytes if plan.in_memory else 0


def probe_learner(cfg, device, arch: str | None = None, train_batches: int = 2, valid_batches: int = 1):
    """The run's real step (teacher, student, distillation loss, batch size, speed switches) as a Learner over
    random batches of the dataset's image shape; `arch`: that model trained alone, with no teacher."""
    from fastai.data.core import DataLoaders

    from .data.build import TensorImageDataset
    from .data.device import DeviceImageDL
    from .distill import DistillationCallback
    from .models import create_model
    from .run_models import model_for
    from .training import build_learner

    n_train, n_test, side = _sizes(cfg)
    num_classes = cfg.num_classes or 1000
    n = max(train_batches, valid_batches) * cfg.batch_size
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,))
    stats = dict(mean=(0.5,) * 3, std=(0.25,) * 3, device=device)
    train = DeviceImageDL(TensorImageDataset(images[:train_batches * cfg.batch_size],
                                             labels[:train_batches * cfg.batch_size]),
                          bs=cfg.batch_size, shuffle=True, drop_last=True, **stats)
    valid = DeviceImageDL(TensorImageDataset(images[:valid_batches * cfg.batch_size],
                                             labels[:valid_batches * cfg.batch_size]), bs=cfg.batch_size, **stats)
    if arch is None or arch in (cfg.student, cfg.teacher):   # the run's own models, with their constructor keywords
        student = model_for(cfg, "student" if arch in (None, cfg.student) else "teacher", num_classes)
    else:
        student = create_model(arch, num_classes=num_classes, stem=cfg.stem)
    cbs = []
    if arch is None:
        cbs = [DistillationCallback(model_for(cfg, "teacher", num_classes), cfg.method, cfg.scales,
                                    logit_standardization=cfg.logit_standardization, **cfg.loss_kwargs)]
    return build_learner(DataLoaders(train, valid, device=device), student, cfg, cbs=cbs)


def _probe(params: dict) -> int:
    """Bytes the run needs at its peak (runs in the measuring subprocess)."""
    from .config import RunConfig
    from .run_pipeline import _device

    cfg = RunConfig.from_params({**params, "progress": False})
    device = _device(cfg.device)
    probe_learner(cfg, device).fit(1)
    return peak_bytes(cfg, device)


def peak_bytes(cfg, device) -> int:
    """The peak memory of this (probe) process after its steps, plus the data a real run keeps that the probe's
    random batches do not: the run's peak on its device."""
    n_train, n_test, side = _sizes(cfg)
    folder = folder_footprint(cfg) if cfg.dataset == "folder" else 0   # the probe's random batches hold none of it
    if device.type != "cuda":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 + folder
    resident = (min(cfg.subset, n_train) if cfg.subset else n_train) + n_test
    # a folder's kept images are what folder_footprint counts; a built-in dataset on the device pipeline holds all
    data = folder if cfg.dataset == "folder" else (resident * 3 * side * side if cfg.data_pipeline == "device" else 0)
    return torch.cuda.max_memory_reserved(device) + data + CUDA_CONTEXT_BYTES


def _probe_in_child(params: dict, probe=None) -> dict:
    """`_probe(params)` (or `probe(params)`, a dict) in a child forked from this process: {"bytes": n} or
    {"error": its last line}. The measuring process has only imported modules (no thread pool, no CUDA context
    yet), so forking is safe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report through the pipe, and leave without running any cleanup
        os.close(read)
        try:
            answer = probe(params) if probe else {"bytes": _probe(params)}
        except BaseException as err:  # noqa: BLE001 - any failure is reported to the parent
            answer = {"error": f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1]}"}
        os.write(write, json.dumps(answer).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    return json.loads(text) if text else {"error": f"the measuring process died (wait status {status})"}


def _probe_each(probes: list[dict], modules: list[str] = (), probe: str = "") -> list[dict]:
    """Runs in the measuring subprocess: import the training code once (and the `modules` that register the
    datasets sddlib does not define), then measure each probe in a child (`probe`: "module:function" to call
    instead of `_probe`)."""
    import importlib
    for module in modules:
        importlib.import_module(module)
    # what every child would otherwise import itself (torch.optim imports torch._dynamo on its first use)
    import torch._dynamo  # noqa: F401
    from . import experiment, training  # noqa: F401
    function = getattr(importlib.import_module(probe.split(":")[0]), probe.split(":")[1]) if probe else None
    return [_probe_in_child(params, function) for params in probes]


def probe_params(cfg) -> dict:
    """What a probe of the configuration needs: the values that decide its step (the dataset's own parameters
    too: a folder's image size decides its models' stem)."""
    return {**{k: cfg[k] for k in _PROBE_KEYS}, **cfg.data_options}


def measure_in_fresh_process(probes: list[dict], names: list[str], probe: str = "", what: str = "memory") -> list:
    """Each probe measured in one fresh subprocess (the training code imported once, a forked child per probe):
    `_probe`'s {"bytes": n}, or `probe` ("module:function")'s dict; RuntimeError naming the run that failed."""
    from .data.spec import registering_modules
    code = ("import json, sys; from sddlib.run_memory import _probe_each; "
            "print(json.dumps(_probe_each(json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3])))")
    # the runs' `imports` are found from this process's folder, as the runs themselves find them
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", code, json.dumps(probes), json.dumps(registering_modules()), probe],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "PYTHONPATH": path})
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"measuring the {what} of {', '.join(names)} failed: {last}")
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    for name, answer in zip(names, answers):
        if "error" in answer:
            raise RuntimeError(f"measuring the {what} of {name} failed: {answer['error']}")
    return answers


def _measure(configs) -> dict[str, int]:
    """Peak bytes of each configuration (by name), measured in one fresh subprocess."""
    answers = measure_in_fresh_process([probe_params(cfg) for cfg in configs], [cfg.name for cfg in configs])
    return {cfg.name: int(answer["bytes"]) for cfg, answer in zip(configs, answers)}


def run_memory(params) -> int:
    """Peak bytes of one run of `params`, measured in a fresh process."""
    from .config import RunConfig
    cfg = RunConfig.from_params(params)
    return _measure([cfg])[cfg.name]


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("cannot tell how much host memory is free (no MemAvailable in /proc/meminfo).")


def _largest(params_list) -> tuple[str, int, torch.device]:
    """Measure each distinct configuration once: the largest one's name and bytes, and the runs' device."""
    from .config import RunConfig
    from .run_pipeline import _device
    configs = [RunConfig.from_params(p) for p in params_list]
    distinct = {tuple(str(c[k]) for k in _PROBE_KEYS) + tuple(map(str, c.data_options.values())): c
                for c in configs}
    sizes = _measure(list(distinct.values()))
    name = max(sizes, key=sizes.get)
    return name, sizes[name], _device(configs[0].device)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def too_many(flag: str, count: int, name: str, need: int, free: dict[str, int]) -> str | None:
    """The one-sentence refusal when `count` runs of `need` bytes (the largest, `name`) would not fit what one of
    the devices has free (`free`: bytes by device, e.g. {"cuda:0": ..., "cuda:1": ...}); None when they fit on each."""
    for where, room in free.items():
        if count * need > HEADROOM * room:
            fit = max(int(HEADROOM * room // need), 0)
            return (f"{flag} {count} needs about {count} x {_gib(need)} = {_gib(count * need)} ({name}, measured) "
                    f"but {where} has {_gib(room)} free; use {flag} {fit} or fewer.")
    return None


def check_jobs_fit(params_list, jobs: int) -> str:
    """Measure each distinct configuration once; raise ValueError (one sentence) when `jobs` of the largest
    would not fit the device's free memory; otherwise return a line saying what was measured."""
    name, largest, device = _largest(params_list)
    free = _free_bytes(device)
    where = f"{device}" if device.type == "cuda" else "host memory"
    refusal = too_many("--jobs", jobs, name, largest, {where: free})
    if refusal:
        raise ValueError(refusal)
    return f"memory: {jobs} jobs x {_gib(largest)} (largest run, {name}, measured) of {_gib(free)} free on {where}"


def check_per_gpu_fit(params_list, per_gpu: int, devices: list[str]) -> str:
    """As `check_jobs_fit`, for `per_gpu` runs at once on each of `devices` (`placement.visible_devices()`)."""
    name, largest, _ = _largest(params_list)
    free = {device: _free_bytes(torch.device(device)) for device in devices}
    refusal = too_many("--per-gpu", per_gpu, name, largest, free)
    if refusal:
        raise ValueError(refusal)
    return (f"memory: {per_gpu} runs x {_gib(largest)} (largest run, {name}, measured) on each of {len(devices)} "
            f"devices, the least free {_gib(min(free.values()))}")
