"""Never lose or fake a run: SIGKILLed runs resume to identical results, other configurations are never
continued silently, non-finite losses fail the run, one process per run folder, no pickled code runs."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forked import run_children
from sddlib import checkpoints, distill, experiment, locks
from sddlib.checkpoints import CheckpointError
from sddlib.locks import RunLockedError
from sddlib.models import create_model

REPO = Path(__file__).resolve().parents[1]
# 4 training batches per epoch, a warm-up and an LR step inside the 4 epochs: every piece of state matters
RUN = dict(dataset="digit_mosaic", teacher="resnet8", student="resnet8", method="dkd", M="[1,2]", epochs=4,
           subset=64, batch_size=16, lr_decay_stages=[2], warmup_epochs=2, progress=False, figures=False,
           device="cpu")

# Each run is a child process that the test may SIGKILL (forked after sddlib's imports: tests/forked.py).
def _run_in_child(params, kill):
    """The child: experiment.run(params); a kill point makes it SIGKILL itself there (test-side patches only)."""
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    if kill and kill[0] == "batch":          # in the middle of an epoch, after the loss of batch n
        original, calls = distill.DistillationCallback.after_loss, [0]

        def after_loss(self):
            original(self)
            calls[0] += self.training
            if calls[0] == kill[1]:
                die()
        distill.DistillationCallback.after_loss = after_loss
    if kill and kill[0] == "write":          # the n-th write of a file: written and synced, not yet renamed
        original_replace, calls = os.replace, [0]

        def replace(src, dst):
            if Path(dst).name == kill[1]:
                calls[0] += 1
                if calls[0] == kill[2]:
                    die()
            original_replace(src, dst)
        os.replace = replace
    experiment.run(params)


def child(params, kill=None):
    """Run `params` in a child process: its exit code (-SIGKILL when killed) and everything it printed."""
    return run_children(_run_in_child, [(params, kill)])[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mosaic_dir):
    root = tmp_path_factory.mktemp("resume")
    teacher = root / "teacher.pth"
    torch.manual_seed(1)
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, teacher)
    base = {**RUN, "teacher_ckpt": str(teacher), "data_dir": str(mosaic_dir)}
    reference = child({**base, "output_dir": str(root / "reference")})
    assert reference.returncode == 0, reference.stderr[-2000:]
    root.joinpath("reference.log").write_text(reference.stdout)
    return root, base, experiment.run_dir({**base, "output_dir": str(root / "reference")})


@pytest.mark.slow  # trains in subprocesses
def test_headless_runs_print_one_line_per_epoch(setup):
    root, _, reference = setup
    lines = root.joinpath("reference.log").read_text().splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/4", "2/4", "3/4", "4/4"]
    assert not any(line.startswith("[") for line in lines)      # fastai's raw list is not printed too
    assert lines[-1].startswith(reference.name + ": last top-1")              # the run's one summary line


def same_result(run, reference):
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run, reference))
    assert got["status"] == "complete" and len(got["history"]) == RUN["epochs"]
    for a, b in zip(got["history"], want["history"]):
        assert a == b                                          # losses, accuracies, lr, region shares: exact
    assert (got["best_top1"], got["best_epoch"]) == (want["best_top1"], want["best_epoch"])
    for name in ("student.pth", "student_best.pth"):
        a, b = (torch.load(d / name, weights_only=True)["model"] for d in (run, reference))
        assert all(torch.equal(a[k], b[k]) for k in b), name
    assert not (run / experiment.RESUME_FILE).exists()


@pytest.mark.slow  # trains in subprocesses
@pytest.mark.parametrize("kills", [
    # mid-epoch 2; then, resumed after epoch 1, while writing the final metrics.json
    [("batch", 6), ("write", "metrics.json", 1)],
    # while writing epoch 2's checkpoint (written and synced, not renamed); then, resumed, mid-epoch 4
    [("write", "checkpoint.pth", 2), ("batch", 10)],
], ids=["mid-epoch-then-metrics-write", "checkpoint-write-then-mid-epoch"])
def test_a_killed_run_resumes_to_identical_results(setup, kills, request):
    root, base, reference = setup
    params = {**base, "output_dir": str(root / request.node.callspec.id)}
    run = experiment.run_dir(params)
    for kill in kills:
        killed = child(params, list(kill))
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert experiment.load_metrics(run / "metrics.json") is None      # never complete when killed
        if (run / experiment.RESUME_FILE).exists():                       # intact, readable: the previous epoch
            checkpoints.read_checkpoint(run / experiment.RESUME_FILE, "resume checkpoint")
    resumed = child(params)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming " + run.name + " after epoch" in resumed.stdout
    same_result(run, reference)


@pytest.mark.slow  # trains in subprocesses
def test_another_configuration_is_never_resumed_silently(setup):
    root, base, _ = setup
    params = {**base, "output_dir": str(root / "other")}
    assert child(params, ["batch", 6]).returncode == -signal.SIGKILL
    with pytest.raises(CheckpointError, match=r"resume checkpoint .*checkpoint.pth belongs to another configuration "
                                              r"\(lr 0.05 there, 0.1 here\); run with force=True to start over"):
        experiment.run({**params, "lr": 0.1})
    forced = experiment.run({**params, "lr": 0.1}, force=True)
    assert forced["status"] == "complete" and forced["params"]["lr"] == 0.1
    with pytest.raises(experiment.ConfigError, match=r"holds a complete run of another configuration \(lr 0.1 there"):
        experiment.run(params)                                 # a complete run of another lr is not returned either


@pytest.mark.slow  # trains in subprocesses
def test_a_non_finite_loss_fails_the_run_at_once(setup):
    root, base, _ = setup
    params = {**base, "output_dir": str(root / "diverge"), "lr": 1e30, "clip_grad_norm": 0, "warmup_epochs": 0}
    with pytest.raises(experiment.RunFailedError,
                       match=r"epoch 1, batch [2-4] of 4: the (cross-entropy|distillation \(sd_dkd\)) loss is "
                             r"(nan|inf); the run stopped and is recorded as failed"):
        experiment.run(params)
    run = experiment.run_dir(params)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "epoch 1, batch" in metrics["reason"] and metrics["history"] == []
    assert experiment.load_metrics(run / "metrics.json") is None
    from sddlib import report
    with pytest.warns(report.SkippedRunWarning, match="status 'failed'"):
        assert report.load_runs(root / "diverge").empty            # never reaches a table


@pytest.mark.slow  # trains in subprocesses
def test_one_process_per_run_folder(setup, tmp_path):
    root, base, _ = setup
    params = {**base, "output_dir": str(tmp_path)}
    with locks.run_lock(experiment.run_dir(params)):
        with pytest.raises(RunLockedError, match=r"is being trained by process \d+ on \S+; wait for it to finish"):
            experiment.run(params)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sddlib.locks import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)",
                               str(tmp_path / "lock")], env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunLockedError):
        with locks.run_lock(tmp_path / "lock"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locks.run_lock(tmp_path / "lock"):                    # a crash releases the lock
        pass


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/sddlib-pickle-ran-code")


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    MARKER.unlink(missing_ok=True)
    evil = tmp_path / "evil.pth"
    torch.save({"model": RunsCode()}, evil)
    for role in ("teacher", "baseline student", "resume checkpoint"):
        with pytest.raises(CheckpointError, match=rf"^{role} checkpoint .*evil.pth contains pickled Python objects "
                                                  r"that could run code, and only plain tensors"):
            checkpoints.load_checkpoint(create_model("resnet8", num_classes=10), evil, role=role)
    assert not MARKER.exists()
