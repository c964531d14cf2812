"""`python -m sddlib.tune` on tiny data: the study in its folder and continued, the split held out of the training
images (the test split unread until the confirmation), pruning recorded as "stopped", bad input in one sentence, a
killed tuner's trial failed on rerun, two tuners on one study (SQLite, a journal file), and the notebook."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from fake_datasets import write_tiny_cifar100, write_tiny_folder
from sddlib import tune
from sddlib.__main__ import load_params
from sddlib.config import ConfigError, RunConfig
from sddlib.data import get_dataloaders, load_digit_mosaics
from sddlib.data.build import hold_out
from sddlib.runs import load_metrics
from sddlib.tune_outputs import confirm

REPO = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digit_mosaic", teacher="resnet8", student="resnet8", subset=64, epochs=2, teacher_epochs=1,
            batch_size=16, lr_decay_stages="[1]", progress="false", figures="false")


def command(data_dir, out, *extra, **changes) -> list[str]:
    params = {**TINY, "data_dir": str(data_dir), "output_dir": str(out), **changes}
    return [a for k, v in params.items() for a in ("-p", k, str(v))] + list(extra)


def space_file(tmp_path, space: dict) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return str(path)


def study_of(folder: Path, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name="tune", storage=storage or f"sqlite:///{folder / 'study.db'}")


def subprocess_env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_held_out_split_is_stratified_seeded_and_from_training_images_only(mosaic_dir, tmp_path):
    d = load_digit_mosaics(mosaic_dir)
    dls = get_dataloaders("digit_mosaic", mosaic_dir, bs=16, subset=200, seed=0, device="cpu", tune_fraction=0.25)
    scored, trained = dls.valid.dataset, dls.train.dataset
    assert dls.tune_split == {"tune_fraction": 0.25, "seed": 0, "train_images": len(trained),
                              "held_out_images": len(scored)}
    assert len(scored) + len(trained) == 200
    rows = {bytes(x.numpy()): i for i, x in enumerate(torch_images(d["x_train"][:200]))}
    held = sorted(rows[bytes(x.numpy())] for x in scored.images)    # every scored image is a training image
    assert not set(held) & {rows[bytes(x.numpy())] for x in trained.images}
    per_class = np.bincount(d["y_train"][:200], minlength=10)
    assert np.bincount(scored.targets.numpy(), minlength=10).tolist() == [max(1, round(n * 0.25)) for n in per_class]
    assert hold_out(d["y_train"][:200], 0.25, 0)[1] == held                                     # seeded
    assert hold_out(d["y_train"][:200], 0.25, 1)[1] != hold_out(d["y_train"][:200], 0.25, 0)[1]   # another seed
    # CIFAR-100 with an unreadable test file: the tuner's loader never opens it, the plain one stops at it
    (write_tiny_cifar100(tmp_path / "cifar", n_train=40, n_test=8) / "test").write_bytes(b"not a pickle")
    cifar = tmp_path / "cifar"
    held_out = get_dataloaders("cifar100", cifar, bs=8, device="cpu", tune_fraction=0.5)
    assert held_out.valid.n == held_out.tune_split["held_out_images"] > 0
    with pytest.raises(Exception, match="incomplete or unreadable"):
        get_dataloaders("cifar100", cifar, bs=8, device="cpu", download=False)


def torch_images(array):
    import torch
    return torch.from_numpy(array)


@pytest.mark.trains
def test_tuning_never_reads_the_test_split(tmp_path):
    """Every held-out (val/) image is garbage: the trials train and score without opening one; the confirmation,
    the one reader of the test split, stops at the first."""
    data = write_tiny_folder(tmp_path / "images", n_train=(12, 12), n_val=(3, 3), size=16)
    for image in (data / "val").rglob("*.png"):
        image.write_bytes(b"not an image")
    out = tmp_path / "out"
    args = command(data, out, "--space", space_file(tmp_path, {"lr": {"low": 0.01, "high": 0.1}}), "--trials", "2",
                   "--confirm-seeds", "0", dataset="folder", image_size=16, subset=0, epochs=1, batch_size=8,
                   tune_fraction=0.25)
    assert tune.main(args) == 0
    trials = study_of(out / "images" / "tune").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["tune_split"] == {"tune_fraction": 0.25, "seed": 0, "train_images": 18,
                                                  "held_out_images": 6}
    parsed = tune.parse(args)
    job = tune.plan_study(load_params(parsed.parameters_file, parsed.parameter), parsed)
    with pytest.raises(ValueError, match=r"val/.*\.png"):
        confirm(job, 1)


@pytest.mark.trains
def test_study_in_its_folder_continues_to_its_total_and_writes_what_it_found(mosaic_dir, tmp_path):
    out = tmp_path / "outputs"
    args = command(mosaic_dir, out, "--confirm-seeds", "1")
    assert tune.main(args + ["--trials", "2"]) == 0
    folder = out / "digit_mosaic" / "tune"
    assert (folder / "study.db").is_file()
    assert tune.main(args + ["--trials", "3"]) == 0                  # the same command, a larger total
    trials = study_of(folder).trials
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in trials)
    base = RunConfig.from_params({**load_params([], tune.parse(args).parameter), "tune_fraction": 0.2})
    assert trials[0].params == {"method": "dkd", "M": "[1,2,4]", "T": 4.0, "ce_weight": 1.0, "kd_weight": 1.0,
                                "lr": base.lr, "warmup_epochs": 20.0}   # the method's registered recipe first
    runs = [load_metrics(folder / "trials" / "digit_mosaic" / f"trial-{n:04d}" / "metrics.json") for n in range(3)]
    assert [r["best_top1"] for r in runs] == pytest.approx([t.value for t in trials])
    assert {r["teacher_source"]["path"] for r in runs} == {str(folder / "trials" / "teachers" / "digit_mosaic" /
                                                               "resnet8.pth")}   # trained once, for the study
    assert len(list((folder / "trials" / "digit_mosaic").glob("*-teacher-seed0"))) == 1
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert RunConfig.from_params(load_params([str(folder / "best.yaml")], [])).tune_fraction == 0
    assert best["method"] == study_of(folder).best_trial.params["method"]
    assert len(pd.read_csv(folder / "trials.csv")) == 3
    pictures = sorted(p.stem for p in (folder / "figures").glob("*.png"))
    assert {"history", "importances", "slice_lr", "slice_method"} <= set(pictures)
    assert all((folder / "figures" / f"{p}.csv").is_file() for p in pictures)
    confirmation = pd.read_csv(folder / "confirmation.csv")
    assert confirmation["seed"].tolist() == [0]
    tuned = load_metrics(out / "digit_mosaic" / "tune-best-seed0" / "metrics.json")
    assert "tune_split" not in tuned and tuned["params"]["tune_fraction"] == 0     # scored on the test split
    assert confirmation["difference_best"][0] == pytest.approx(confirmation["tuned_best_top1"][0] -
                                                               confirmation["default_best_top1"][0])
    default = load_metrics(out / "digit_mosaic" / confirmation["default_run"][0] / "metrics.json")["params"]
    recipe = RunConfig.from_params({**load_params([], tune.parse(args).parameter), "method": best["method"]})
    assert {k: default[k] for k in ("method", "lr", "M", "ce_weight", "kd_weight", "warmup_epochs")} == \
        {k: recipe[k] for k in ("method", "lr", "M", "ce_weight", "kd_weight", "warmup_epochs")}   # the run as given


def test_the_default_recipe_is_the_run_as_given_with_the_best_method_and_its_registered_loss_values():
    from sddlib.tune_outputs import _default_recipe
    base = {"dataset": "digit_mosaic", "lr": 0.01, "M": "[1]", "epochs": 3, "ce_weight": 0.3, "T": 2.0,
            "warmup_epochs": 5, "tune_fraction": 0.2, "run_name": "x"}
    assert _default_recipe(base, "kd") == {"dataset": "digit_mosaic", "lr": 0.01, "M": "[1]", "epochs": 3,
                                           "method": "kd"}


@pytest.mark.trains
def test_a_pruned_trial_is_stopped_never_complete(mosaic_dir, tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=101))
    trial = study.ask()                                              # no top-1 reaches 101: pruned after epoch 1
    job = {"base": {**load_params([], tune.parse(command(mosaic_dir, tmp_path)).parameter), "tune_fraction": 0.2},
           "trials_dir": str(tmp_path / "trials")}
    value, state = tune._run_trial(trial, job, {"method": "kd"})
    assert (value, state) == (None, optuna.trial.TrialState.PRUNED)
    metrics = json.loads((tmp_path / "trials" / "digit_mosaic" / "trial-0000" / "metrics.json").read_text())
    assert metrics["status"] == "stopped" and "after epoch 1/2" in metrics["reason"] and len(metrics["history"]) == 1
    assert list(study.trials[0].intermediate_values) == [1]


@pytest.mark.parametrize("extra, changes, message", [
    ([], {"lrr": 0.1}, "parameter 'lrr' is unknown; did you mean 'lr'"),
    (["--space", "SPACE:{temperature: [1, 2]}"], {}, "'temperature' is not a run parameter a tuner may vary"),
    (["--space", "SPACE:{lr: {low: 0.1, high: 0.01}}"], {}, "low=0.1 is not below high=0.01"),
    (["--space", "SPACE:{method: [kd, nope]}"], {}, "method"),
    (["--space", "SPACE:{}"], {}, "the search space {} is empty"),
    (["--storage", "sqlite:////nonexistent/folder/study.db"], {}, "cannot be opened"),
    (["--trials", "0"], {}, "--trials 0 is not a positive number"),
])
def test_bad_input_is_one_sentence_before_any_training(tmp_path, capsys, extra, changes, message):
    extra = [space_file(tmp_path, yaml.safe_load(a[len("SPACE:"):])) if a.startswith("SPACE:") else a for a in extra]
    assert tune.main(command(tmp_path / "data", tmp_path / "out", *extra, **changes)) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out" / "digit_mosaic" / "tune" / "trials").exists()


@pytest.mark.trains
def test_a_killed_tuners_trial_is_failed_on_rerun_and_the_study_goes_on(mosaic_dir, tmp_path):
    args = command(mosaic_dir, tmp_path / "out", "--trials", "2", "--confirm-seeds", "0", epochs=3)
    tuner = subprocess.Popen([sys.executable, "-m", "sddlib.tune", *args], cwd=REPO, env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = tmp_path / "out" / "digit_mosaic" / "tune"
    deadline = time.time() + 120
    while not (folder / "trials" / "digit_mosaic" / "trial-0000").is_dir():   # trial 0 is training
        assert tuner.poll() is None and time.time() < deadline, tuner.stderr.read()
        time.sleep(0.05)
    tuner.send_signal(signal.SIGKILL)
    tuner.wait()
    assert [t.state.name for t in study_of(folder).trials] == ["RUNNING"]
    # the same command again, in a process of its own as a user's would be (in this test process the losses other
    # tests registered would widen the default space, which a study refuses to change)
    again = subprocess.run([sys.executable, "-m", "sddlib.tune", *args], cwd=REPO, env=subprocess_env(),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [t.state.name for t in study_of(folder).trials] == ["FAIL", "COMPLETE"]


@pytest.mark.trains
@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_two_tuners_on_one_study(mosaic_dir, tmp_path, storage):
    """Two processes at once on one study (SQLite: two submitit workers; a journal file as on a shared
    filesystem: two commands): no storage error, no trial number twice, the total reached."""
    out = tmp_path / "out"
    folder = out / "digit_mosaic" / "tune"
    space = space_file(tmp_path, {"lr": {"low": 0.01, "high": 0.1, "log": True}})
    if storage == "sqlite":
        assert tune.main(command(mosaic_dir, out, "--trials", "4", "--workers", "2", "--space", space,
                                 "--confirm-seeds", "0")) == 0
        url = None
        logs = "".join(p.read_text() for p in (folder / "submitit").rglob("*.err"))
        assert "Traceback" not in logs and "locked" not in logs
    else:
        url = f"journal:{tmp_path / 'shared' / 'study.log'}"
        (tmp_path / "shared").mkdir()
        args = command(mosaic_dir, out, "--trials", "4", "--storage", url, "--space", space, "--confirm-seeds", "0")
        tuners = [subprocess.Popen([sys.executable, "-m", "sddlib.tune", *args, "--seed", str(i)], cwd=REPO,
                                   env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for i in range(2)]
        results = [t.communicate(timeout=300) for t in tuners]
        assert [t.returncode for t in tuners] == [0, 0], results
        assert all("Traceback" not in err for _, err in results)
    trials = study_of(folder, url and optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(url[len("journal:"):]))).trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) >= 4 and sorted(numbers) == list(range(len(numbers)))
    # the total counts finished trials: which one the pruner stops after its first epoch depends on the two
    # workers' order (a trial below the median of those before it), so a pruned trial is one of them
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) >= 4
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2


@pytest.mark.trains
@pytest.mark.slow
def test_tune_notebook(mosaic_dir, tmp_path):
    import papermill as pm
    output = tmp_path / "tune.executed.ipynb"
    pm.execute_notebook(str(REPO / "notebooks" / "tune.ipynb"), str(output), cwd=str(REPO), kernel_name="python3",
                        progress_bar=False,
                        parameters={**{k: v for k, v in TINY.items() if k not in ("progress", "figures")},
                                    "lr_decay_stages": [1], "data_dir": str(mosaic_dir),
                                    "output_dir": str(tmp_path / "out"), "trials": 2, "confirm_seeds": 1})
    text = output.read_text()
    assert "best: trial" in text and "paired over 1 seed(s)" in text and "image/png" in text
    assert (tmp_path / "out" / "digit_mosaic" / "tune" / "best.yaml").is_file()
