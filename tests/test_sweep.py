"""sddlib.sweep on a tiny throwaway notebook (not the dataset notebooks): skip, failures, --jobs, -p, --dry-run."""
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from sddlib import sweep
from sddlib.experiment import load_metrics

PARAMETERS = ('dataset = "cifar100"\nteacher = "resnet32x4"\nstudent = "ShuffleV1"\nmethod = "dkd"\nM = "[1,2,4]"\n'
              'seed = 0\nepochs = 240\nsubset = 0\nbatch_size = 64\nT = None\ndata_dir = "data"\n'
              'output_dir = "outputs"\nteachers_dir = ""\ndevice = "auto"\n')
# A stand-in for a dataset notebook that imports nothing heavy (a kernel that imports sddlib takes ~15 s to
# start here): it writes the metrics.json of a run named as sddlib names runs, with the parameters it was given.
WORK = """\
if student == "vgg8":
    raise RuntimeError("asked to fail")
silent = student == "ShuffleV2"   # ends without writing a complete metrics.json
import json, pathlib
p = {k: v for k, v in dict(globals()).items() if k in ("dataset", "teacher", "student", "method", "M", "seed", "epochs",
                                                        "subset", "batch_size", "T", "data_dir", "output_dir",
                                                        "device")}
scales = [int(s) for s in p["M"].strip("[]").split(",")]
variant = p["method"] if scales == [1] else "sd_" + p["method"]
name = f"{p['teacher']}-{p['student']}-{variant}-M{''.join(map(str, scales))}-seed{p['seed']}"
out = pathlib.Path(p["output_dir"]) / p["dataset"] / name
out.mkdir(parents=True, exist_ok=True)
if not silent: (out / "metrics.json").write_text(json.dumps({
    "status": "complete", "run_name": name, "dataset": p["dataset"], "teacher": p["teacher"],
    "student": p["student"], "method": p["method"], "scales": scales, "sd": scales != [1],
    "variant": variant, "seed": p["seed"], "best_top1": 50.0,
    "best_top5": 80.0, "best_epoch": 1, "last_top1": 49.0, "last_top5": 79.0, "teacher_top1": 60.0,
    "params": p, "history": [], "wall_time_s": 0.0, "hardware": {}, "versions": {}, "git_commit": None,
    "figures": []}))
"""


@pytest.fixture
def setup(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell(WORK)],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    (tmp_path / "ok.yaml").write_text("dataset: cifar100\nteacher: resnet32x4\nstudent: ShuffleV1\nmethod: dkd\n"
                                      'M: "[1,2,4]"\nepochs: 240\nT: 4.0\n')
    (tmp_path / "fail.yaml").write_text("dataset: cifar100\nteacher: resnet32x4\nstudent: vgg8\nmethod: kd\n")
    out = tmp_path / "out"
    for arch in ("resnet32x4",):  # the published teachers' folder (the notebook above does not read it)
        (tmp_path / "teachers" / f"{arch}_vanilla").mkdir(parents=True)
        (tmp_path / "teachers" / f"{arch}_vanilla" / f"{arch}_best.pth").write_bytes(b"")
    args = ["--notebook", str(tmp_path / "tiny.ipynb"), "-p", "output_dir", str(out), "-p", "seed", "1",
            "-p", "teachers_dir", str(tmp_path / "teachers"),
            "-p", "M", "[1]", "-p", "epochs", "2", "-p", "subset", "200", "-p", "batch_size", "8",
            "-p", "data_dir", str(tmp_path / "d")]
    return tmp_path, out, args


def test_dry_run(setup, capsys):
    tmp, out, args = setup
    assert sweep.main([str(tmp / "ok.yaml"), str(tmp / "fail.yaml"), "--dry-run", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:4] for line in lines[:2]] == [["to", "run", "baseline", f"resnet32x4-{s}-M1-seed1"]
                                                         for s in ("ShuffleV1-dkd", "vgg8-kd")]
    assert all("teacher: published file" in line for line in lines[:2]) and lines[0].endswith(str(tmp / "ok.yaml"))
    assert lines[2:] == ["plan: 2 runs (0 teacher, 0 alone, 2 baseline, 0 sd): 0 complete, 2 to run, 0 failed before"]
    assert not out.exists()


@pytest.mark.slow  # executes notebooks
def test_parallel_failure_overrides_skip_force(setup, capsys, monkeypatch):
    tmp, out, args = setup
    run = out / "cifar100" / "resnet32x4-ShuffleV1-dkd-M1-seed1"
    assert sweep.main([str(tmp / "ok.yaml"), str(tmp / "fail.yaml"), "--jobs", "2", *args]) == 1
    captured = capsys.readouterr()
    assert f"{tmp / 'fail.yaml'}: RuntimeError: asked to fail" in captured.err  # listed, one line
    assert str(tmp / "ok.yaml") not in captured.err
    assert re.search(r"memory: 2 jobs x [\d.]+ GiB \(largest run, .*, measured\) of [\d.]+ GiB free on host memory",
                     captured.out)          # both configurations measured before either started
    metrics = load_metrics(run / "metrics.json")  # the other run completed
    assert metrics is not None and (run / "notebook.ipynb").is_file()
    # -p overrides reached the notebook (values parsed as YAML; M stays text), the file's own values too
    p = metrics["params"]
    assert (p["seed"], p["epochs"], p["subset"], p["M"], p["T"]) == (1, 2, 200, "[1]", 4.0)
    assert p["data_dir"] == str(tmp / "d") and metrics["variant"] == "dkd"
    executed = json.loads((run / "notebook.ipynb").read_text())
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])

    # a complete run is skipped...
    assert sweep.main([str(tmp / "ok.yaml"), *args]) == 0
    assert capsys.readouterr().out.startswith(f"complete         baseline {run.name}")
    assert (run / "metrics.json").read_text() == json.dumps(metrics)
    # ... unless --force, which re-runs it (in the repo root) and keeps the previous result beside the new one
    calls = []

    def fake_execute(nb, out_nb, parameters, cwd, **kwargs):
        calls.append((parameters, cwd))
        departures = {"epochs": [2, 240], "subset": [200, 0]}  # as sddlib.departures records a short run
        (Path(out_nb).parent / "metrics.json").write_text(json.dumps({**metrics, "departures": departures}))

    monkeypatch.setattr("papermill.execute_notebook", fake_execute)
    assert sweep.main([str(tmp / "ok.yaml"), "--force", *args]) == 0
    text = capsys.readouterr().out
    assert "1 done, 0 skipped, 0 failed" in text and "; 0 of 1 done as published" in text
    assert f"done  {tmp / 'ok.yaml'}: epochs 2 (240), subset 200 (0)" in text  # each run: as published or what changed
    page = Path(p["output_dir"]) / "report.html"       # the sweep's last step: the results page
    assert f"results page: {page}" in text and "epochs 2 (240), subset 200 (0)" in page.read_text()
    assert calls == [({**yaml.safe_load((tmp / "ok.yaml").read_text()), "output_dir": str(out), "seed": 1,
                       "M": "[1]", "epochs": 2, "subset": 200, "batch_size": 8, "data_dir": str(tmp / "d"),
                       "teachers_dir": str(tmp / "teachers")}, str(sweep.ROOT))]
    assert load_metrics(run / "metrics.previous.json") == metrics and load_metrics(run / "metrics.json")
    metrics = load_metrics(run / "metrics.json")
    as_published = json.dumps({**metrics, "departures": {}})
    monkeypatch.setattr("papermill.execute_notebook",
                        lambda nb, out_nb, **kwargs: (Path(out_nb).parent / "metrics.json").write_text(as_published))
    assert sweep.main([str(tmp / "ok.yaml"), "--force", *args]) == 0
    text = capsys.readouterr().out
    assert f"done  {tmp / 'ok.yaml'}: as published" in text and "; 1 of 1 done as published" in text


def test_bad_file_is_a_failure_not_a_crash(setup, capsys):
    tmp, out, args = setup
    (tmp / "typo.yaml").write_text("dataset: cifar100\nlearning_rate: 0.1\n")
    assert sweep.main([str(tmp / "typo.yaml"), "--dry-run", *args]) == 1
    assert "typo.yaml: ConfigError: parameter 'learning_rate' is unknown;" in capsys.readouterr().err


def test_a_key_the_notebook_does_not_take_is_refused_before_any_run(setup, capsys, monkeypatch):
    """Papermill would pass it with a warning only and the notebook would run another experiment (issue 38: a folder
    params file's seed ran seed 0): one sentence naming the key and the notebook, and nothing runs."""
    tmp, out, args = setup
    (tmp / "wd.yaml").write_text((tmp / "ok.yaml").read_text().replace("ShuffleV1", "resnet8x4")  # a run folder
                                 + "weight_decay: 0.1\n")   # of its own; weight_decay: a run parameter, untaken
    monkeypatch.setattr("papermill.execute_notebook", lambda *a, **k: pytest.fail("a run started"))
    assert sweep.main([str(tmp / "wd.yaml"), str(tmp / "ok.yaml"), *args, "-p", "lr", "0.1"]) == 1   # and -p lr
    failed = capsys.readouterr().err.splitlines()
    assert len(failed) == 2 and not out.exists()
    nb = tmp / "tiny.ipynb"
    assert failed[0].endswith(f"wd.yaml: ConfigError: parameter 'weight_decay', 'lr' is not taken by notebook {nb} "
                              "(its parameters cell does not set it; papermill would only warn and the run would "
                              "ignore it): remove it from the params file and -p, or give a notebook that takes it "
                              "with --notebook.")
    assert failed[1].endswith(f"ok.yaml: ConfigError: parameter 'lr' is not taken by notebook {nb} (its parameters "
                              "cell does not set it; papermill would only warn and the run would ignore it): remove "
                              "it from the params file and -p, or give a notebook that takes it with --notebook.")


@pytest.mark.slow  # executes a notebook
def test_a_notebook_without_a_complete_metrics_json_is_a_failure(setup, capsys):
    tmp, out, args = setup
    (tmp / "silent.yaml").write_text("dataset: cifar100\nteacher: resnet32x4\nstudent: ShuffleV2\nmethod: kd\n")
    assert sweep.main([str(tmp / "silent.yaml"), *args]) == 1
    captured = capsys.readouterr()
    assert "silent.yaml: the notebook finished without a complete metrics.json" in captured.err
    assert "0 done, 0 skipped, 1 failed" in captured.out


def test_an_interrupted_run_is_resumed(setup, capsys):
    tmp, out, args = setup
    run = out / "cifar100" / "resnet32x4-ShuffleV1-dkd-M1-seed1"
    run.mkdir(parents=True)
    (run / "checkpoint.pth").write_bytes(b"")
    assert sweep.main([str(tmp / "ok.yaml"), "--dry-run", *args]) == 0
    assert capsys.readouterr().out.startswith(f"to run (resumes) baseline {run.name}")


def test_parse_overrides():
    assert sweep.parse_overrides([("seed", "1"), ("M", "[1]"), ("lr_decay_stages", "[1, 2]"),
                                  ("figures", "false"), ("device", "cpu")]) == {
        "seed": 1, "M": "[1]", "lr_decay_stages": [1, 2], "figures": False, "device": "cpu"}


@pytest.mark.slow  # starts job processes that execute notebooks
def test_submitit_local_executor_runs_and_lists_failed_jobs_with_their_logs(setup, capsys):
    """--executor local: the cluster path (submitit jobs) with local processes, one at a time (two at once would
    first measure both runs' memory, which test_parallel_failure_overrides_skip_force checks)."""
    tmp, out, args = setup
    logs = tmp / "logs"
    code = sweep.main([str(tmp / "ok.yaml"), str(tmp / "fail.yaml"), "--executor", "local", "--jobs", "1",
                       "--gpus-per-job", "0", "--log-dir", str(logs), *args])
    assert code == 1
    captured = capsys.readouterr()
    assert captured.out.count("submitted 1 job(s) to local") == 2 and "1 done, 0 skipped, 1 failed" in captured.out
    assert "memory:" not in captured.out
    failed = [line for line in captured.err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and f"{tmp / 'fail.yaml'}: RuntimeError: asked to fail" in failed[0]
    log = Path(failed[0].rsplit("(log: ", 1)[1].rstrip(")"))
    assert log.is_file() and log.parent.parent == logs
    run = out / "cifar100" / "resnet32x4-ShuffleV1-dkd-M1-seed1"
    assert load_metrics(run / "metrics.json")["params"]["epochs"] == 2 and (run / "notebook.ipynb").is_file()


def test_a_requeued_job_resumes_its_run():
    """A preempted or timed-out job is submitted again with the same run; --force's setting aside is not repeated."""
    job = {"file": "a.yaml", "complete": True, "out": "x/notebook.ipynb"}
    again = sweep.RunJob().checkpoint(job, "python3")
    assert again.function.__class__ is sweep.RunJob and again.args == ({**job, "complete": False}, "python3")


def test_every_shipped_params_file_is_taken_by_its_notebook(monkeypatch):
    """Each key of params/ and examples/ reaches a notebook that sets it (the logit-family and LS files once lost
    loss_params and logit_standardization in cifar100.ipynb; a folder file its seed in your_data.ipynb)."""
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(repo / "examples"))      # examples/l2.yaml imports my_losses from there
    files = sorted((repo / "params").rglob("*.yaml")) + [repo / "examples" / "l2.yaml"]
    notebooks = {Path(sweep.plan(path, {"data_dir": "data"})["notebook"]).name for path in files}
    assert len(files) > 40 and notebooks == {"cifar100.ipynb", "cub200.ipynb", "imagenet.ipynb", "your_data.ipynb"}
