"""Issue 31, items 2, 3 and 7: a teacher trained here and the student-alone row of the same architecture never share
a folder; a reduced CUB-200 takes a teacher checkpoint of its own classes; names that say what they do."""
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sddlib
from sddlib import experiment, report, teacher_source
from sddlib.checkpoints import CheckpointError, load_checkpoint
from sddlib.config import RunConfig
from sddlib.data import get_dataloaders
from sddlib.models import create_model
from sddlib.preflight import check_environment
from tests.fake_datasets import write_tiny_cub200
from tests.test_folder import write_folder

REPO = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digit_mosaic", teacher="resnet8", student="resnet8", method="kd", M="[1]", epochs=2,
            teacher_epochs=1, subset=96, batch_size=32, lr_decay_stages=[1], progress=False, figures=False,
            num_workers=0)


@pytest.mark.slow  # trains a student alone, a teacher and a student (tiny)
def test_a_teacher_trained_here_and_the_student_alone_row_never_share_a_folder(tmp_path):
    params = {**TINY, "output_dir": str(tmp_path / "out"), "data_dir": str(tmp_path / "data")}
    # the student-alone row of resnet8 first, under the student's solver (2 epochs) ...
    alone = experiment.run_vanilla(params)
    # ... then a run whose teacher, also resnet8, is trained here under the teacher protocol (1 epoch): on main it
    # was refused ("holds a complete run of another configuration"), or adopted the row's model as its teacher
    metrics = experiment.run(params)
    assert metrics["teacher_source"]["source"] == "trained here"
    teacher_dir, alone_dir = teacher_source.teacher_run_dir(params), experiment.vanilla_dir(params, "resnet8")
    assert teacher_dir != alone_dir and teacher_dir.name == "resnet8-teacher-seed0"
    teacher_run = experiment.load_metrics(teacher_dir / "metrics.json")
    assert teacher_run["variant"] == "teacher" and len(teacher_run["history"]) == 1
    assert experiment.load_metrics(alone_dir / "metrics.json") == alone and len(alone["history"]) == 2
    # the "Student alone" row counts the student's own run only, never the teacher's
    row = report.results_table(report.load_runs(tmp_path / "out"), "digit_mosaic", published_only=False)
    student_row = row[(row.method == "student") & (row.student == "resnet8")]
    assert student_row.n_runs.tolist() == [1] and student_row.ours_best.tolist() == [alone["best_top1"]]


def test_a_reduced_cub200_takes_a_teacher_checkpoint_of_its_own_classes(tmp_path):
    base = write_tiny_cub200(tmp_path / "data", n_classes=3)
    classes = (base / "classes.txt").read_text().splitlines()[:3]     # a CUB-200 reduced to three species
    (base / "classes.txt").write_text("\n".join(classes) + "\n")
    ckpt = tmp_path / "teacher.pth"
    torch.save({"model": create_model("resnet8x4", num_classes=3, stem="cub").state_dict()}, ckpt)
    cfg = RunConfig.from_params({"dataset": "cub200", "data_dir": str(tmp_path / "data"), "teacher": "resnet8x4",
                                 "student": "resnet8x4", "teacher_ckpt": str(ckpt), "output_dir": str(tmp_path)})
    check_environment(cfg)   # on main: checked against 200 classes, "does not fit resnet8x4"
    dls = get_dataloaders("cub200", tmp_path / "data", bs=2, num_workers=0, download=False)
    assert dls.info.num_classes == 3    # the one source of the count: the data
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": create_model("resnet8x4", num_classes=5, stem="cub").state_dict()}, wrong)
    with pytest.raises(CheckpointError, match="does not fit resnet8x4"):
        check_environment(cfg.replace(teacher_ckpt=str(wrong)))


def test_loading_a_checkpoint_always_loads_and_checking_one_never_does(tmp_path):
    from sddlib.checkpoints import check_checkpoint   # on main: load_checkpoint(check_shapes=False) loaded nothing
    assert "check_shapes" not in inspect.signature(load_checkpoint).parameters
    saved, model = create_model("resnet8", num_classes=3), create_model("resnet8", num_classes=3)
    torch.save({"model": saved.state_dict()}, tmp_path / "a.pth")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = check_checkpoint(model, tmp_path / "a.pth", "resnet8")
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)   # checked, not loaded
    assert all(torch.equal(state[k], v) for k, v in saved.state_dict().items())
    load_checkpoint(model, tmp_path / "a.pth", "resnet8")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.state_dict().items())
    other = create_model("resnet8", num_classes=5)
    with pytest.raises(CheckpointError, match="another class count"):
        load_checkpoint(other, tmp_path / "a.pth", "resnet8")
    assert check_checkpoint(other, tmp_path / "a.pth", "resnet8", shapes=False).keys() == state.keys()


@pytest.mark.trains
def test_metrics_dataset_is_the_name_runs_are_filed_under_for_failed_runs_too(tmp_path):
    folder = write_folder(tmp_path / "pets", per_class=6)
    params = {"dataset": "folder", "data_dir": str(folder), "image_size": 32, "teacher": "resnet8",
              "student": "resnet8", "num_workers": 0, "batch_size": 4, "epochs": 1, "lr_decay_stages": [1],
              "lr": 1e30, "clip_grad_norm": 0, "progress": False, "output_dir": str(tmp_path / "out")}
    with pytest.raises(experiment.RunFailedError):
        experiment.run_vanilla(params)
    failed = json.loads((experiment.vanilla_dir(params, "resnet8") / "metrics.json").read_text())
    assert failed["status"] == "failed" and failed["dataset"] == "pets"   # on main: "folder"


@pytest.mark.slow  # a fresh interpreter imports the sweep and, through it, fastai and torch (~20 s)
def test_the_package_says_truly_what_the_sweep_imports():
    code = ("import sys, sddlib; light = 'fastai' not in sys.modules; from sddlib import sweep; "
            "sweep.main(['params/cifar100/resnet32x4-ShuffleV1-sd_kd.yaml', '--dry-run']); "
            "print(light, 'fastai' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.stdout.strip().splitlines()[-1] == "True True", done.stderr[-2000:]
    said = inspect.getdoc(sddlib.__getattr__)
    assert "needs no fastai" not in said and "sweep" in said and "imports the" in said   # on main: "needs no fastai"
