"""Export a finished run's student as a folder any timm user loads, ready for the Hugging Face Hub.

    python -m sddlib.export RUN_DIR DEST [--weights best] [--license ID] [--data-dir DIR]

DEST gets `model.safetensors` (the student's state dict), `config.json` in timm's pretrained-config shape
(architecture, num_classes, label names, input size, mean and std, crop) and `README.md`, a model card with the
Hub's front matter (with the license, when one is given) and the facts of the run's metrics.json: the data set and
its size, the distillation, and in words which epoch's weights these are. A `timm:<name>` student loads with
`timm.create_model("local-dir:DEST", pretrained=True)`; sddlib's own networks (the CIFAR nets, ...) with
`sddlib.models.create_model`, as the card says. Pushing is yours: `hf upload <you>/<name> DEST` (older
huggingface_hub: `huggingface-cli upload`); nothing here uploads.

The folder is written beside DEST under a temporary name and renamed when complete, so a failure leaves nothing.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch.nn as nn

from .startup import freeze_imports

__all__ = ["ExportError", "export_student", "main"]

# The student file of a distillation run per `weights` choice (what `experiment.run` writes).
WEIGHT_FILES = {"last": "student.pth", "best": "student_best.pth"}
# A license as the Hub's model cards name one (apache-2.0, mit, cc-by-4.0, ..., other).
LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")


class ExportError(ValueError):
    """The run or the destination cannot be exported; the message is one sentence saying what to do."""


def _finished_run(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a run folder (no such directory); give the folder a run wrote, "
                          "outputs/<dataset>/<run>.")
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except FileNotFoundError:
        raise ExportError(f"{run_dir} is not a run folder: it holds no metrics.json; give the folder a run wrote, "
                          "outputs/<dataset>/<run>.") from None
    except (OSError, ValueError) as err:
        raise ExportError(f"{run_dir}/metrics.json cannot be read ({err}); rerun the run to rewrite it.") from None
    status = metrics.get("status") if isinstance(metrics, dict) else None
    if status != "complete":
        raise ExportError(f"{run_dir} is not a finished run (metrics.json says status {status!r}); run it again to "
                          "finish it (it continues from its last epoch), then export.")
    if metrics.get("variant") == "alone" or not metrics.get("teacher"):
        raise ExportError(f"{run_dir} is a model trained alone, not a distilled student; export a distillation "
                          "run's folder.")
    return metrics


def _empty_destination(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ExportError(f"{dest} already exists and is not an empty folder; give a new folder (an export never "
                          "overwrites).")


def _data(cfg, data_dir):
    """The run's data as its loader gives it: class names, normalisation, image size (`.info`) and its splits."""
    from .data import get_dataloaders
    from .run_models import loader_options
    folder = data_dir or cfg.data_dir
    try:
        dls = get_dataloaders(cfg.dataset, folder, bs=cfg.batch_size, subset=cfg.subset, num_workers=0,
                              seed=cfg.seed, device="cpu", download=False, **loader_options(cfg))
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"the run's data ({cfg.dataset} in {folder}) could not be read for its class names and "
                          f"normalisation ({first}); give its folder as data_dir (--data-dir).") from None
    return dls


def _student(cfg, run_dir: Path, weights: str, num_classes: int) -> nn.Module:
    from .run_models import load_run_models
    path = run_dir / WEIGHT_FILES[weights]
    if not path.is_file():
        fix = "export the final epoch's (weights='last')" if weights == "best" else "run it again with force=True"
        raise ExportError(f"{path} is missing, so the run's {weights} student cannot be exported; {fix}.")
    return load_run_models(run_dir, num_classes, cfg=cfg, weights=WEIGHT_FILES[weights])[0].eval()


def _preprocessing(cfg, info) -> dict:
    """How the run's loaders prepared a test image, in timm's data-config terms."""
    crop_pct, crop_mode = cfg.data_spec.test_crop_for(cfg.augment, info.image_size)
    return {"input_size": (3, info.image_size, info.image_size), "mean": info.mean, "std": info.std,
            "interpolation": "bilinear", "crop_pct": crop_pct, "crop_mode": crop_mode}


def _timm_config(model: nn.Module, path: Path, info, data_config: dict, tag: str) -> None:
    """timm's own `config.json` writer, without the facts of the architecture's ImageNet weights (tag, licence)."""
    from timm.models._hub import save_config_for_hf
    save_config_for_hf(model, str(path), model_config={"label_names": list(info.class_names)},
                       data_config=data_config)
    config = json.loads(path.read_text())
    config["pretrained_cfg"].pop("license", None)
    config["pretrained_cfg"]["tag"] = tag
    path.write_text(json.dumps(config, indent=2))


def _own_config(cfg, path: Path, info, data_config: dict, tag: str) -> None:
    """The same shape for sddlib's own networks (timm cannot build them: `sddlib` says how)."""
    pretrained_cfg = {"tag": tag, "input_size": list(data_config["input_size"]),
                      **{k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()
                         if k != "input_size"}, "num_classes": info.num_classes}
    config = {"architecture": cfg.student, "num_classes": info.num_classes, "label_names": list(info.class_names),
              "pretrained_cfg": pretrained_cfg, "sddlib": {"model": cfg.student, "stem": cfg.stem}}
    path.write_text(json.dumps(config, indent=2))


def _rounded(values) -> list[float]:
    return [round(v, 4) for v in values]


def _method_name(cfg) -> str:
    """"SD-DKD", "KD", "SD-KD+LS": the run's variant as the paper writes it."""
    return cfg.variant.replace("sd_", "SD-").upper()


def _data_set(cfg, dls, data_dir) -> str:
    """"CIFAR-100 (Hub: uoft-cs/cifar100): 50,000 training and 10,000 test images", or the part a subset run used."""
    spec = cfg.data_spec
    name = f"{cfg.data_name} (a folder of your images)" if spec.named_by_folder else spec.title
    name += f" (Hub: {spec.hub_id})" if spec.hub_id else ""
    train, test = len(dls.train_ds), len(dls.valid_ds)
    if not cfg.subset:
        return f"{name}: {train:,} training and {test:,} test images"
    whole = spec.image_sizes(data_dir or cfg.data_dir, cfg.val_fraction, cfg.image_size)
    return (f"{name}: the first {train:,} training and {test:,} test images (subset {cfg.subset}) of its "
            f"{whole[0]:,} and {whole[1]:,}")


def _which_weights(metrics: dict, cfg, weights: str) -> str:
    """In words: the last epoch's weights, or the best epoch's and what choosing it on the test split means."""
    if weights == "last":
        return (f"the last epoch's: epoch {cfg.epochs} of {cfg.epochs}, top-1 {metrics['last_top1']:.2f}% on the "
                f"test split ({WEIGHT_FILES[weights]})")
    return (f"the best epoch's: epoch {metrics['best_epoch']} of {cfg.epochs}, the one with the best top-1 on the "
            f"test split ({metrics['best_top1']:.2f}%), as the paper reports its numbers; that is a selection on the "
            f"test split, so this top-1 overstates what to expect on new images ({WEIGHT_FILES[weights]})")


def _card_facts(metrics: dict, cfg, weights: str, data_set: str) -> list[tuple[str, str]]:
    from .departures import describe
    source = (metrics.get("teacher_source") or {}).get("source", "not recorded")
    regions = sum(s * s for s in cfg.scales)
    loss = ", ".join(f"{k}={v}" for k, v in cfg.loss_kwargs.items())
    how = (f"{cfg.method} on each of the {regions} regions of scales M={list(cfg.scales)}, complementary regions "
           f"weighted {cfg.complementary_weight}" if cfg.decoupled else f"{cfg.method} on the logits (M=[1], plain)")
    solver = ", ".join(f"{k} {v}" for k, v in cfg.solver.items())
    best = f"{metrics['best_top1']:.2f}% (epoch {metrics['best_epoch']})"
    return [
        ("data set", data_set),
        ("teacher", f"{metrics['teacher']}, top-1 {metrics['teacher_top1']:.2f}% on the test set ({source})"),
        ("method", f"{_method_name(cfg)}: {how}" + (", logit standardization" if cfg.logit_standardization else "")),
        ("loss", f"CE weight {cfg.ce_weight}, distillation weight {cfg.kd_weight}, warm-up {cfg.warmup_epochs} "
                 f"epochs" + (f", {loss}" if loss else "")),
        ("protocol", solver),
        ("seed", str(metrics["seed"])),
        ("top-1 on the test set", f"best {best}, last {metrics['last_top1']:.2f}%"),
        ("these weights", _which_weights(metrics, cfg, weights)),
        ("departures from the published protocol", describe(metrics.get("departures"))),
        ("published experiment", metrics.get("published_params") or "none"),
        ("sddlib", f"version {(metrics.get('versions') or {}).get('sddlib', 'not recorded')}, commit "
                   f"{metrics.get('git_commit') or 'not recorded'}"),
        ("run", metrics["run_name"]),
    ]


def model_card(metrics: dict, cfg, info, data_config: dict, weights: str, timm_name: str | None,
               data_set: str, license: str | None = None) -> str:
    """README.md: the Hub's front matter, the distillation facts of the run, how to load and how to upload."""
    dataset = cfg.data_spec.hub_id or cfg.data_name
    front = ["---", *([f"license: {license}"] if license else []),
             f"library_name: {'timm' if timm_name else 'pytorch'}", "pipeline_tag: image-classification",
             "tags:", "- image-classification", *(["- timm"] if timm_name else []), "- knowledge-distillation",
             "- scale-decoupled-distillation", "- sddlib", "datasets:", f"- {dataset}", "metrics:", "- accuracy",
             "---"]
    size = data_config["input_size"][-1]
    title = f"{cfg.student} distilled from {metrics['teacher']} with {_method_name(cfg)} on {cfg.data_name}"
    rows = "\n".join(f"| {k} | {v} |" for k, v in _card_facts(metrics, cfg, weights, data_set))
    if timm_name:
        load = f"""```python
import timm

model = timm.create_model("local-dir:path/to/this/folder", pretrained=True).eval()
# from the Hub after uploading: timm.create_model("hf-hub:<you>/<name>", pretrained=True)
# or by name, with the weights file: timm.create_model("{timm_name}", pretrained=True, num_classes={info.num_classes},
#     pretrained_cfg_overlay=dict(file="path/to/this/folder/model.safetensors", num_classes={info.num_classes}))
config = timm.data.resolve_data_config(model=model)     # input size, mean and std of the run's data
transform = timm.data.create_transform(**config)
```"""
    else:
        load = f"""```python
from safetensors.torch import load_file
from sddlib.models import create_model   # sddlib installed: this network is sddlib's, not timm's

model = create_model("{cfg.student}", num_classes={info.num_classes}, stem="{cfg.stem}")
model.load_state_dict(load_file("path/to/this/folder/model.safetensors"))
model.eval()
```
Normalise images as below (config.json holds the same numbers)."""
    how = ("by scale-decoupled distillation (SDD, CVPR 2024): the distillation loss is applied to the logits of every "
           "region of the final feature map at several scales, not only to the global logits" if cfg.decoupled
           else "with the plain method (no scale decoupling)")
    labels = ", ".join(info.class_names) if len(info.class_names) <= 20 else "in config.json (`label_names`)"
    return "\n".join(front) + f"""

# {title}

The student {cfg.student} of an sddlib run: knowledge distillation from the teacher {metrics['teacher']}
{how}.
Every number below is from the run's own record (metrics.json).

License: {license or "none given. The exporter named none (python -m sddlib.export ... --license ID); choose one that "
          "the data set's terms and the teacher's weights allow, and add it to the front matter as `license:`"}.

| | |
| --- | --- |
{rows}

## Use it

{load}

Input: RGB images at {size}x{size}, scaled to [0, 1] and normalised with mean {_rounded(data_config["mean"])} and
std {_rounded(data_config["std"])} (the run's data; config.json holds them in full); crop fraction
{data_config["crop_pct"]}.
Classes ({info.num_classes}): {labels}.

## Upload

This folder was written by `python -m sddlib.export`; nothing was uploaded. To publish it:
`hf upload <you>/<name> path/to/this/folder` (older huggingface_hub:
`huggingface-cli upload <you>/<name> path/to/this/folder`).
"""


def export_student(run_dir, dest, *, weights: str = "last", data_dir=None, license: str | None = None) -> Path:
    """Write the student of the finished distillation run `run_dir` to the new folder `dest` (model.safetensors,
    config.json, README.md) and return `dest`. `weights`: "last" (the final epoch's, `student.pth`) or "best"
    (the best epoch's on the test split, as the paper reports). `data_dir`: where the run's data is now, when not
    where the run found it (class names, normalisation and sizes are read from it). `license`: the Hub's identifier
    of the license the weights are published under (the card's front matter); None: the card says none was given.
    Refuses in one sentence, writing nothing, when the folder is not a finished distillation run, its weights file
    is missing, the license is not such an identifier or `dest` is not new."""
    from safetensors.torch import save_file

    from .config import RunConfig

    if weights not in WEIGHT_FILES:
        raise ExportError(f"weights={weights!r} is not known; use 'last' (the final epoch) or 'best'.")
    if license is not None and not LICENSE_ID.fullmatch(license):
        raise ExportError(f"license={license!r} is not a license identifier of the Hugging Face Hub; give one such as "
                          "apache-2.0, mit, cc-by-4.0 or other (huggingface.co/docs/hub/repositories-licenses).")
    run_dir, dest = Path(run_dir).expanduser(), Path(dest).expanduser()
    metrics = _finished_run(run_dir)
    _empty_destination(dest)
    cfg = RunConfig.from_params(metrics["params"])
    dls = _data(cfg, data_dir)
    info = dls.info
    model = _student(cfg, run_dir, weights, info.num_classes)
    data_config = _preprocessing(cfg, info)
    timm_name = cfg.student.removeprefix("timm:") if cfg.student.startswith("timm:") else None
    tag = f"{cfg.variant.replace('+', '_')}_{cfg.data_name}".lower()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(staging / "model.safetensors"),
                  metadata={"format": "pt"})
        if timm_name:
            _timm_config(model, staging / "config.json", info, data_config, tag)
        else:
            _own_config(cfg, staging / "config.json", info, data_config, tag)
        (staging / "README.md").write_text(model_card(metrics, cfg, info, data_config, weights, timm_name,
                                                      _data_set(cfg, dls, data_dir), license))
        if dest.exists():
            dest.rmdir()   # empty (checked above); rename does not replace a folder
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sddlib.export", description=(
        "Export a finished run's student for timm users and the Hugging Face Hub (model.safetensors, config.json, "
        "README.md). Upload it yourself: hf upload <you>/<name> DEST."))
    parser.add_argument("run_dir", help="the run's folder, outputs/<dataset>/<run>")
    parser.add_argument("dest", help="a new folder to write")
    parser.add_argument("--weights", choices=sorted(WEIGHT_FILES), default="last",
                        help="the final epoch's student (default) or the best epoch's on the test split (as the "
                             "paper reports: a selection on the test split)")
    parser.add_argument("--license", default=None, metavar="ID", help="the Hub's identifier of the license the "
                        "weights are published under (apache-2.0, mit, cc-by-4.0, other, ...); default: none, and "
                        "the card says so")
    parser.add_argument("--data-dir", default=None, help="where the run's data is now, if it moved")
    args = parser.parse_args(argv)
    try:
        dest = export_student(args.run_dir, args.dest, weights=args.weights, data_dir=args.data_dir,
                              license=args.license)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported to {dest}; upload it with: hf upload <you>/<name> {dest}")
    return 0


if __name__ == "__main__":
    freeze_imports()   # its modules, loaded above, out of the collector's reach (sddlib.startup)
    sys.exit(main())
