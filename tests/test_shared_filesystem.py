"""Safe on a filesystem several nodes share (issue 37): run and teacher locks that are leases where flock is refused
or node-local, the published teachers downloaded once however many jobs ask, and a full disk that leaves the
previous file whole and fails the run in one sentence."""
import errno
import fcntl
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time

import pandas as pd
import pytest
import torch

from forked import FORKSERVER, run_children
from sddlib import checkpoints, experiment, locks
from sddlib.checkpoints import CIFAR100_COMPLETE, DiskFullError
from sddlib.config import ConfigError
from sddlib.locks import RunLockedError, run_lock
from sddlib.models import create_model
from sddlib.training import RunFailedError

HOST = socket.gethostname()
RUN = dict(dataset="digit_mosaic", teacher="resnet8", student="resnet8", method="kd", M="[1,2]", epochs=2,
           subset=64, batch_size=16, lr_decay_stages=[1], progress=False, figures=False, device="cpu")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pth"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, path)
    return path


def _no_flock(*args, **kwargs):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))


def _cli_without_flock(params_file, barrier):
    """A child: `python -m sddlib -f params_file` on a filesystem that refuses flock (ENOLCK)."""
    fcntl.flock = _no_flock
    from sddlib.__main__ import main
    barrier.wait()
    sys.exit(main(["-f", str(params_file)]))


@pytest.mark.slow  # two training processes
def test_two_processes_on_one_run_without_flock_one_trains_the_other_says_who(tmp_path, mosaic_dir, teacher):
    params = {**RUN, "data_dir": str(mosaic_dir), "teacher_ckpt": str(teacher), "output_dir": str(tmp_path)}
    (tmp_path / "run.yaml").write_text(json.dumps(params))
    run = experiment.run_dir(params)
    barrier = FORKSERVER.Barrier(2)
    children = run_children(_cli_without_flock, [(tmp_path / "run.yaml", barrier)] * 2, timeout=300)
    assert sorted(c.returncode for c in children) == [0, 2], [c.stdout[-2000:] for c in children]
    trained, refused = sorted(children, key=lambda c: c.returncode)
    for child in children:
        assert f"locks: the filesystem of {run} refuses flock (No locks available)" in child.stdout
    assert trained.stdout.strip().splitlines()[-1].startswith(f"{run.name}: last top-1")
    said = refused.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: {re.escape(str(run))} is being trained by process \d+ on {re.escape(HOST)}; wait "
                        r"for it to finish or give this run another run_name or seed\.", said), said
    assert "Traceback" not in refused.stdout and "last top-1" not in refused.stdout
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert not (run / ".lock.lease").exists()                       # released


def test_a_lease_is_refused_while_its_holder_lives_and_taken_over_when_stale(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(locks.LOCKS_ENV, "lease")
    lease = tmp_path / ".lock.lease"

    def lease_of(host, pid, age, pid_namespace=None):
        lease.write_text(json.dumps({"host": host, "pid": pid, "pid_namespace": pid_namespace,
                                     "heartbeat": time.time() - age, "token": "theirs"}))
    lease_of("node7", 4242, 10)                                     # another node, heartbeat 10 s ago: alive
    with pytest.raises(RunLockedError, match=r"is being trained by process 4242 on node7; wait for it"):
        with run_lock(tmp_path):
            pass
    lease_of("node7", 4242, 3600)                                   # silent for an hour: taken over
    with run_lock(tmp_path):
        assert json.loads(lease.read_text())["pid"] == os.getpid()
    assert capsys.readouterr().out == (f"locks: taking over the lease of {tmp_path} from process 4242 on node7: its "
                                       "last heartbeat was 3600 s ago (a lease expires after 120 s)\n")
    assert not lease.exists()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lease_of(HOST, gone.pid, 1, "pid:[1]")                          # another container of this host: alive
    with pytest.raises(RunLockedError, match=rf"by process {gone.pid} on {re.escape(HOST)};"):
        with run_lock(tmp_path):
            pass
    lease_of(HOST, gone.pid, 1, os.readlink("/proc/self/ns/pid"))   # this host, its process gone: taken over at once
    with run_lock(tmp_path):
        pass
    assert capsys.readouterr().out.endswith(f"from process {gone.pid} on {HOST}: that process no longer exists\n")


def test_a_held_lease_beats_and_says_when_it_was_lost(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(locks.LOCKS_ENV, "lease")
    monkeypatch.setattr(locks, "_BEAT_S", 0.05)
    lease = tmp_path / ".lock.lease"
    with run_lock(tmp_path):
        first = json.loads(lease.read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads(lease.read_text())["heartbeat"] > first   # refreshed while held
        lease.unlink()                                              # what a takeover does to a stalled holder
        time.sleep(0.3)
    assert capsys.readouterr().out == (f"locks: warning: the lease of {tmp_path} was taken over while this process "
                                       "held it (no heartbeat for more than 120 s); another process may now be "
                                       "writing there\n")
    monkeypatch.setenv(locks.LOCKS_ENV, "fcntl")
    with pytest.raises(ConfigError, match=r"^SDDLIB_LOCKS='fcntl' is not a kind of lock; expected 'flock'"):
        with run_lock(tmp_path):
            pass


# --- the published teachers, downloaded once ----------------------------------------------------------------
def _release(folder) -> str:
    """A release in the published layout (cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth), as a file:// URL;
    a few MB of padding make the download last long enough for every process to ask while it runs."""
    archive = folder / "cifar_teachers.tar"
    with tarfile.open(archive, "w") as tar:
        weights = io.BytesIO()
        torch.save({"model": create_model("resnet8", num_classes=100).state_dict()}, weights)
        for name, data in (("cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth", weights.getvalue()),
                           ("cifar_teachers/padding.bin", os.urandom(8 * 2**20))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive.as_uri()


def _fetch(dest, url, kind, barrier):
    os.environ[locks.LOCKS_ENV] = kind
    barrier.wait()
    checkpoints.fetch_cifar100_teachers(dest, url)


@pytest.mark.parametrize("kind", ["flock", "lease"])
def test_concurrent_jobs_download_the_published_teachers_once(tmp_path, kind):
    url, dest = _release(tmp_path), tmp_path / "data"
    root = dest / "cifar_teachers"
    (root / "resnet8_vanilla").mkdir(parents=True)                  # an unpack that never finished: not present
    (root / "resnet8_vanilla" / "ckpt_epoch_240.pth").write_bytes(b"half")
    barrier = FORKSERVER.Barrier(4)
    children = run_children(_fetch, [(dest, url, kind, barrier)] * 4, timeout=120)
    assert [c.returncode for c in children] == [0] * 4, [c.stdout[-2000:] for c in children]
    assert sum(c.stdout.count("downloading the CIFAR-100 teachers") for c in children) == 1
    assert (root / CIFAR100_COMPLETE).read_text() == f"{url}\n"
    checkpoints.load_checkpoint(create_model("resnet8", num_classes=100),
                                checkpoints.cifar100_teacher_path(dest, "resnet8"))
    left = {p.name for p in dest.iterdir()}                         # no download or unpack folder left behind
    assert left == ({"cifar_teachers", ".cifar_teachers.lock"} if kind == "flock" else {"cifar_teachers"})


def test_published_teachers_are_present_only_with_their_marker(tmp_path):
    url, dest = _release(tmp_path), tmp_path / "data"
    checkpoints.save_checkpoint(create_model("resnet8", num_classes=10), checkpoints.cifar100_teacher_path(dest, "x"))
    with pytest.raises(checkpoints.CheckpointError, match=r"could not fetch .* create the empty file .*\.complete"):
        checkpoints.fetch_cifar100_teachers(dest, url + ".missing")  # no marker: not present, so it downloads
    (dest / "cifar_teachers" / CIFAR100_COMPLETE).touch()
    assert checkpoints.fetch_cifar100_teachers(dest, url + ".missing") == dest / "cifar_teachers"  # present


# --- a full disk ------------------------------------------------------------------------------------------
def _full_disk_at(monkeypatch, name: str, nth: int) -> list:
    """The nth write of `name` (a file of the run, written atomically) finds the disk full, in its fsync."""
    writes, fsync = [], os.fsync

    def fsync_or_full(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            writes.append(fd)
            if len(writes) == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)
    monkeypatch.setattr(checkpoints.os, "fsync", fsync_or_full)
    return writes


def test_a_full_disk_keeps_the_previous_file_and_says_where(tmp_path, monkeypatch):
    path = checkpoints.write_json(tmp_path / "metrics.json", {"status": "complete"})
    _full_disk_at(monkeypatch, "metrics.json", 1)
    with pytest.raises(DiskFullError, match=rf"^the disk holding {re.escape(str(tmp_path))} is full \([\d.]+ MiB "
                                            r"free\) and metrics.json could not be written; the previous "
                                            r"metrics.json, if any, is kept whole"):
        checkpoints.write_json(path, {"status": "failed"})
    assert json.loads(path.read_text()) == {"status": "complete"} and list(tmp_path.iterdir()) == [path]


@pytest.mark.trains
def test_a_run_whose_disk_fills_fails_in_one_sentence_and_resumes(tmp_path, monkeypatch, mosaic_dir, teacher):
    params = {**RUN, "data_dir": str(mosaic_dir), "teacher_ckpt": str(teacher), "output_dir": str(tmp_path)}
    run = experiment.run_dir(params)
    sentence = (rf"^{re.escape(run.name)}: the disk holding {re.escape(str(run))} is full \([\d.]+ MiB free\) and "
                r"{0} could not be written; the previous {0}, if any, is kept whole: free space there \(or give "
                r"another output_dir\) and run again, and a run resumes from its last kept epoch\.$")
    _full_disk_at(monkeypatch, "checkpoint.pth", 2)                 # epoch 2's resume checkpoint
    with pytest.raises(RunFailedError, match=sentence.format("checkpoint.pth")):
        experiment.run(params)
    assert torch.load(run / "checkpoint.pth", weights_only=True)["epoch"] == 1   # epoch 1's, whole
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    _full_disk_at(monkeypatch, "metrics.json", 1)                   # space for epoch 2, none for the record
    with pytest.raises(RunFailedError, match=sentence.format("metrics.json")):
        experiment.run(params)
    assert not (run / "metrics.json").exists()
    assert torch.load(run / "checkpoint.pth", weights_only=True)["epoch"] == 2
    monkeypatch.undo()                                              # space freed: the same run is recorded
    metrics = experiment.run(params)
    assert [row["epoch"] for row in metrics["history"]] == [1, 2] and metrics["status"] == "complete"


def test_a_figure_on_a_full_disk_keeps_the_previous_one_whole(tmp_path, monkeypatch):
    """A run's figures are written as its other files are: the PNG and its CSV each whole or not at all."""
    from sddlib.viz.style import csv_path, new_figure, save_figure
    path = tmp_path / "figures" / "fig1_region_map.png"
    fig = new_figure(2, 2)
    save_figure(fig, pd.DataFrame({"region": [1]}), path)
    before = path.read_bytes(), csv_path(path).read_bytes()
    fig.suptitle("the next epoch's")
    _full_disk_at(monkeypatch, path.name, 1)
    with pytest.raises(DiskFullError, match=f"{path.name} could not be written"):
        save_figure(fig, pd.DataFrame({"region": [2]}), path)
    assert (path.read_bytes(), csv_path(path).read_bytes()) == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
