"""Training throughput of the CIFAR-100 protocol: this project's default path against a loop written in
the reference's style, on synthetic data of CIFAR-100's shape (uint8 32 x 32 images, 100 classes).

    .venv/bin/python benchmarks/throughput.py                       # CPU: small models, few steps
    .venv/bin/python benchmarks/throughput.py --device cuda --steps 200 --json out.json
    .venv/bin/python benchmarks/throughput.py --device cuda --jobs 4   # + 4 concurrent runs of (a)
    .venv/bin/python benchmarks/throughput.py --device cuda --precision bf16 --channels-last --compile reduce-overhead

Three paths train the same SD-DKD step (M [1,2,4], batch 64, SGD + weight decay, gradient clipping):
  (a) this project's default: the fastai Learner, device-resident data, the default speed switches
      (or those given: --channels-last, --precision, --compile, each a run parameter of the same name);
  (b) this project with reference-style settings: per-image CPU transforms in DataLoader workers, fp32;
  (c) a plain PyTorch loop in the reference's style: torchvision transforms on PIL images,
      DataLoader(num_workers=2), fp32, `loss.item()` every step, the same losses.
Each path runs in its own subprocess (clean peak-memory figures), times `--steps` steps after
`--warmup`, and the table gives images/s, ms/step, peak device and host memory, a/c and b/c, and the
time a 240-epoch run (50,000 images per epoch) would take at that rate. Results are printed and, with
`--record`, appended to benchmarks/results.md; timings are never asserted by tests.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results.md"
CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
EPOCH_IMAGES, EPOCHS = 50_000, 240
DKD = dict(alpha=1.0, beta=8.0, T=4.0)
PATHS = {"a": "sddlib default", "b": "sddlib, reference-style settings", "c": "plain loop, reference style"}


def synthetic_cifar(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 100, (n,), generator=g))


# --- host reads (what is a device synchronisation on a GPU) ---------------------------------------------
_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


@contextlib.contextmanager
def count_host_reads(device: torch.device, counter: list):
    """Count host synchronisations: on CUDA every sync torch reports (sync debug mode, 'warn'); on a
    CPU, where nothing synchronises, every Python-level read of a tensor's value that would be one."""
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(0)
        counter[0] += sum("synchroniz" in str(w.message) for w in caught)
        return
    originals = {name: getattr(torch.Tensor, name) for name in _READS}

    def counting(name):
        def read(self, *args, **kwargs):
            counter[0] += 1
            return originals[name](self, *args, **kwargs)
        return read
    for name in _READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- (c) the reference-style loop --------------------------------------------------------------------------
class _PILDataset(torch.utils.data.Dataset):
    """HWC uint8 arrays turned into PIL images and transformed one by one, as torchvision's CIFAR100 does."""

    def __init__(self, images, labels):
        from torchvision import transforms as T
        self.images, self.labels = images.permute(0, 2, 3, 1).numpy(), labels.tolist()
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                    T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def run_reference_loop(args, device, images, labels) -> dict:
    from sddlib.losses import sdd_loss
    from sddlib.models import create_model
    from sddlib.regions import ScaleDecoupled

    torch.manual_seed(0)
    teacher = ScaleDecoupled(create_model(args.teacher, num_classes=100).to(device).eval(), (1, 2, 4))
    student = ScaleDecoupled(create_model(args.student, num_classes=100).to(device).train(), (1, 2, 4))
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(_PILDataset(images, labels), batch_size=args.batch_size, shuffle=True,
                                         num_workers=2, pin_memory=device.type == "cuda", drop_last=True)
    losses = []
    for step, (x, y) in enumerate(loader):
        if step == args.warmup:
            _sync(device)
            start = time.perf_counter()
        if step == args.warmup + args.steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.no_grad():
            _, t_regions = teacher(x)
        logits, s_regions = student(x)
        ce = torch.nn.functional.cross_entropy(logits, y)
        distill = sdd_loss(s_regions, t_regions, y, base="dkd", **DKD)
        loss = ce + min(1 / 20, 1.0) * distill
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 40)
        opt.step()
        losses.append(loss.item())   # the reference logs every step
    _sync(device)
    seconds = time.perf_counter() - start
    if not np.isfinite(losses).all():
        raise SystemExit("(c) produced a non-finite loss on synthetic data; the comparison would be void.")
    return {"seconds": seconds, "host_reads_per_step": None}


# --- (a) and (b) the project's Learner ---------------------------------------------------------------------
def run_project(args, device, images, labels, reference_style: bool, ready=None) -> dict:
    """(a) or (b); `ready()`, when given, is called after the warm-up, just before the timed steps (gpu_packing.py:
    concurrent runs start their timed steps together)."""
    from fastai.callback.core import Callback, CancelFitException
    from torchvision import transforms as T

    from sddlib import training
    from sddlib.data.build import TensorImageDataset, make_dataloaders
    from sddlib.data.info import DatasetInfo
    from sddlib.distill import DistillationCallback
    from sddlib.models import create_model

    torch.manual_seed(0)
    params = dict(dataset="cifar100", teacher=args.teacher, student=args.student, method="dkd", M="[1,2,4]",
                  batch_size=args.batch_size, progress=False, device=str(device))
    if not reference_style:
        params.update(channels_last=args.channels_last, precision=args.precision, compile=args.compile)
    info = DatasetInfo("synthetic", [str(i) for i in range(100)], CIFAR_MEAN, CIFAR_STD, image_size=32)
    train_ds = TensorImageDataset(images, labels, transform=T.Compose([T.RandomCrop(32, padding=4),
                                                                      T.RandomHorizontalFlip()]),
                                  mean=CIFAR_MEAN, std=CIFAR_STD)
    valid_ds = TensorImageDataset(images[:64], labels[:64], mean=CIFAR_MEAN, std=CIFAR_STD)
    dls = make_dataloaders(train_ds, valid_ds, info, bs=args.batch_size, drop_last=True, seed=0, device=device,
                           num_workers=2 if reference_style else 0,
                           pipeline="workers" if reference_style else "device", augment=dict(padding=4, flip=True))
    teacher = create_model(args.teacher, num_classes=100).to(device)
    student = create_model(args.student, num_classes=100)
    distill = DistillationCallback(teacher, "dkd", (1, 2, 4), **DKD)
    reads = [0]

    class Timer(Callback):
        order = 100

        def before_batch(self):
            if self.iter == args.warmup:
                _sync(device)
                if ready is not None:
                    ready()
                self.start = time.perf_counter()
                self.reads = count_host_reads(device, reads)
                self.reads.__enter__()

        def after_batch(self):
            if self.iter == args.warmup + args.steps - 1:
                self.reads.__exit__(None, None, None)
                _sync(device)
                self.seconds = time.perf_counter() - self.start
                raise CancelFitException()

    timer = Timer()
    learn = training.build_learner(dls, student, params, cbs=[distill, timer])
    learn.fit(1)
    return {"seconds": timer.seconds, "host_reads_per_step": reads[0] / args.steps}


# --- driver --------------------------------------------------------------------------------------------------
def one_path(args) -> dict:
    device = torch.device(args.device)
    n = (args.warmup + args.steps + 2) * args.batch_size
    images, labels = synthetic_cifar(n)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = (run_reference_loop(args, device, images, labels) if args._path == "c"
           else run_project(args, device, images, labels, reference_style=args._path == "b"))
    out["images_per_s"] = args.steps * args.batch_size / out["seconds"]
    out["ms_per_step"] = 1000 * out["seconds"] / args.steps
    out["peak_device_mib"] = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None)
    out["peak_host_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _spawn(args, path: str) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--_path", path, "--device", args.device, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--teacher", args.teacher, "--student", args.student,
           "--batch-size", str(args.batch_size), "--precision", args.precision, "--compile", args.compile]
    cmd += ["--channels-last"] if args.channels_last else []
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)


def _result(proc: subprocess.Popen) -> dict:
    text, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"a benchmark subprocess failed (exit {proc.returncode}); see its output above.")
    return json.loads(text.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 200 on CUDA, 20 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 30 on CUDA, 5 on CPU)")
    ap.add_argument("--teacher", default=None, help="default resnet32x4 (CUDA) / resnet14 (CPU)")
    ap.add_argument("--student", default=None, help="default ShuffleV1 (CUDA) / resnet8 (CPU)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--channels-last", action="store_true", help="(a) with channels_last=True")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="(a) with this precision")
    ap.add_argument("--compile", default="off", help="(a) with this torch.compile mode")
    ap.add_argument("--jobs", type=int, default=1, help="also run N concurrent copies of (a); aggregate images/s")
    ap.add_argument("--json", help="write the figures as JSON here")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/results.md")
    ap.add_argument("--_path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (200 if cuda else 20)
    args.warmup = args.warmup if args.warmup is not None else (30 if cuda else 5)
    args.teacher = args.teacher or ("resnet32x4" if cuda else "resnet14")
    args.student = args.student or ("ShuffleV1" if cuda else "resnet8")
    if args._path:
        print(json.dumps(one_path(args)))
        return {}

    results = {path: _result(_spawn(args, path)) for path in PATHS}
    device_name = torch.cuda.get_device_name(0) if cuda else f"{os.cpu_count()} CPU cores, {platform.machine()}"
    switches = {"channels_last": args.channels_last, "precision": args.precision, "compile": args.compile}
    summary = {"device": device_name, "teacher": args.teacher, "student": args.student, "batch_size": args.batch_size,
               "switches_a": switches,
               "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__,
               "images_per_s": {k: round(v["images_per_s"], 1) for k, v in results.items()},
               "speedup_a_over_c": round(results["a"]["images_per_s"] / results["c"]["images_per_s"], 3),
               "speedup_b_over_c": round(results["b"]["images_per_s"] / results["c"]["images_per_s"], 3),
               "syncs_per_step_a": results["a"]["host_reads_per_step"], "paths": results}
    if args.jobs > 1:
        start = time.perf_counter()
        procs = [_spawn(args, "a") for _ in range(args.jobs)]
        concurrent = [_result(p) for p in procs]
        summary["jobs"] = args.jobs
        summary["aggregate_images_per_s"] = round(sum(r["images_per_s"] for r in concurrent), 1)
        summary["jobs_wall_s"] = round(time.perf_counter() - start, 1)
    publish("throughput.py", argv, summary, _table(summary), args.json, args.record)
    return summary


def publish(script: str, argv, summary: dict, table: str, json_path: str | None, record: bool) -> None:
    """Print the table; write the figures as JSON to `json_path`; with `record`, append the table to results.md
    under the script's name, the date, the device and the command."""
    print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2))
    if record:
        with RESULTS.open("a") as f:
            f.write(f"\n### {script}, {datetime.date.today()}, {summary['device']}\n\n"
                    f"`{' '.join([f'benchmarks/{script}', *(argv if argv is not None else sys.argv[1:])])}`\n\n"
                    f"{table}\n")


def _table(s: dict) -> str:
    hours = lambda ips: EPOCHS * EPOCH_IMAGES / ips / 3600  # noqa: E731
    mib = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    lines = [f"{s['teacher']} -> {s['student']}, SD-DKD M [1,2,4], batch {s['batch_size']}, {s['steps']} timed steps "
             f"after {s['warmup']}, on {s['device']} (torch {s['torch']}); switches of (a): "
             f"{', '.join(f'{k}={v}' for k, v in s['switches_a'].items())}", "",
             "| path | images/s | ms/step | peak device MiB | peak host MiB | vs (c) | 240 epochs | host reads/step |",
             "|---|---|---|---|---|---|---|---|"]
    for key, name in PATHS.items():
        r = s["paths"][key]
        ratio = r["images_per_s"] / s["paths"]["c"]["images_per_s"]
        reads = "-" if r["host_reads_per_step"] is None else f"{r['host_reads_per_step']:.1f}"
        lines.append(f"| ({key}) {name} | {r['images_per_s']:.0f} | {r['ms_per_step']:.1f} | "
                     f"{mib(r['peak_device_mib'])} | {mib(r['peak_host_mib'])} | {ratio:.2f}x | "
                     f"{hours(r['images_per_s']):.1f} h | {reads} |")
    if "jobs" in s:
        lines += ["", f"{s['jobs']} concurrent runs of (a): {s['aggregate_images_per_s']:.0f} images/s in all "
                      f"({s['jobs_wall_s']:.0f} s wall)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
