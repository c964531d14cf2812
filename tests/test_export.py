"""`sddlib.export`: a finished run's student as a folder for timm users and the Hub. The students of two real tiny
runs (a timm-named one and one of sddlib's own nets) reload in a fresh Python through the model card's own code and
score their run's top-1 on its test set; bad input is refused in one sentence, leaving nothing behind."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sddlib import experiment
from sddlib.export import ExportError, export_student, main

TINY = dict(dataset="digit_mosaic", teacher="resnet8", method="kd", epochs=2, teacher_epochs=1, subset=96,
            batch_size=32, lr_decay_stages=[1], progress=False, figures=False, num_workers=0)
STUDENTS = {"timm": dict(student="timm:test_resnet", M="[1]"),     # timm's smallest resnet: a 1x1 map at 32 px
            "own": dict(student="resnet8", M="[1,2]")}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two finished runs on the digit mosaics sharing one teacher trained here: {kind: (run folder, metrics)}."""
    out = tmp_path_factory.mktemp("runs")
    runs = {}
    for kind, student in STUDENTS.items():
        params = {**TINY, **student, "output_dir": str(out), "data_dir": str(out / "data")}
        runs[kind] = experiment.run_dir(params), experiment.run(params)
    return runs


# Run in a fresh interpreter that imports neither sddlib's data code nor fastai: the card's code (its folder path made
# real), then top-1 on the run's test images (in [0, 1], saved by the test) with the preprocessing the folder declares.
RELOAD = r"""
import json, re, sys, torch
from pathlib import Path
folder, test_set, out = sys.argv[1:4]
card = (Path(folder) / "README.md").read_text()
code = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace("path/to/this/folder", folder)
scope = {}
exec(code, scope)
model = scope["model"]
config = json.loads((Path(folder) / "config.json").read_text())
cfg = config["pretrained_cfg"]
images, labels = torch.load(test_set).values()
assert tuple(images.shape[1:]) == tuple(cfg["input_size"])
inputs = (images - torch.tensor(cfg["mean"]).view(1, -1, 1, 1)) / torch.tensor(cfg["std"]).view(1, -1, 1, 1)
with torch.no_grad():
    logits = model(inputs)
    by_name = None
    if "sddlib" not in config:   # a timm student: also by name, with the weights file
        import timm
        n = config["num_classes"]
        by_name = timm.create_model(config["architecture"], pretrained=True, num_classes=n,
                                    pretrained_cfg_overlay=dict(file=f"{folder}/model.safetensors", num_classes=n))
        by_name = by_name.eval()(inputs)
torch.save({"top1": 100 * (logits.argmax(1) == labels).float().mean().item(), "logits": logits,
            "type": type(model).__module__, "by_name": by_name}, out)
"""


def _test_set(metrics: dict, tmp_path: Path) -> tuple[Path, torch.Tensor]:
    """The run's test images through its own loader, normalisation undone (in [0, 1]), saved for the fresh process;
    and the logits of the run's own student (student.pth through sddlib) on them, as the run evaluated it."""
    from sddlib.checkpoints import load_checkpoint
    from sddlib.data import get_dataloaders, unnormalize
    from sddlib.models import create_model
    dls = get_dataloaders("digit_mosaic", metrics["params"]["data_dir"], bs=32, subset=96, num_workers=0,
                          device="cpu")
    x, y = (torch.cat(t) for t in zip(*[(x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor))
                                        for x, y in dls.valid]))
    path = tmp_path / "test_set.pt"
    torch.save({"images": unnormalize(x, dls.info.mean, dls.info.std), "labels": y}, path)
    run_dir = Path(metrics["params"]["output_dir"]) / "digit_mosaic" / metrics["run_name"]
    student = load_checkpoint(create_model(metrics["student"], num_classes=10), run_dir / "student.pth").eval()
    with torch.no_grad():
        return path, student(x)


def _reload(folder: Path, test_set: Path, tmp_path: Path) -> dict:
    out = tmp_path / f"{folder.name}.pt"
    done = subprocess.run([sys.executable, "-c", RELOAD, str(folder), str(test_set), str(out)], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


@pytest.mark.slow  # trains a teacher and two students (tiny_runs), and starts a fresh Python per export
@pytest.mark.parametrize("kind", sorted(STUDENTS))
def test_an_exported_student_reloads_in_a_fresh_process_with_the_runs_top1(tiny_runs, tmp_path, kind):
    run_dir, metrics = tiny_runs[kind]
    dest = export_student(run_dir, tmp_path / "export")
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    test_set, run_logits = _test_set(metrics, tmp_path)
    reloaded = _reload(dest, test_set, tmp_path)
    assert reloaded["top1"] == pytest.approx(metrics["last_top1"])
    torch.testing.assert_close(reloaded["logits"], run_logits, rtol=1e-4, atol=1e-5)
    assert reloaded["type"].startswith("timm." if kind == "timm" else "sddlib.models")
    if kind == "timm":   # timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...)) too
        torch.testing.assert_close(reloaded["by_name"], reloaded["logits"])


@pytest.mark.slow  # trains a teacher and two students (tiny_runs)
def test_config_and_card_carry_the_runs_facts(tiny_runs, tmp_path):
    run_dir, metrics = tiny_runs["own"]
    dest = export_student(run_dir, tmp_path / "own")
    config = json.loads((dest / "config.json").read_text())
    assert (config["architecture"], config["num_classes"]) == ("resnet8", 10)
    assert config["label_names"] == [str(i) for i in range(10)] and config["sddlib"] == {"model": "resnet8",
                                                                                        "stem": "cifar"}
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and len(config["pretrained_cfg"]["mean"]) == 3
    card = (dest / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "license:" not in front                                   # no license given: the card says so plainly
    assert "License: none given. The exporter named none (python -m sddlib.export ... --license ID)" in card
    assert "| data set | Digit mosaic: the first 96 training and 96 test images (subset 96) of its 8,000 and 2,000 |" \
        in card
    assert "| these weights | the last epoch's: epoch 2 of 2, top-1 " \
        f"{metrics['last_top1']:.2f}% on the test split (student.pth) |" in card
    assert "library_name: pytorch" in front and "- knowledge-distillation" in front
    assert "- image-classification" in front and "datasets:\n- digit_mosaic" in front
    for fact in (f"resnet8, top-1 {metrics['teacher_top1']:.2f}%", "SD-KD", "M=[1, 2]", "complementary regions "
                 "weighted 2.0", f"best {metrics['best_top1']:.2f}% (epoch {metrics['best_epoch']})",
                 f"last {metrics['last_top1']:.2f}%", "epochs 2 (8)", metrics["git_commit"] or "not recorded",
                 "| seed | 0 |", "hf upload", "sddlib.models import create_model"):
        assert fact in card, fact
    timm_run, timm_metrics = tiny_runs["timm"]
    timm_dest = export_student(timm_run, tmp_path / "timm", weights="best", license="apache-2.0")
    # the best epoch's tensors, in a run whose best epoch (1) is not its last (2): student.pth's are other tensors
    assert timm_metrics["best_epoch"] < len(timm_metrics["history"]) == 2, "the tiny timm run's best epoch is its last"
    from safetensors.torch import load_file
    exported = load_file(timm_dest / "model.safetensors")
    best, last = (torch.load(timm_run / name, weights_only=True) for name in ("student_best.pth", "student.pth"))
    assert best["epoch"] == timm_metrics["best_epoch"] and exported.keys() == best["model"].keys()
    assert all(torch.equal(exported[k], v) for k, v in best["model"].items())
    assert not all(torch.equal(exported[k], v) for k, v in last["model"].items())
    timm_config = json.loads((timm_dest / "config.json").read_text())
    assert timm_config["architecture"] == "test_resnet" and timm_config["pretrained_cfg"]["tag"] == "kd_digit_mosaic"
    assert "license" not in timm_config["pretrained_cfg"]            # not the ImageNet weights' licence
    timm_card = (timm_dest / "README.md").read_text()
    assert "library_name: timm" in timm_card and timm_card.split("---\n")[1].startswith("license: apache-2.0\n")
    assert "License: apache-2.0." in timm_card and "none given" not in timm_card
    assert (f"| these weights | the best epoch's: epoch {timm_metrics['best_epoch']} of 2, the one with the best "
            f"top-1 on the test split ({timm_metrics['best_top1']:.2f}%), as the paper reports its numbers; that is a "
            "selection on the test split, so this top-1 overstates what to expect on new images (student_best.pth) |"
            ) in timm_card
    assert 'timm.create_model("local-dir:' in timm_card


@pytest.mark.slow  # trains a teacher and two students (tiny_runs)
def test_the_command_line_and_a_missing_weights_file(tiny_runs, tmp_path):
    run_dir, _ = tiny_runs["own"]
    done = subprocess.run([sys.executable, "-m", "sddlib.export", str(run_dir), str(tmp_path / "cli"), "--license",
                           "cc-by-4.0"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hf upload <you>/<name>" in done.stdout and (tmp_path / "cli" / "model.safetensors").is_file()
    assert (tmp_path / "cli" / "README.md").read_text().split("---\n")[1].startswith("license: cc-by-4.0\n")
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "student.pth").unlink()
    with pytest.raises(ExportError, match=r"student\.pth is missing, so the run's last student cannot be exported"):
        export_student(copy, tmp_path / "none")
    assert not (tmp_path / "none").exists() and not list(tmp_path.glob(".none.*"))


def _fake_run(folder: Path, **metrics) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"status": "complete", "variant": "sd_kd", "teacher": "resnet8",
                                                     "params": {"dataset": "digit_mosaic"}, **metrics}))
    return folder


@pytest.mark.parametrize("case,message", [
    ("missing", r"is not a run folder \(no such directory\); give the folder a run wrote"),
    ("no metrics", r"is not a run folder: it holds no metrics\.json"),
    ("running", r"is not a finished run \(metrics\.json says status 'running'\); run it again to finish it"),
    ("alone", r"is a model trained alone, not a distilled student"),
    ("full destination", r"already exists and is not an empty folder; give a new folder"),
    ("weights", r"weights='final' is not known; use 'last' \(the final epoch\) or 'best'\."),
    ("license", r"license='MIT License' is not a license identifier of the Hugging Face Hub; give one such as "
                r"apache-2\.0, mit, cc-by-4\.0 or other \(huggingface\.co/docs/hub/repositories-licenses\)\."),
])
def test_bad_input_is_refused_in_one_sentence_writing_nothing(tmp_path, case, message, capsys):
    run, dest, weights, license = tmp_path / "run", tmp_path / "dest", "last", None
    if case == "no metrics":
        run.mkdir()
    elif case == "running":
        _fake_run(run, status="running")
    elif case == "alone":
        _fake_run(run, variant="alone", teacher=None)
    elif case in ("full destination", "weights", "license"):
        _fake_run(run)
        if case == "weights":
            weights = "final"
        elif case == "license":
            license = "MIT License"
        else:
            dest.mkdir()
            (dest / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ExportError, match=message) as refused:
        export_student(run, dest, weights=weights, license=license)
    assert str(refused.value).count(". ") == 0 and str(refused.value).endswith(".")   # one sentence
    assert sorted(p.name for p in tmp_path.iterdir()) == before                       # nothing written
    if case == "full destination":
        assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    if case == "running":
        assert main([str(run), str(dest)]) == 2 and capsys.readouterr().err.startswith("error: ")

