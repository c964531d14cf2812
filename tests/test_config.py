"""The run configuration: every bad value stops with one sentence before any work."""
import json
import re
import time
from pathlib import Path

import pytest
import torch

from sddlib import experiment
from sddlib.config import METHODS, ConfigError, RunConfig
from sddlib.losses import dkd_loss, kd_loss, nkd_loss
from sddlib.models import create_model
from sddlib.preflight import check_environment, run_warnings

REPO = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digit_mosaic", teacher="resnet8", student="resnet8", method="kd", M="[1,2]", epochs=2,
            teacher_epochs=1, subset=96, batch_size=32, lr_decay_stages=[1], progress=False, figures=False)


def test_defaults_are_the_authors():
    cfg = RunConfig.from_params({"dataset": "cifar100", "method": "kd", "M": [1, 2]})
    assert cfg.scales == (1, 2) and cfg["M"] == "[1,2]" and cfg.epochs == 240
    assert cfg.lr_decay_stages == (150, 180, 210) and cfg.variant == "sd_kd"
    assert (cfg.ce_weight, cfg.kd_weight, cfg.warmup_epochs, cfg.loss_kwargs) == (0.1, 0.9, 0, {"T": 4.0})
    assert cfg.alpha is None and cfg.beta is None            # DKD's keys do not belong to a KD run
    nkd = RunConfig.from_params({"dataset": "cub200", "method": "nkd", "beta": 2.0})
    assert nkd.loss_kwargs == {"T": 4.0, "gamma": 8.0, "exclude_target": False} and nkd.beta is None
    assert (nkd.ce_weight, nkd.warmup_epochs) == (1.0, 20)
    imagenet = RunConfig.from_params({"dataset": "imagenet"})
    assert (imagenet.teacher, imagenet.student, imagenet.weight_decay) == ("ResNet50", "MobileNetV1", 1e-4)
    assert METHODS["dkd"].loss is dkd_loss and METHODS["kd"].loss is kd_loss and METHODS["nkd"].loss is nkd_loss


def test_names_and_directories():
    assert RunConfig.from_params({"method": "dkd"}).name == "resnet32x4-ShuffleV1-sd_dkd-M124-seed0"
    plain = RunConfig.from_params({"method": "kd", "M": "[1]", "seed": 2, "output_dir": "o"})
    assert plain.name == "resnet32x4-ShuffleV1-kd-M1-seed2" and plain.variant == "kd" and not plain.decoupled
    assert plain.directory == Path("o/cifar100/resnet32x4-ShuffleV1-kd-M1-seed2")
    assert experiment.run_name({"method": "kd", "M": "[1]", "seed": 2}) == plain.name


def test_the_config_reads_like_the_flat_dict_it_replaces():
    cfg = RunConfig.from_params({"dataset": "digit_mosaic", "lr_decay_stages": [3]})
    assert cfg["lr"] == 0.05 and cfg["lr_decay_stages"] == (3,) and "M" in cfg
    again = RunConfig.from_params({**cfg, "seed": 1})        # notebooks do {**params, ...}
    assert again.seed == 1 and again.replace(seed=0) == cfg
    assert json.loads(json.dumps(cfg.to_params()))["lr_decay_stages"] == [3]
    assert experiment.notebook_params({"lr": 0.1, "unrelated": 3}, dataset="cub200").lr == 0.1
    with pytest.raises(dataclasses_error()):
        cfg.lr = 1.0                                          # frozen


def dataclasses_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


def test_one_teacher_protocol_per_dataset_whatever_the_student():
    a = RunConfig.from_params({"dataset": "cub200", "student": "ShuffleV1", "lr": 0.01})
    b = RunConfig.from_params({"dataset": "cub200", "student": "vgg8", "lr": 0.05, "seed": 3})
    assert a.teacher_protocol == b.teacher_protocol and a.teacher_protocol["lr"] == 0.05
    assert a.teacher_protocol["epochs"] == 240 and a.teacher_protocol["seed"] == 0
    c = RunConfig.from_params({"dataset": "cub200", "teacher_epochs": 3, "teacher_lr": 0.1,
                               "teacher_lr_decay_stages": [2]})
    protocol = c.teacher_protocol
    assert (protocol["epochs"], protocol["lr"], protocol["lr_decay_stages"]) == (3, 0.1, [2])


def test_without_a_file_each_student_takes_the_authors_lr(capsys):
    """Every CIFAR-100 and CUB-200 config of the authors, named by its pair only, gets their LR (0.01 for ShuffleV1,
    ShuffleV2 and MobileNetV2 students, 0.05 for the others); an explicit lr stays; a teacher trained here keeps the
    dataset's protocol; `python -m sddlib --params` says so."""
    from sddlib import __main__ as cli
    from sddlib.report import authors_experiments
    configs = [e for e in authors_experiments() if e["dataset"] in ("cifar100", "cub200")]
    assert {e["solver"]["lr"] for e in configs} == {0.01, 0.05}
    for e in configs:
        cfg = RunConfig.from_params({k: e[k] for k in ("dataset", "teacher", "student", "method")})
        assert cfg.lr == e["solver"]["lr"], e["source"]
    default = RunConfig.from_params({})                                       # the default pair's ShuffleV1
    assert (default.student, default.lr, default.teacher_protocol["lr"]) == ("ShuffleV1", 0.01, 0.05)
    assert RunConfig.from_params({"student": "ShuffleV1", "lr": 0.05}).lr == 0.05
    assert RunConfig.from_params({"student": "resnet8x4"}).lr == 0.05
    assert RunConfig.from_params({"dataset": "imagenet"}).lr == 0.2
    assert cli.main(["--params"]) == 0
    listed = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert ("lr (float, default None) initial LR (None: the dataset's; on CIFAR-100 and CUB-200 0.01 for ShuffleV1, "
            "ShuffleV2 and MobileNetV2 students, 0.05 for the others, as the authors' configs)") in listed


def test_the_optimizer_is_the_papers_sgd_unless_asked():
    cfg = RunConfig.from_params({"dataset": "digit_mosaic", "student": "ViT_micro_p4"})
    assert (cfg.optimizer, cfg.lr_warmup_epochs) == ("sgd", 0.0)
    adamw = cfg.replace(optimizer="adamw", lr=1e-3, weight_decay=0.05, lr_warmup_epochs=1)
    assert adamw.solver["optimizer"] == "adamw" and adamw.fingerprint["lr_warmup_epochs"] == 1.0
    assert adamw.fingerprint != cfg.replace(lr=1e-3, weight_decay=0.05, lr_warmup_epochs=1).fingerprint
    # the teacher is trained under the dataset's SGD protocol whatever the student's solver
    teacher = adamw.teacher_training_config()
    assert (teacher.optimizer, teacher.lr_warmup_epochs, teacher.lr, teacher.weight_decay) == ("sgd", 0.0, 0.05, 5e-4)
    assert adamw.teacher_protocol == cfg.teacher_protocol


def test_adamw_skips_weight_decay_on_norms_biases_and_tokens():
    from fastai.data.core import DataLoaders
    from sddlib.training import StepLR, build_learner
    vit = create_model("ViT_micro_p4", num_classes=10)
    cfg = RunConfig.from_params({"dataset": "digit_mosaic", "student": "ViT_micro_p4", "optimizer": "adamw",
                                 "lr": 1e-3, "weight_decay": 0.05, "lr_warmup_epochs": 0.5, "progress": False})
    learn = build_learner(DataLoaders([], [], device="cpu"), vit, cfg)
    learn.create_opt()
    assert isinstance(learn.opt.opt, torch.optim.AdamW)
    decay = {id(p): g["weight_decay"] for g in learn.opt.opt.param_groups for p in g["params"]}
    names = dict(vit.named_parameters())
    assert len(decay) == len(names)
    assert decay[id(names["pos_embed"])] == decay[id(names["cls_token"])] == 0.0
    assert decay[id(names["blocks.0.norm1.weight"])] == decay[id(names["head.bias"])] == 0.0
    assert decay[id(names["blocks.0.attn.qkv.weight"])] == decay[id(names["patch_embed.proj.weight"])] == 0.05
    sgd = build_learner(DataLoaders([], [], device="cpu"), create_model("resnet8", num_classes=10),
                        {"dataset": "digit_mosaic", "progress": False})
    sgd.create_opt()
    assert isinstance(sgd.opt.opt, torch.optim.SGD) and {g["weight_decay"] for g in sgd.opt.opt.param_groups} == {5e-4}
    warmup = next(cb for cb in learn.cbs if isinstance(cb, StepLR))
    assert warmup.warmup_epochs == 0.5


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_lr_warmup_rises_step_by_step_then_follows_the_stages():
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from torch.utils.data import TensorDataset
    from sddlib.training import build_learner

    class Lrs(Callback):
        order = 2  # after StepLR

        def before_fit(self):
            self.seen = []

        def before_batch(self):
            if self.training:
                self.seen.append(self.opt.hypers[0]["lr"])

    ds = TensorDataset(torch.randn(40, 3, 4, 4), torch.randint(0, 2, (40,)))
    dls = DataLoaders(DataLoader(ds, bs=10), DataLoader(ds, bs=20), device="cpu")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    params = {"dataset": "digit_mosaic", "epochs": 3, "lr": 0.1, "lr_decay_stages": [2], "lr_decay_rate": 0.5,
              "lr_warmup_epochs": 1.5, "progress": False}
    lrs = Lrs()
    learn = build_learner(dls, model, params, cbs=[lrs])
    with learn.no_logging():
        learn.fit(3)
    expected = [0.1 * k / 6 for k in range(1, 7)] + [0.1] * 2 + [0.05] * 4   # 4 steps per epoch
    assert lrs.seen == pytest.approx(expected)


@pytest.mark.parametrize("bad,message", [
    # the cases a new user hit (issue 9)
    ({"T": 0}, r"^T=0 is not accepted; T must be a finite number > 0\.$"),
    ({"lr": float("nan")}, r"^lr=nan is not accepted; lr must be a finite number > 0\.$"),
    ({"alpha": float("inf")}, r"^alpha=inf is not accepted; alpha must be a finite number >= 0\.$"),
    ({"warmup_epochs": -5}, r"^warmup_epochs=-5 is not accepted; warmup_epochs must be a finite number >= 0\.$"),
    ({"student": "ShufleV1"}, r"^student='ShufleV1' is not a model for this dataset \(did you mean 'ShuffleV1'"),
    ({"ce_weight": "x"}, r"^ce_weight='x' is not accepted; ce_weight must be a finite number >= 0\.$"),
    ({"lr_decay_stages": "150,180"}, r"^lr_decay_stages='150,180' is not accepted; .* a list of increasing epochs"),
    ({"seed": "a"}, r"^seed='a' is not accepted; seed must be an integer in \[0, 2\*\*32\)\.$"),
    ({"num_workers": -3}, r"^num_workers=-3 is not accepted; num_workers must be None or an integer >= 0\.$"),
    # types: an int is not a bool, a list of ints is not text
    ({"epochs": True}, r"^epochs=True is not accepted; epochs must be a positive integer\.$"),
    ({"epochs": 2.5}, "epochs=2.5 is not accepted"),
    ({"figures": 1}, r"^figures=1 is not accepted; figures must be True or False\.$"),
    ({"lr_decay_stages": [150.0, 180]}, "lr_decay_stages=.150.0, 180. is not accepted"),
    ({"data_dir": 3}, r"^data_dir=3 is not accepted; data_dir must be text\.$"),
    # ranges
    ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\)"),
    ({"momentum": -0.1}, r"momentum must be a number in \[0, 1\)"),
    ({"lr_decay_rate": 0}, r"lr_decay_rate must be a number in \(0, 1\]"),
    ({"lr_decay_rate": 1.5}, r"lr_decay_rate must be a number in \(0, 1\]"),
    ({"weight_decay": -1e-4}, "weight_decay must be a finite number >= 0"),
    ({"beta": -1}, "beta must be a finite number >= 0"),
    ({"lr_decay_stages": [180, 150]}, r"strictly increasing"),
    ({"lr_decay_stages": [0, 150]}, r"each >= 1"),
    ({"dataset": "imagenet", "lr_decay_stages": [150, 180]},
     r"lr_decay_stages=\[150, 180\] goes beyond the schedule; each stage must be an epoch from 1 to 100"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"subset": -2}, "subset must be 0"),
    ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\)"),
    ({"complementary_weight": -2}, "complementary_weight must be a finite number >= 0"),
    ({"teacher_epochs": 0}, "teacher_epochs must be a positive integer"),
    # names
    ({"methd": "kd"}, r"^parameter 'methd' is unknown; did you mean 'method'\? the accepted ones are"),
    ({"learning_rate": 0.1}, r"^parameter 'learning_rate' is unknown; .*the accepted ones are"),
    ({"method": "fitnet"}, r"^method 'fitnet' is unknown; use one of abkd, dkd, kd, nkd, rld, (task_test_squared, )?ttm, wttm\.$"),
    # (tests/test_timm_task.py registers task_test_squared when it is collected in the same process)
    ({"method": "dkdd"}, r"did you mean 'dkd'"),
    ({"dataset": "cifar10"}, r"^dataset 'cifar10' is unknown \(did you mean 'cifar100'"),
    ({"dataset": "imagenet", "teacher": "resnet32x4"}, r"teacher='resnet32x4' is not a model for this dataset"),
    ({"M": "[1,3,2]"}, r"scales '\[1,3,2\]' is not supported"),
    ({"device": "tpu"}, r"device='tpu' is not accepted; device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ({"run_name": "../elsewhere"}, "run_name='../elsewhere' is not accepted"),
    ({"optimizer": "adam"}, r"^optimizer 'adam' is unknown \(did you mean 'adamw'\?\); use one of adamw, sgd\.$"),
    ({"lr_warmup_epochs": -1},
     r"^lr_warmup_epochs=-1 is not accepted; lr_warmup_epochs must be a finite number >= 0\.$"),
])
def test_bad_values_stop_with_one_sentence(bad, message):
    with pytest.raises(ConfigError, match=message) as err:
        RunConfig.from_params(bad)
    assert "\n" not in str(err.value) and str(err.value).endswith((".", "?)"))


def test_a_misspelt_model_stops_before_any_work(tmp_path):
    start = time.time()
    with pytest.raises(ConfigError, match="student='resnet8x' is not a model"):
        experiment.run({**TINY, "student": "resnet8x", "output_dir": str(tmp_path / "out"),
                        "data_dir": str(tmp_path / "data")})
    assert time.time() - start < 5 and not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_accepted_surprises_are_said_as_warnings():
    cfg = RunConfig.from_params({"dataset": "cifar100", "method": "kd", "alpha": 1.0, "beta": 8.0, "T": 2.0})
    assert cfg.ignored == {"alpha": 1.0, "beta": 8.0} and cfg.alpha is None and cfg.T == 2.0
    assert run_warnings(cfg) == ["method kd does not read alpha=1.0, beta=8.0; its loss takes T."]
    assert run_warnings(cfg.replace(seed=1)) == run_warnings(cfg.on_processes(2)) == run_warnings(cfg)
    assert cfg.replace(method="dkd").alpha == 1.0          # given again: DKD reads it
    assert run_warnings(RunConfig.from_params({"method": "dkd", "alpha": 1.0, "gamma": None})) == []
    short = RunConfig.from_params({"dataset": "cifar100", "epochs": 1})
    assert run_warnings(short) == ["lr_decay_stages [150, 180, 210] lie at or beyond epochs=1: the LR never decays "
                                   "in this run."]
    partly = RunConfig.from_params({"dataset": "digit_mosaic", "epochs": 6})
    assert run_warnings(partly) == ["lr_decay_stages [7] of [5, 7] lie at or beyond epochs=6: those decays never "
                                    "happen in this run."]
    assert run_warnings(RunConfig.from_params({"dataset": "digit_mosaic", "epochs": 1, "lr_decay_stages": []})) == []
    assert run_warnings(RunConfig.from_params({"dataset": "digit_mosaic"})) == []


def test_the_environment_is_checked_before_any_work(tmp_path):
    def check(**changes):
        check_environment(RunConfig.from_params({**TINY, "output_dir": str(tmp_path / "out"), **changes}))

    check()                                                   # the demo data needs nothing on disk
    with pytest.raises(ConfigError, match=r"data_dir='.*' does not hold ImageNet \(expected train/<wnid>/"):
        check(dataset="imagenet", teacher="ResNet34", student="ResNet18", data_dir=str(tmp_path))
    partial = tmp_path / "cifar" / "cifar-100-python"
    partial.mkdir(parents=True)
    (partial / "meta").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"holds an incomplete cifar-100-python/ \(missing train, test\)"):
        check(dataset="cifar100", data_dir=str(tmp_path / "cifar"))
    check(dataset="cifar100", data_dir=str(tmp_path / "empty"))  # absent: it will be downloaded there
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"output_dir='.*file/out' cannot be written"):
        check(output_dir=str(blocker / "out"))
    with pytest.raises(ConfigError, match=r"output_dir='/proc/sddlib-runs' cannot be written"):
        check(output_dir="/proc/sddlib-runs")    # permission bits say yes to root; creating a file says no
    assert not list(tmp_path.glob("**/.sddlib-write-check-*"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device='cuda' is not available on this machine"):
            check(device="cuda")


def test_teacher_files_are_checked_before_any_work(tmp_path):
    from sddlib.checkpoints import CheckpointError

    def check(**changes):
        check_environment(RunConfig.from_params({**TINY, "output_dir": str(tmp_path / "out"), **changes}))

    good, wrong = tmp_path / "resnet8.pth", tmp_path / "resnet20.pth"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, good)
    torch.save({"model": create_model("resnet20", num_classes=10).state_dict()}, wrong)
    check(teacher_ckpt=str(good))
    with pytest.raises(CheckpointError, match=r"^teacher checkpoint .*resnet20.pth is not a resnet8: "):
        check(teacher_ckpt=str(wrong))
    with pytest.raises(CheckpointError, match=r"^teacher checkpoint .*missing.pth does not exist"):
        check(teacher_ckpt=str(tmp_path / "missing.pth"))
    hundred = tmp_path / "resnet8-100.pth"
    torch.save(create_model("resnet8", num_classes=100).state_dict(), hundred)
    with pytest.raises(CheckpointError, match=r"fc.weight has shape \(100, 64\), expected \(10, 64\)"):
        check(teacher_ckpt=str(hundred))
    # the authors' published folder: <arch>_vanilla/<arch>_best.pth
    published = tmp_path / "cub200"
    (published / "resnet8_vanilla").mkdir(parents=True)
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()},
               published / "resnet8_vanilla" / "resnet8_best.pth")
    check(teachers_dir=str(published))
    with pytest.raises(ConfigError, match=r"teachers_dir='.*' has no teacher resnet14 \(expected .*_best.pth\)"):
        check(teachers_dir=str(published), teacher="resnet14")
    with pytest.raises(ConfigError, match=r"teachers_dir='.*nowhere' is not a folder"):
        check(teachers_dir=str(tmp_path / "nowhere"))


@pytest.mark.slow  # executes a notebook
def test_through_papermill_the_sentence_ends_the_output(tmp_path):
    """A bad value in a real notebook run: the last line the user sees is the sentence."""
    import papermill as pm
    output = tmp_path / "quickstart.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(REPO / "notebooks" / "quickstart.ipynb"), str(output), cwd=str(REPO),
                            parameters=dict(seeds="[0, 'a']", output_dir=str(tmp_path / "out"),
                                            data_dir=str(tmp_path / "data")),
                            kernel_name="python3", progress_bar=False)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", str(err.value)).strip().splitlines()
    assert plain[-1] == ("ConfigError: seeds=\"[0, 'a']\" is not accepted; seeds must be a non-empty list of "
                         "integers such as [0, 1, 2].")
    assert not (tmp_path / "out").exists()


def test_list_parameters_are_read_from_their_text_form():
    """papermill's and `python -m sddlib`'s -p pass lists as text; `parse_list` is the one place that reads them."""
    from sddlib.config import parse_list
    from sddlib.sweep import parse_overrides
    assert RunConfig.from_params({"lr_decay_stages": "[150, 180]"}).lr_decay_stages == (150, 180)
    assert parse_list("seeds", "[0, 1, 2]", int, "[0]") == [0, 1, 2] and parse_list("seeds", 3, int, "[0]") == [3]
    assert parse_list("methods", '["kd", "dkd"]', str, "[kd]") == ["kd", "dkd"] == parse_list("m", "[kd, dkd]", str, "")
    with pytest.raises(ConfigError, match=r"^methods='\[kd, 1\]' is not accepted; methods must be a list of names "):
        parse_list("methods", "[kd, 1]", str, '["kd"]')
    with pytest.raises(ConfigError, match=r"^seeds=\[\] is not accepted; seeds must be a non-empty list of integers"):
        parse_list("seeds", [], int, "[0, 1, 2]", nonempty=True)
    overrides = parse_overrides([("lr_decay_stages", "[150, 180"), ("seed", "1")])   # not YAML: kept as text...
    assert overrides == {"lr_decay_stages": "[150, 180", "seed": 1}
    with pytest.raises(ConfigError, match=r"^lr_decay_stages='\[150, 180' is not accepted; .* increasing epochs"):
        RunConfig.from_params(overrides)                                              # ... and refused in one sentence
