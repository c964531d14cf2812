"""sddlib.sweep on a tiny throwaway notebook (not the dataset notebooks): skip, failures, --jobs, -p, --dry-run."""
import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from sddlib import sweep, sweep_status
from sddlib.experiment import load_metrics
from sddlib.locks import run_lock
from sddlib.plan import build_plan

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
if p["student"] == "resnet8x4":   # a run still training: holds its run lock until data_dir/go exists
    import time
    from sddlib.locks import run_lock
    with run_lock(out):
        (out / "log.txt").write_text("epoch 1/2 train_loss=1.0 valid_loss=1.0 top1=10.0 lr=0.05\\n")
        for _ in range(1200):
            if (pathlib.Path(p["data_dir"]) / "go").exists():
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the gate never opened")
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
    assert failed[0].endswith(f"wd.yaml: ConfigError: parameters 'weight_decay', 'lr' are not taken by notebook {nb} "
                              "(its parameters cell does not set them; papermill would only warn and the run would "
                              "ignore them): remove them from the params file and -p, or give a notebook that takes "
                              "them with --notebook.")
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


def test_per_gpu_puts_k_runs_in_each_job_in_plan_order():
    """--per-gpu K with an executor: a job array of ceil(N / K) jobs, each holding K runs (the last fewer)."""
    assert sweep.per_job_groups(list("abcdefg"), 3) == [list("abc"), list("def"), ["g"]]
    assert sweep.per_job_groups(list("ab"), 4) == [["a", "b"]]
    assert [len(group) for group in sweep.per_job_groups(list(range(120)), 8)] == [8] * 15


def _more_files(tmp):
    """Two more runs of the stand-in notebook (other students of the same teacher), as params files."""
    for student in ("MobileNetV2", "resnet8x4"):
        (tmp / f"{student}.yaml").write_text(f"dataset: cifar100\nteacher: resnet32x4\nstudent: {student}\n"
                                             "method: kd\n")
    return [str(tmp / name) for name in ("ok.yaml", "MobileNetV2.yaml", "resnet8x4.yaml")]


@pytest.mark.slow  # executes notebooks
def test_per_gpu_places_runs_over_the_devices_and_refuses_what_does_not_fit(setup, capsys, monkeypatch):
    """Runs placed over a given list of GPUs, each recording its device; K runs that do not fit one GPU's free
    memory are refused in one sentence before any starts. The measurement is the one part stood in for (this
    machine has no GPU): every run takes 3 GiB, cuda:0 has 10 GiB free and cuda:1 4 GiB."""
    tmp, out, args = setup
    files = _more_files(tmp)
    (tmp / "d").mkdir()
    (tmp / "d" / "go").touch()   # resnet8x4's stand-in run does not wait
    free = {"cuda:0": 10 * 2**30, "cuda:1": 4 * 2**30}
    monkeypatch.setattr("sddlib.run_memory._measure", lambda configs: {c.name: 3 * 2**30 for c in configs})
    monkeypatch.setattr("sddlib.run_memory._free_bytes", lambda device: free[str(device)])
    devices = ["--devices", "cuda:0", "cuda:1"]
    assert sweep.main([*files, "--per-gpu", "2", *devices, *args]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["FAILED  nothing ran: --per-gpu 2 needs about 2 x 3.0 GiB = 6.0 GiB (resnet32x4-ShuffleV1-dkd-M1-"
                   "seed1, measured) but cuda:1 has 4.0 GiB free; use --per-gpu 1 or fewer."] and not out.exists()
    assert sweep.main([*files, "--per-gpu", "1", *devices, *args]) == 0
    text = capsys.readouterr().out
    assert "memory: 1 runs x 3.0 GiB (largest run, resnet32x4-ShuffleV1-dkd-M1-seed1, measured) on each of 2 " \
           "devices, the least free 4.0 GiB" in text and "3 done, 0 skipped, 0 failed" in text
    used = [load_metrics(folder / "metrics.json")["params"]["device"] for folder in (out / "cifar100").iterdir()]
    assert len(used) == 3 and set(used) == {"cuda:0", "cuda:1"}   # each on one GPU, both GPUs busy


def _complete(folder, **values):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"status": "complete", **values}))


def test_status_reads_each_run_from_its_folder(setup, capsys):
    """--status: complete (metrics.json), failed (its sentence), running (its lock's holder, the log's last epoch),
    waiting (nothing there yet; or its job queued), a job that ended without a word failed, and the totals."""
    tmp, out, args = setup
    files = _more_files(tmp)
    plan = build_plan([*files, str(tmp / "fail.yaml")], sweep.parse_overrides(zip(args[3::3], args[4::3])))
    ok, mobile, r8, vgg = (Path(run.folder) for run in plan.runs)
    _complete(ok)
    vgg.mkdir(parents=True)
    (vgg / "failure.txt").write_text("RuntimeError: asked to fail (see notebook.ipynb)\n")
    r8.mkdir(parents=True)
    (r8 / "log.txt").write_text("starting\nepoch 2/240 train_loss=2.1 valid_loss=2.0 top1=30.1 lr=0.05\n"
                                "epoch 3/240 train_loss=1.9 valid_loss=1.8 top1=35.2 lr=0.05\n")
    sweep_status.record_sweep(out, plan, [], "local", tmp / "logs")
    with run_lock(r8):
        assert sweep.main(["--status", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"complete  baseline {ok.name}",
                     f"waiting   baseline {mobile.name}",
                     f"running   baseline {r8.name}: epoch 3/240, process {os.getpid()} on {socket.gethostname()}",
                     f"failed    baseline {vgg.name}: RuntimeError: asked to fail (see notebook.ipynb)",
                     "status: 4 runs: 1 complete, 1 running, 1 failed, 1 waiting"]
    # a later sweep's record of the same run: its job ended (no such process) and left nothing: failed
    sweep_status.record_sweep(out, plan, [{"job_id": "999999999", "runs": [str(mobile)]}], "local", tmp / "logs")
    assert sweep.main(["--status", str(out)]) == 0
    assert f"failed    baseline {mobile.name}: its job 999999999 ended without a result" in capsys.readouterr().out


def test_a_student_waits_for_its_teacher_run_in_its_job(tmp_path):
    """Detached, a student's job may start before its teacher's ends: it waits while the teacher trains, runs
    once it is complete, and is not run when it failed."""
    teacher = tmp_path / "teacher"
    job = {"run": "student", "after": [str(teacher)], "folder": str(tmp_path / "student")}
    held, done = threading.Event(), threading.Event()

    def train():
        with run_lock(teacher):
            held.set()
            time.sleep(0.5)
            _complete(teacher)
        done.set()

    threading.Thread(target=train).start()
    held.wait()
    assert sweep._teachers_ready(job, poll_s=0.05) is None and done.is_set()
    (teacher / "metrics.json").unlink()
    (teacher / "failure.txt").write_text("RuntimeError: out of memory\n")
    assert sweep._teachers_ready(job, poll_s=0.05) == "student not run: its teacher run teacher failed"


def _wait_for(check, seconds=300):
    end = time.time() + seconds
    while not check():
        assert time.time() < end, "timed out"
        time.sleep(0.5)


@pytest.mark.slow  # starts job processes that execute notebooks
def test_detach_returns_at_once_and_again_submits_what_is_neither_complete_nor_running(setup, capsys):
    """--detach with submitit's local executor and --per-gpu 2 (two runs in one job): the plan and its job ids
    recorded, the sweep returned while a job still trains; --status from the run folders; the same command again
    submits the failed run only."""
    tmp, out, args = setup
    (tmp / "d").mkdir()
    files = [str(tmp / "ok.yaml"), str(tmp / "fail.yaml"), _more_files(tmp)[2]]
    command = [*files, "--executor", "local", "--detach", "--per-gpu", "2", "--gpus-per-job", "0",
               "--log-dir", str(tmp / "logs"), *args]
    assert sweep.main(command) == 0
    r8 = out / "cifar100" / "resnet32x4-resnet8x4-kd-M1-seed1"
    assert not (r8 / "metrics.json").exists()          # returned while that run's job waits for its gate
    assert "detached: 2 job(s) submitted to local for 3 run(s)" in capsys.readouterr().out
    record, = (out / "sweeps").iterdir()
    planned = json.loads((record / "plan.json").read_text())["runs"]
    jobs = json.loads((record / "jobs.json").read_text())
    folders = [run["folder"] for run in planned]       # --per-gpu 2: two runs in the first job, one in the second
    assert [job["runs"] for job in jobs["jobs"]] == [folders[:2], folders[2:]] and len(planned) == 3
    assert all(job["job_id"].isdigit() for job in jobs["jobs"]) and jobs["executor"] == "local"
    ok, vgg = (out / "cifar100" / f"resnet32x4-{s}-M1-seed1" for s in ("ShuffleV1-dkd", "vgg8-kd"))
    _wait_for(lambda: load_metrics(ok / "metrics.json") and (vgg / "failure.txt").is_file() and
              (r8 / "log.txt").is_file())
    _wait_for(lambda: not sweep_status.job_alive({**jobs, **jobs["jobs"][0]}))   # the first job has ended
    assert sweep.main(["--status", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"failed    baseline {vgg.name}: RuntimeError: asked to fail" in text
    assert f"running   baseline {r8.name}: epoch 1/2, process " in text
    assert "status: 3 runs: 1 complete, 1 running, 1 failed, 0 waiting" in text

    assert sweep.main(command) == 0                     # again: only the failed run is submitted
    text = capsys.readouterr().out
    assert f"running  {r8.name}: process " in text and "detached: 1 job(s) submitted to local for 1 run(s)" in text
    again = sorted((out / "sweeps").iterdir())[-1]
    assert [job["runs"] for job in json.loads((again / "jobs.json").read_text())["jobs"]] == [[str(vgg)]]
    (tmp / "d" / "go").touch()
    _wait_for(lambda: load_metrics(r8 / "metrics.json") is not None)
    _wait_for(lambda: not sweep_status.job_alive({**jobs, **json.loads((again / "jobs.json").read_text())["jobs"][0]}))
    assert sweep.main(["--status", str(out)]) == 0
    assert "status: 3 runs: 2 complete, 0 running, 1 failed, 0 waiting" in capsys.readouterr().out
