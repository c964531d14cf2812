"""Ctrl-C during `python -m sddlib` (issue 31): one line naming the epoch whose checkpoint is kept and saying that the
same command resumes the run, exit status 130, no traceback; the same command then resumes from that epoch."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fake_datasets import write_tiny_folder
from sddlib import experiment
from sddlib.models import create_model
from sddlib.training import CtrlC

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 1000  # far more than the test waits for: the run is always interrupted, never complete


def interrupted(command, folder: Path, ready) -> tuple[int, str, str]:
    """Start `command`, send it SIGINT (Ctrl-C) once `ready()`, and return its exit status, stdout and stderr."""
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(out, "w") as stdout, open(err, "w") as stderr:
        # Ctrl-C as a terminal gives it, even where this test runs with SIGINT ignored (started with `... &`)
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=folder,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 300
        while not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it was interrupted: {err.read_text()[-2000:]}"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    return proc.returncode, out.read_text(), err.read_text()


def kept_epoch(stderr: str, run: Path) -> int:
    last = stderr.strip().splitlines()[-1]
    found = re.fullmatch(rf"interrupted after epoch (\d+)/{EPOCHS} of {re.escape(run.name)}; its checkpoint "
                         rf"{re.escape(str(run / 'checkpoint.pth'))} is kept and the same command resumes the run "
                         r"from it\.", last)
    assert found, stderr[-3000:]
    return int(found.group(1))


@pytest.mark.slow  # two training processes, each a fresh interpreter
def test_ctrl_c_names_the_kept_epoch_and_the_same_command_resumes(tmp_path):
    data = write_tiny_folder(tmp_path / "pets")
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": create_model("resnet8", num_classes=2).state_dict()}, teacher)
    params = dict(dataset="folder", data_dir=str(data), image_size=32, teacher="resnet8", student="resnet8",
                  teacher_ckpt=str(teacher), epochs=EPOCHS, batch_size=16, num_workers=0, device="cpu",
                  progress=False, figures=False, output_dir=str(tmp_path / "outputs"))
    (tmp_path / "run.yaml").write_text(json.dumps(params))
    command = [sys.executable, "-m", "sddlib", "-f", str(tmp_path / "run.yaml")]
    run = experiment.run_dir(params)
    checkpoint = run / "checkpoint.pth"

    code, _, stderr = interrupted(command, tmp_path, checkpoint.is_file)
    assert code == 130 and "Traceback" not in stderr, stderr[-3000:]
    first = kept_epoch(stderr, run)
    assert first >= 1 and torch.load(checkpoint, weights_only=False)["epoch"] == first

    saved_at = checkpoint.stat().st_mtime_ns  # the rerun: interrupted once it has kept an epoch of its own
    code, stdout, stderr = interrupted(command, tmp_path, lambda: checkpoint.stat().st_mtime_ns != saved_at)
    assert code == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert f"resuming {run.name} after epoch {first}/{EPOCHS}" in stdout
    assert kept_epoch(stderr, run) > first
    assert not (run / "metrics.json").exists()


def test_ctrl_c_during_a_fit_is_held_to_the_end_of_the_batch_and_a_second_one_stops_at_once():
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever started pytest
    try:
        ctrl_c = CtrlC()
        ctrl_c.before_fit()
        try:
            os.kill(os.getpid(), signal.SIGINT)      # lands mid-batch: noted, nothing raised where it landed...
            time.sleep(0.05)
            assert ctrl_c.pressed
            with pytest.raises(KeyboardInterrupt):    # ... but at the batch's (or the epoch's writing's) end
                ctrl_c.after_batch()
            with pytest.raises(KeyboardInterrupt):    # a second Ctrl-C does not wait
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
        finally:
            ctrl_c.restore()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        CtrlC().after_epoch()                         # not pressed: the fit goes on
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a process told to ignore Ctrl-C keeps ignoring it
        ignoring = CtrlC()
        ignoring.before_fit()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        ignoring.restore()
    finally:
        signal.signal(signal.SIGINT, before)
