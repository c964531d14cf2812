"""The `imports` run parameter (issue 31): a module the run names is imported before the parameters are checked, in
every process that runs the experiment, so a loss it registers is a `method` everywhere: `experiment.run` in this
process, `python -m sddlib` (torchrun's two workers, and the CIFAR-100 template's command line), a sweep's notebook
kernel (in a submitit job, and the example's sweep); and the example module of docs/losses.md (examples/my_losses.py)
runs from its folder. Kept out of the fingerprint, recorded in metrics.json; a module that cannot be imported is one
sentence."""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from fake_datasets import write_tiny_folder
from sddlib import experiment, sweep
from sddlib.config import ConfigError, RunConfig
from sddlib.losses import LOSSES
from sddlib.models import create_model

REPO = Path(__file__).resolve().parents[1]
MODULE = "issue31_losses"   # written by the tests; registers method "l2sq"
LOSS_MODULE = '''
from sddlib.losses import register_loss

def l2sq_rows(student, teacher, target):
    return (student - teacher).pow(2).mean(1)

register_loss("l2sq", l2sq_rows, ce_weight=1.0, kd_weight=1.0, warmup_epochs=0)
'''
# a notebook that runs one experiment from its (injected) parameters, as the dataset notebooks do
RUN_CELL = "from sddlib import experiment\nexperiment.run(experiment.notebook_params(globals()))\n"


@pytest.fixture
def work(tmp_path):
    """A folder holding the loss module (not on any path of this process), tiny image data, a teacher checkpoint and
    the run's parameters; the loss is unregistered afterwards, so no other test sees it."""
    (tmp_path / f"{MODULE}.py").write_text(LOSS_MODULE)
    data = write_tiny_folder(tmp_path / "pets", n_train=(8, 8), n_val=(2, 2))
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": create_model("resnet8", num_classes=2).state_dict()}, teacher)
    params = dict(imports=[MODULE], method="l2sq", M="[1,2]", dataset="folder", data_dir=str(data), image_size=32,
                  teacher="resnet8", student="resnet8", teacher_ckpt=str(teacher), epochs=1, batch_size=8,
                  num_workers=0, device="cpu", progress=False, figures=False, output_dir=str(tmp_path / "outputs"))
    (tmp_path / "run.yaml").write_text(json.dumps(params))   # JSON is YAML
    yield tmp_path, params
    LOSSES.pop("l2sq", None)
    sys.modules.pop(MODULE, None)


def completed(params, output_dir=None) -> dict:
    """The run's metrics.json: complete, distilled with the module's loss, `imports` recorded, not fingerprinted."""
    run = Path(output_dir or params["output_dir"]) / "pets" / "resnet8-resnet8-sd_l2sq-M12-seed0"
    metrics = experiment.load_metrics(run / "metrics.json")
    assert metrics is not None, f"no complete run in {run}"
    assert metrics["method"] == "l2sq" and metrics["params"]["imports"] == [MODULE]
    assert "imports" not in metrics["fingerprint"]
    return metrics


def env() -> dict:
    """This project on the path, the test's folder not: the module is found from the folder the command starts in."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def sh(command, cwd) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def notebook(folder: Path, params: dict) -> Path:
    """A notebook whose parameters cell sets every key of `params` (a sweep refuses a key it does not set)."""
    path = folder / "run.ipynb"
    cell = "".join(f"{key} = {value!r}\n" for key, value in {**params, "imports": []}.items())
    nbformat.write(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(cell, metadata={"tags": ["parameters"]}),
               nbformat.v4.new_code_cell(RUN_CELL)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), path)
    return path


# --- no process needed ------------------------------------------------------------------------------------------
def test_a_module_that_cannot_be_imported_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        RunConfig.from_params({"imports": ["no_such_losses"], "method": "l2sq"})
    assert str(err.value) == (f"imports: module 'no_such_losses' cannot be found from {tmp_path}; run from the folder "
                              "that holds no_such_losses.py (or the package no_such_losses/), add that folder to "
                              "PYTHONPATH, or pip install its package.")
    (tmp_path / "broken_losses.py").write_text("raise RuntimeError('half written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^imports: module 'broken_losses' failed while being imported "
                                          r"\(RuntimeError: half written at .*broken_losses.py:1\); fix the module"):
        RunConfig.from_params({"imports": "broken_losses"})
    sys.modules.pop("broken_losses", None)


def test_imports_come_before_the_checks_and_stay_out_of_the_fingerprint(work, monkeypatch):
    folder, params = work
    with pytest.raises(ConfigError, match="method 'l2sq' is unknown"):   # without the module: not a method
        RunConfig.from_params({k: v for k, v in params.items() if k != "imports"})
    monkeypatch.syspath_prepend(str(folder))
    cfg = RunConfig.from_params({**params, "imports": MODULE})          # `-p imports issue31_losses`: one name
    assert cfg.imports == (MODULE,) and cfg.to_params()["imports"] == [MODULE]
    assert "imports" not in cfg.fingerprint
    assert cfg.fingerprint == RunConfig.from_params({**params, "imports": []}).fingerprint


# --- each entry point ----------------------------------------------------------------------------------------------
@pytest.mark.slow  # trains one epoch
def test_in_process(work, monkeypatch):
    folder, params = work
    monkeypatch.syspath_prepend(str(folder))
    metrics = experiment.run(params)
    assert metrics == completed(params)


@pytest.mark.slow  # two training processes, each `python -m sddlib` in the module's folder
def test_torchrun_workers(work):
    folder, params = work
    sh([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "sddlib",
        "-f", "run.yaml", "-p", "imports", f'["{MODULE}"]'], cwd=folder)
    assert completed(params)["distributed"]["world_size"] == 2


@pytest.mark.slow  # a submitit job executes a notebook: the sweep's notebook kernel, in a job
def test_a_submitit_job(work, monkeypatch):
    folder, params = work
    monkeypatch.chdir(folder)   # the sweep starts here; its kernel starts in the repository root
    assert sweep.main(["run.yaml", "--notebook", str(notebook(folder, params)), "--executor", "local", "--jobs", "1",
                       "--gpus-per-job", "0", "--log-dir", str(folder / "logs")]) == 0
    completed(params)


# --- the example of docs/losses.md ----------------------------------------------------------------------------------
@pytest.mark.slow  # a sweep of the folder notebook, one epoch each (the command line from a module's folder:
def test_the_example_module_runs_from_its_folder(tmp_path):  # test_torchrun_workers; the sweep checks every key)
    data = write_tiny_folder(tmp_path / "pets", n_train=(8, 8), n_val=(2, 2))
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": create_model("resnet8", num_classes=2).state_dict()}, teacher)
    small = ["-p", "data_dir", str(data), "-p", "image_size", "32", "-p", "teacher", "resnet8", "-p", "student",
             "resnet8", "-p", "teacher_ckpt", str(teacher),
             "-p", "epochs", "1", "-p", "batch_size", "8", "-p", "num_workers", "0", "-p", "device", "cpu",
             "-p", "figures", "false", "-p", "progress", "false"]
    examples = REPO / "examples"
    swept = tmp_path / "sweep"
    sh([sys.executable, "-m", "sddlib.sweep", "l2.yaml", *small, "-p", "output_dir", str(swept)], cwd=examples)
    metrics = experiment.load_metrics(swept / "pets" / "resnet8-resnet8-sd_l2-M124-seed0" / "metrics.json")
    assert metrics["method"] == "l2" and metrics["params"]["imports"] == ["my_losses"]
    assert metrics["params"]["loss_params"] == {"scale": 0.5}
    assert (swept / "pets" / "resnet8-resnet8-l2-M1-seed0" / "metrics.json").is_file()   # the notebook's plain run


# --- the CIFAR-100 template (examples/jsd_loss.py, examples/jsd_cifar100.yaml) ---------------------------------------
JSD_RECIPE = {"ce_weight": 1.0, "kd_weight": 2.0, "warmup_epochs": 20, "T": 4.0}


@pytest.mark.slow  # a command-line run and a sweep of notebooks/cifar100.ipynb, one epoch each on 32 images
def test_the_cifar100_template_runs_from_its_folder(tmp_path, tiny_cifar100):
    """The template file runs from the command line; an authors' KD file run with `-p method jsd` through a sweep
    takes jsd's registered recipe in place of KD's, and the run's first output line says so."""
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": create_model("resnet8", num_classes=100).state_dict()}, teacher)
    small = ["-p", "data_dir", str(tiny_cifar100), "-p", "teacher", "resnet8", "-p", "student", "resnet8",
             "-p", "teacher_ckpt", str(teacher), "-p", "epochs", "1", "-p", "batch_size", "8", "-p", "num_workers", "0",
             "-p", "device", "cpu", "-p", "figures", "false", "-p", "feature_figures", "false", "-p", "progress",
             "false"]
    examples = REPO / "examples"
    cli = tmp_path / "cli"
    sh([sys.executable, "-m", "sddlib", "-f", "jsd_cifar100.yaml", *small, "-p", "output_dir", str(cli)], cwd=examples)
    swept = tmp_path / "sweep"
    sh([sys.executable, "-m", "sddlib.sweep", "../params/cifar100/resnet32x4-ShuffleV1-sd_kd.yaml", "-p", "imports",
        "[jsd_loss]", "-p", "method", "jsd", *small, "-p", "output_dir", str(swept)], cwd=examples)
    for out in (cli, swept):
        run = out / "cifar100" / "resnet8-resnet8-sd_jsd-M124-seed0"
        metrics = experiment.load_metrics(run / "metrics.json")
        assert metrics["method"] == "jsd" and metrics["params"]["imports"] == ["jsd_loss"]
        assert {k: metrics["params"][k] for k in JSD_RECIPE} == JSD_RECIPE and metrics["params"]["lr"] == 0.01
    said = ("method jsd replaced the values that were kd's recipe (recipe: kd) by its own: ce_weight 1 (was 0.1), "
            "kd_weight 2 (was 0.9), warmup_epochs 20 (was 0), T 4 (was 4).")
    assert said in experiment.load_metrics(run / "metrics.json")["warnings"]
    cells = json.loads((run / "notebook.ipynb").read_text())["cells"]
    run_cell = next(c for c in cells if "experiment.run(params" in "".join(c["source"]))
    lines = "".join("".join(out.get("text", "")) for out in run_cell["outputs"]).splitlines()
    first = lines[:next(i for i, line in enumerate(lines) if not line.startswith("warning: "))]   # before any work
    assert f"warning: {said}" in first
