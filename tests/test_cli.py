"""`python -m sddlib`: papermill's -f/-p flags, one run in one process, one sentence for a bad parameter."""
import json
from pathlib import Path

import pytest
import torch

from sddlib import __main__ as cli
from sddlib import experiment
from sddlib.models import create_model

REPO = Path(__file__).resolve().parents[1]


def test_parameters_merge_like_papermill(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text('dataset: cub200\nM: "[1,2,4]"\nepochs: 240\n')
    second.write_text("epochs: 100\nseed: 3\n")
    assert cli.load_params([first, second], [("epochs", "1"), ("M", "[1]"), ("sync_bn", "false")]) == {
        "dataset": "cub200", "M": "[1]", "epochs": 1, "seed": 3, "sync_bn": False}


def test_a_bad_parameter_is_one_sentence(tmp_path, capsys):
    assert cli.main(["-f", str(REPO / "params/cifar100/resnet32x4-ShuffleV1-sd_dkd.yaml"), "-p", "learning_rate",
                     "0.1", "-p", "output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: parameter 'learning_rate' is unknown; the accepted ones are") and err.count("\n") == 1
    assert cli.main(["-f", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # trains a ResNet-50 -> MobileNetV1 epoch on a tiny ImageNet
def test_the_imagenet_params_file_runs_in_one_process(tmp_path, capsys, monkeypatch):
    """The README's command, as written (its arguments to the CLI's main, in this process: `python -m sddlib` as
    a process is what torchrun starts in test_distributed), with the data, teacher and outputs pointed at a tiny
    ImageNet."""
    from fake_datasets import write_tiny_imagenet
    data = write_tiny_imagenet(tmp_path / "imagenet", n_classes=3, per_class=4)
    teacher = tmp_path / "resnet50.pth"
    torch.manual_seed(0)
    torch.save({"model": create_model("ResNet50", num_classes=3, stem="torchvision").state_dict()}, teacher)
    monkeypatch.chdir(REPO)
    code = cli.main(["-f", "params/imagenet/ResNet50-MobileNetV1-sd_dkd.yaml", "-p", "epochs", "1", "-p", "device",
                     "cpu", "-p", "batch_size", "4", "-p", "teacher_weights", "", "-p", "teacher_ckpt", str(teacher),
                     "-p", "data_dir", str(data), "-p", "output_dir", str(tmp_path / "out"), "-p", "figures", "false",
                     "-p", "progress", "false", "-p", "num_workers", "0"])
    done = capsys.readouterr()
    assert code == 0, done.err[-3000:]
    run = tmp_path / "out" / "imagenet" / "ResNet50-MobileNetV1-sd_dkd-M124-seed0"
    metrics = experiment.load_metrics(run / "metrics.json")
    assert metrics["variant"] == "sd_dkd" and metrics["params"]["T"] == 1.0 and metrics["params"]["sync_bn"] is True
    assert metrics["distributed"] == {"world_size": 1, "per_rank_batch": 4, "sync_bn": False, "bn_batch": 4,
                                      "backend": None}
    assert "epoch 1/1" in done.out and done.out.strip().splitlines()[-1].startswith(run.name)
    # --alone: the student trained alone, the same flags
    alone = cli.main(["-f", str(REPO / "params/imagenet/ResNet50-MobileNetV1-sd_dkd.yaml"), "--alone", "-p", "epochs",
                      "1", "-p", "device", "cpu", "-p", "batch_size", "4", "-p", "data_dir", str(data), "-p",
                      "output_dir", str(tmp_path / "out"), "-p", "progress", "false", "-p", "num_workers", "0"])
    assert alone == 0
    assert json.loads((tmp_path / "out" / "imagenet" / "MobileNetV1-alone-seed0" / "metrics.json").read_text())[
        "status"] == "complete"
