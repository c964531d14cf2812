"""A modern teacher, fine-tuned right (issue 38, item 5): the teacher's own solver (`teacher_optimizer`, a cosine
schedule, a warm-up) on the real fastai Learner and in its recorded protocol; `normalize: model` (each model sees
the mean/std its ImageNet weights were trained with, checked on the tensors it receives); constructor keywords for
timm models (`student_kwargs`, `teacher_kwargs`) from a params file and the command line. Tiny timm configurations
(test_vit, test_resnet), weights written here: nothing is downloaded."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from PIL import Image

from sddlib import experiment
from sddlib.__main__ import load_params, main as cli
from sddlib.checkpoints import CheckpointError
from sddlib.config import ConfigError, RunConfig
from sddlib.data import IMAGENET_MEAN, IMAGENET_STD, get_dataloaders
from sddlib.models import Renormalized, pretrained_mean_std
from sddlib.regions import ScaleDecoupled
from sddlib.run_models import loader_options, model_for
from sddlib.run_pipeline import alone_fingerprint
from sddlib.teacher_source import get_teacher

timm = pytest.importorskip("timm")
COLOURS = {"cat": (200, 30, 90), "dog": (10, 160, 240), "owl": (120, 250, 0)}   # one solid colour per class
VIT_32 = {"img_size": 32, "patch_size": 8}                                       # test_vit is built for 160 px
CLIP_MEAN, CLIP_STD = timm.data.OPENAI_CLIP_MEAN, timm.data.OPENAI_CLIP_STD


def solid_folder(root: Path, per_class=4) -> Path:
    """`<class>/` folders of 32 px PNGs, every image of a class one solid colour: what a model receives is known."""
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((32, 32, 3), colour, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def normalised(labels, mean, std) -> torch.Tensor:
    """B x 3 x 1 x 1: each label's colour in [0, 1], normalised with mean/std."""
    rgb = torch.tensor([COLOURS[name] for name in COLOURS], dtype=torch.float32)[labels] / 255
    return ((rgb - torch.tensor(mean)) / torch.tensor(std))[:, :, None, None]


def write_test_vit_weights(path: Path) -> Path:
    """A local file standing in for test_vit's ImageNet weights (160 px, patch 16: resampled to VIT_32 on loading)."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in timm.create_model("test_vit").state_dict().items()}, str(path))
    return path


# --- constructor keywords -------------------------------------------------------------------------------------
@pytest.mark.trains  # trains the ViT alone for one epoch on 64 mosaics
def test_a_timm_vit_student_is_built_at_32_px_from_a_params_file(tmp_path, mosaic_dir, capsys):
    params_file = tmp_path / "vit.yaml"
    params_file.write_text(yaml.safe_dump({
        "dataset": "digit_mosaic", "student": "timm:test_vit", "student_kwargs": VIT_32, "epochs": 1,
        "subset": 64, "batch_size": 32, "lr_decay_stages": [1], "progress": False,
        "data_dir": str(mosaic_dir), "output_dir": str(tmp_path / "out")}))
    cfg = RunConfig.from_params(load_params([params_file], []))
    assert cfg.student_kwargs == VIT_32 and cfg.fingerprint["student_kwargs"] == VIT_32
    vit = model_for(cfg, "student", 10)
    assert vit.patch_embed.img_size == (32, 32) and vit.patch_embed.grid_size == (4, 4)
    assert ScaleDecoupled(vit)(torch.zeros(2, 3, 32, 32))[1].shape == (2, 10, 21)    # SD on its 4 x 4 token grid
    # the command line's -p gives the keywords as text
    assert RunConfig.from_params(load_params([params_file], [("student_kwargs", "{img_size: 32, patch_size: 4}")])
                                 ).student_kwargs == {"img_size": 32, "patch_size": 4}

    metrics = experiment.run_vanilla(cfg)                                            # the real pipeline trains it
    assert metrics["status"] == "complete" and metrics["fingerprint"]["model_kwargs"] == VIT_32
    assert alone_fingerprint(cfg, cfg.student)["model_kwargs"] == VIT_32
    saved = torch.load(experiment.vanilla_dir(cfg, cfg.student) / "model.pth", weights_only=True)["model"]
    assert saved["pos_embed"].shape == (1, 17, 64)                                   # 16 patches + the class token

    # a misspelt keyword: one sentence, exit status 2, before anything is written
    out = tmp_path / "refused"
    assert cli(["-f", str(params_file), "-p", "student_kwargs", "{img_sise: 32}", "-p", "output_dir", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: student_kwargs={'img_sise': 32} do not build timm:test_vit (TypeError: ")
    assert "img_sise" in error and "\n" not in error and not out.exists()


@pytest.mark.parametrize("params, message", [
    ({"student": "resnet8", "student_kwargs": {"img_size": 32}},
     r"^student_kwargs=\{'img_size': 32\} pass keywords to a timm or torchvision constructor, but "
     r"student='resnet8' is one of sddlib's own models; .*\.$"),
    ({"teacher": "timm:test_vit", "teacher_kwargs": {"num_classes": 3}},
     r"^teacher_kwargs may not set 'num_classes', which the run sets itself .*\.$"),
    ({"student": "timm:test_vit", "student_kwargs": "[32]"},
     r"^student_kwargs='\[32\]' is not accepted; student_kwargs must be None or a mapping .*\.$"),
    ({"teacher": "torchvision:vit_b_16", "teacher_kwargs": {"img_size": 32}},
     r"^teacher_kwargs=\{'img_size': 32\} do not build torchvision:vit_b_16 \(TypeError: .*img_size.*\); .*\.$"),
])
def test_bad_constructor_keywords_are_refused_in_one_sentence(params, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_params({"dataset": "digit_mosaic", **params})


# --- the teacher's solver ---------------------------------------------------------------------------------------
@pytest.mark.trains  # fits a Learner for three short epochs
def test_adamw_cosine_and_warmup_of_a_teacher_on_the_real_learner():
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from torch.utils.data import TensorDataset
    from sddlib.training import CosineLR, build_learner

    paper = RunConfig.from_params({"dataset": "digit_mosaic"})
    # the paper's protocol is untouched: SGD, step schedule, no warm-up, the dataset's weight decay, no new keys
    assert paper.teacher_protocol == {"epochs": 8, "batch_size": 64, "lr": 0.05, "lr_decay_stages": [5, 7],
                                      "lr_decay_rate": 0.1, "weight_decay": 5e-4, "momentum": 0.9,
                                      "clip_grad_norm": 40.0, "subset": 0, "seed": 0}
    plain = paper.replace(optimizer="adamw", lr_schedule="cosine", lr_warmup_epochs=2).teacher_training_config()
    assert (plain.optimizer, plain.lr_schedule, plain.lr_warmup_epochs) == ("sgd", "step", 0.0)   # never the student's

    cfg = paper.replace(teacher_optimizer="adamw", teacher_lr_schedule="cosine", teacher_lr_warmup_epochs=1,
                        teacher_lr=1e-3, teacher_weight_decay=0.05, teacher_epochs=3, progress=False)
    protocol = cfg.teacher_protocol
    assert {k: protocol[k] for k in ("optimizer", "lr_schedule", "lr_warmup_epochs", "lr", "weight_decay",
                                     "epochs")} == {"optimizer": "adamw", "lr_schedule": "cosine",
                                                    "lr_warmup_epochs": 1.0, "lr": 1e-3, "weight_decay": 0.05,
                                                    "epochs": 3}
    assert protocol != paper.teacher_protocol and cfg.fingerprint["teacher_optimizer"] == "adamw"

    ds = TensorDataset(torch.randn(40, 3, 4, 4), torch.randint(0, 2, (40,)))
    dls = DataLoaders(DataLoader(ds, bs=10), DataLoader(ds, bs=20), device="cpu")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))
    learn = build_learner(dls, model, cfg.teacher_training_config())
    assert any(isinstance(cb, CosineLR) for cb in learn.cbs)
    with learn.no_logging():
        learn.fit(3)
    assert isinstance(learn.opt.opt, torch.optim.AdamW)
    decay = {id(p): g["weight_decay"] for g in learn.opt.opt.param_groups for p in g["params"]}
    assert decay[id(model[0].weight)] == decay[id(model[3].weight)] == 0.05          # decoupled decay on weights,
    assert decay[id(model[1].weight)] == decay[id(model[3].bias)] == 0.0             # none on norms and biases
    warmup = [1e-3 * k / 4 for k in range(1, 5)]                                     # 4 steps an epoch
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * j / 8)) for j in range(8)]       # the 8 steps after it, to 0
    assert learn.recorder.lrs == pytest.approx(warmup + cosine)                     # fastai's record of each step


# --- normalize: model --------------------------------------------------------------------------------------------
def test_normalize_model_gives_each_model_its_own_mean_and_std(tmp_path):
    """A pretrained OpenAI-CLIP-normalised student and a test_vit teacher (mean/std 0.5): the loaders normalise
    for the student, the teacher receives the same images normalised for itself; ImageNet's by default."""
    data = solid_folder(tmp_path / "colours")
    teacher_file = tmp_path / "teacher.pth"
    params = {"dataset": "folder", "data_dir": str(data), "image_size": 32, "normalize": "model",
              "teacher": "timm:test_vit", "teacher_kwargs": VIT_32, "teacher_pretrained": True,
              "teacher_ckpt": str(teacher_file), "student": "timm:vit_base_patch16_clip_224",
              "student_pretrained": True, "num_workers": 0, "output_dir": str(tmp_path / "out")}
    cfg = RunConfig.from_params(params)
    torch.save({"model": model_for(cfg, "teacher", 3).state_dict()}, teacher_file)   # fine-tuned on the colours
    dls = get_dataloaders("folder", data, bs=12, num_workers=0, device="cpu", **loader_options(cfg))
    assert (dls.folder["normalize"], dls.folder["mean"], dls.folder["std"]) == ("model", list(CLIP_MEAN),
                                                                                 list(CLIP_STD))
    x, y = dls.valid.one_batch()                                # what the Learner hands the student
    assert torch.allclose(x, normalised(y, CLIP_MEAN, CLIP_STD).expand_as(x), atol=1e-5)

    teacher, source = get_teacher(cfg, dls)
    assert isinstance(teacher, Renormalized) and source["source"] == "checkpoint"
    received = []
    teacher.model.patch_embed.register_forward_pre_hook(lambda module, args: received.append(args[0]))
    with torch.no_grad():
        teacher.eval()(x)                                       # its forward, and SD's features-and-head path
        ScaleDecoupled(teacher)(x)
    for seen in received:
        assert torch.allclose(seen, normalised(y, (0.5,) * 3, (0.5,) * 3).expand_as(x), atol=1e-5)
    assert len(received) == 2

    # torchvision's ImageNet weights say theirs in their transforms
    assert pretrained_mean_std("torchvision:vit_b_16") == (IMAGENET_MEAN, IMAGENET_STD)
    assert pretrained_mean_std("timm:test_vit") == ((0.5,) * 3, (0.5,) * 3)

    default = RunConfig.from_params({**params, "normalize": "imagenet"})
    plain = get_dataloaders("folder", data, bs=12, num_workers=0, device="cpu", **loader_options(default))
    x, y = plain.valid.one_batch()
    assert torch.allclose(x, normalised(y, IMAGENET_MEAN, IMAGENET_STD).expand_as(x), atol=1e-5)
    assert not isinstance(get_teacher(default, plain)[0], Renormalized)  # every model sees the loaders' images


@pytest.mark.trains  # fine-tunes a ViT teacher and distils it (one tiny epoch each, 12 images)
def test_a_vit_teacher_fine_tuned_here_records_its_recipe_and_is_not_reused_under_another(tmp_path):
    data = solid_folder(tmp_path / "colours")
    params = {"dataset": "folder", "data_dir": str(data), "image_size": 32, "normalize": "model",
              "teacher": "timm:test_vit", "teacher_kwargs": VIT_32, "teacher_pretrained": True,
              "teacher_weights_file": str(write_test_vit_weights(tmp_path / "test_vit.safetensors")),
              "teacher_optimizer": "adamw", "teacher_lr_schedule": "cosine", "teacher_lr_warmup_epochs": 0.5,
              "teacher_lr": 1e-3, "teacher_weight_decay": 0.05, "teacher_epochs": 1, "student": "resnet8",
              "epochs": 1, "lr_decay_stages": [1], "batch_size": 4, "num_workers": 0, "progress": False,
              "figures": False, "output_dir": str(tmp_path / "out")}
    metrics = experiment.run(params)
    recorded = metrics["teacher_source"]["protocol"]
    assert metrics["teacher_source"]["source"] == "trained here"
    assert {k: recorded[k] for k in ("optimizer", "lr_schedule", "lr_warmup_epochs", "weight_decay", "model_kwargs",
                                     "normalize", "pretrained")} == {
        "optimizer": "adamw", "lr_schedule": "cosine", "lr_warmup_epochs": 0.5, "weight_decay": 0.05,
        "model_kwargs": VIT_32, "normalize": "model", "pretrained": True}
    teacher_run = json.loads((tmp_path / "out" / "colours" / "timm_test_vit-teacher-seed0" / "metrics.json").read_text())
    assert teacher_run["protocol"]["optimizer"] == "adamw" and teacher_run["protocol"]["lr_schedule"] == "cosine"
    assert teacher_run["data"]["mean"] == [0.5] * 3                 # the teacher trained seeing its own mean/std,
    assert metrics["data"]["mean"] == list(IMAGENET_MEAN)           # the student (from scratch) ImageNet's
    with pytest.raises(CheckpointError, match=r"another protocol \(lr_schedule 'cosine' there, None here, "
                                              r"lr_warmup_epochs 0.5 there, None here, optimizer 'adamw' there"):
        experiment.run({**params, "teacher_optimizer": "sgd", "teacher_lr_schedule": "step",
                        "teacher_lr_warmup_epochs": 0, "seed": 1})
