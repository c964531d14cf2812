"""One run on several processes (torchrun, gloo on the CPU): each process's share of the data, the same first
step as one process, identical weights on every rank, each test image counted once, rank 0 alone writing,
two "nodes" over a localhost rendezvous, and a notebook launching torchrun itself."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from fastai.callback.core import Callback, CancelFitException
from fastai.data.load import DataLoader

from forked import run_children
from sddlib import distributed, experiment, run_pipeline
from sddlib.config import ConfigError, RunConfig
from sddlib.data import digit_mosaic
from sddlib.distill import DistillationCallback
from sddlib.distributed import Shard, ShardedDL
from sddlib.models import create_model
from sddlib.per_image import load_test_predictions
from sddlib.training import build_learner

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
RUN = dict(dataset="digit_mosaic", teacher="resnet8", student="resnet8", method="dkd", M="[1,2]", epochs=2,
           subset=64, batch_size=16, lr_decay_stages=[1], warmup_epochs=1, progress=False, device="cpu")


def env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- each process's share of the data (no processes needed: a Shard names its rank) -------------------------
def batches_of(dl):
    return [[int(i) for i in b] for b in dl]


@pytest.mark.parametrize("n, bs, drop_last", [(37, 8, False), (40, 8, False), (37, 8, True), (3, 4, False)])
def test_training_shards_split_every_global_batch_evenly(n, bs, drop_last):
    whole = DataLoader(list(range(n)), bs=bs, shuffle=True, drop_last=drop_last)
    whole.rng.seed(5)
    parts = [ShardedDL(whole, Shard(r, 2, even=True)) for r in range(2)]
    expected = batches_of(whole)
    got = [batches_of(p) for p in parts]
    assert len(got[0]) == len(got[1]) == len(expected) == len(parts[0]) == len(whole)  # same steps per epoch
    for step, batch in enumerate(expected):
        if len(batch) % 2 == 0:   # each process takes its half of the batch one process would take
            assert got[0][step] + got[1][step] == batch
        else:                     # the odd last batch is padded with the epoch's first image (DistributedSampler)
            assert got[0][step] + got[1][step] == batch + [expected[0][0]]
            assert len(got[0][step]) == len(got[1][step])


@pytest.mark.parametrize("n, bs", [(37, 8), (3, 8), (16, 8)])
def test_evaluation_shards_count_every_image_once(n, bs):
    whole = DataLoader(list(range(n)), bs=bs)
    parts = [ShardedDL(whole, Shard(r, 2, even=False)) for r in range(2)]
    seen = sorted(i for p in parts for b in batches_of(p) for i in b)
    assert seen == list(range(n))
    assert [len(p) for p in parts] == [len(batches_of(p)) for p in parts]


def test_device_loader_shards_are_the_single_process_batches(tmp_path):
    """The device pipeline draws crops for the global batch and cuts it: two halves = one process's batch."""
    whole = digit_mosaic(tmp_path, bs=16, n_train=40, n_test=30, seed=3, device="cpu", pipeline="device")
    for dl, even in ((whole.train, True), (whole.valid, False)):
        state = dl.rng.getstate()
        expected = list(dl)
        parts = []
        for r in range(2):
            part = dl.new(shard=Shard(r, 2, even))
            part.rng.setstate(state)
            parts.append(list(part))
        assert len(parts[0]) == len(parts[1]) == len(expected) == len(part)
        for (x0, y0), (x1, y1), (x, y) in zip(*parts, expected):
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_a_batch_that_does_not_split_is_one_sentence():
    assert distributed.per_rank_batch(512, 8) == 64
    with pytest.raises(ConfigError, match=r"^batch_size=100 does not split evenly over 8 processes; .* multiple of 8 "
                                          r"\(e\.g\. 96\)\.$"):
        distributed.per_rank_batch(100, 8)
    with pytest.raises(ConfigError, match="batch_size=7 does not split evenly over 2 processes"):
        distributed.launch({**RUN, "batch_size": 7}, nproc=2)   # refused before any process starts


def test_one_process_is_untouched():
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    with distributed.process_group("auto") as device:
        assert device == "auto"
    assert distributed.run_on_main(lambda x: x + 1, 1) == 2


@pytest.fixture(scope="module")
def mosaics(mosaic_dir):
    """The digit mosaics, generated once for the whole test run (tests/conftest.py)."""
    return mosaic_dir


# --- the first step on 2 processes and on 1 ----------------------------------------------------------
class Tiny(nn.Module):  # no BatchNorm: per-process batch statistics would differ from one process's
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward_features(self, x):
        return torch.relu(self.conv(x))

    def forward_head(self, f):
        return self.fc(f.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.fc


class FirstStep(Callback):
    """Saves the gradients of the first step, then ends the fit."""
    order = 99  # after DDP has averaged the gradients and the clipping

    def __init__(self, model, folder):
        self.model_, self.folder = model, folder

    def after_backward(self):
        grads = {n: p.grad.clone() for n, p in self.model_.named_parameters()}
        torch.save({"grads": grads, "steps": len(self.dls.train)},
                   f"{self.folder}/step-{distributed.world_size()}-{distributed.rank()}.pt")
        raise CancelFitException


def first_step(folder, data_dir):
    """SD-DKD + CE on the first global batch of 16 mosaics, through the real Learner (DDP when in a group)."""
    params = dict(dataset="digit_mosaic", subset=40, batch_size=16, device="cpu", progress=False, figures=False,
                  data_dir=str(data_dir), method="dkd", M="[1,2,4]", warmup_epochs=0)
    with distributed.process_group("cpu"):
        cfg = RunConfig.from_params(params)
        torch.manual_seed(0)
        teacher, model = Tiny(), Tiny()
        dls = run_pipeline._dataloaders(cfg, torch.device("cpu"))
        distill = DistillationCallback(teacher, "dkd", (1, 2, 4), warmup_epochs=0)
        build_learner(dls, model, cfg, cbs=[distill, FirstStep(model, folder)]).fit(1)


def first_step_as_rank(rank, port, folder, data_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    first_step(folder, data_dir)


@pytest.mark.slow  # starts 2 processes
def test_a_global_batch_on_two_processes_takes_the_single_process_step(tmp_path, mosaics):
    """Two ranks of a gloo group (processes forked after sddlib's imports, tests/forked.py; torchrun itself is
    the other tests' launcher) and this process alone."""
    first_step(tmp_path, mosaics)
    port = free_port()
    ranks = run_children(first_step_as_rank, [(r, port, tmp_path, mosaics) for r in (0, 1)])
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].stdout[-3000:] + ranks[1].stdout[-3000:]
    single, *ranks = (torch.load(tmp_path / f"step-{w}-{r}.pt") for w, r in ((1, 0), (2, 0), (2, 1)))
    for rank in ranks:
        assert rank["steps"] == single["steps"] == 3          # the same epoch: 40 images, global batch 16
        for name, grad in single["grads"].items():            # SD-DKD + CE over 16 images, split 8 + 8
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6)  # float sums in another order


# --- a whole run on 2 processes -----------------------------------------------------------------------------
# torchrun runs the CLI; each rank also saves the weights it holds after the fit, and with a third argument
# "kill" rank 0 SIGKILLs itself right after the first epoch's checkpoint (test-side patches only).
CLI_DUMPING_WEIGHTS = r"""
import os, signal, sys, torch
from sddlib import __main__ as cli, distributed, run_pipeline, training
if sys.argv[2] == "kill":
    after_epoch = training.RunRecorder.after_epoch
    def after_epoch_then_die(self):
        after_epoch(self)
        if distributed.is_main():
            os.kill(os.getpid(), signal.SIGKILL)
    training.RunRecorder.after_epoch = after_epoch_then_die
fit = run_pipeline.fit_resumable
def fit_and_dump(learn, *args, **kwargs):
    recorder = fit(learn, *args, **kwargs)
    torch.save(learn.model.state_dict(), f"{sys.argv[1]}/rank{distributed.rank()}.pt")
    return recorder
run_pipeline.fit_resumable = fit_and_dump
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.manual_seed(1)
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, path)
    return path


def params_file(folder: Path, **params) -> Path:
    path = folder / "run.yaml"
    path.write_text(json.dumps(params))   # JSON is YAML
    return path


@pytest.mark.slow  # trains on 2 processes
def test_two_processes_train_one_run(tmp_path, teacher_file, mosaics):
    """Interrupted after epoch 1 and run again: identical weights on both ranks, the accuracy of one process
    evaluating them, exactly one set of outputs."""
    data, out = mosaics, tmp_path / "outputs"
    cfg_file = params_file(tmp_path, **RUN, teacher_ckpt=str(teacher_file), data_dir=str(data), output_dir=str(out))
    script = tmp_path / "cli.py"
    script.write_text(CLI_DUMPING_WEIGHTS)
    launch = [*TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)]
    run = experiment.run_dir({**RUN, "output_dir": str(out)})
    killed = subprocess.run([*launch, "kill", "-f", str(cfg_file)], env=env(), capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode != 0 and (run / "checkpoint.pth").is_file() and not (run / "metrics.json").exists()
    done = subprocess.run([*launch, "run", "-f", str(cfg_file)], env=env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {run.name} after epoch 1/2" in done.stdout   # both ranks continue from rank 0's checkpoint

    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # BN buffers too
    saved = torch.load(run / "student.pth")["model"]
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)

    # validation over 2 processes = one process evaluating those weights on the whole test set
    metrics = experiment.load_metrics(run / "metrics.json")
    assert metrics["distributed"] == {"world_size": 2, "per_rank_batch": 8, "sync_bn": False, "bn_batch": 8,
                                      "backend": "gloo"}
    assert metrics["departures"]["bn_batch"] == [8, 64]   # BatchNorm over each process's 8 images, not the 64
    student = create_model("resnet8", num_classes=10)
    student.load_state_dict(saved)
    dls = digit_mosaic(data, bs=16, subset=64, device="cpu")
    top1, top5 = run_pipeline.evaluate(student, dls.valid, "cpu")
    assert metrics["last_top1"] == pytest.approx(top1, abs=1e-4)
    assert metrics["last_top5"] == pytest.approx(top5, abs=1e-4)
    with torch.no_grad():                 # each test image's top-1, the ranks' parts put back in the loader's order
        alone = torch.cat([student.eval()(x).argmax(1) for x, _ in dls.valid]).numpy()
    recorded = load_test_predictions(run)
    assert (recorded["top1"] == alone).all() and 100 * recorded["correct"].mean() == pytest.approx(top1, abs=1e-4)
    teacher = create_model("resnet8", num_classes=10)
    teacher.load_state_dict(torch.load(teacher_file)["model"])
    assert metrics["teacher_top1"] == pytest.approx(run_pipeline.evaluate(teacher, dls.valid, "cpu")[0], abs=1e-4)

    # exactly one set of outputs and one log
    assert sorted(p.name for p in run.iterdir()) == [".lock", "figures", "log.txt", "metrics.json", "student.pth",
                                                     "student_best.pth", "test_predictions.npz"]
    assert len(list((run / "figures").glob("*.png"))) == len(metrics["figures"])
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["2/2"]


@pytest.mark.slow  # trains a teacher and a student on 2 "nodes"
def test_two_nodes_over_a_localhost_rendezvous(tmp_path, mosaics):
    """The README's multi-node command with --nnodes 2, one process per node; the teacher is trained by both
    nodes together and cached once. The data goes through per-image transforms (fastai DataLoaders, `ShardedDL`)."""
    out = tmp_path / "outputs"
    cfg_file = params_file(tmp_path, **{**RUN, "epochs": 1, "lr_decay_stages": None}, teacher_epochs=1,
                           pipeline="workers", num_workers=0, data_dir=str(mosaics), output_dir=str(out))
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
                               "--rdzv_endpoint", endpoint, "-m", "sddlib", "-f", str(cfg_file)],
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in (0, 1)]
    logs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][1][-2000:] + logs[1][1][-2000:]
    metrics = experiment.load_metrics(experiment.run_dir({**RUN, "output_dir": str(out), "pipeline": "workers"})
                                      / "metrics.json")
    assert metrics["distributed"]["world_size"] == 2 and metrics["teacher_source"]["source"] == "trained here"
    assert (out / "teachers" / "digit_mosaic" / "resnet8.pth").is_file()
    teacher_run = experiment.load_metrics(out / "digit_mosaic" / "resnet8-teacher-seed0" / "metrics.json")
    assert teacher_run["distributed"]["world_size"] == 2
    assert "epoch 1/1" in logs[0][0] and "epoch" not in logs[1][0]   # node 1 runs rank 1: silent


@pytest.mark.slow  # executes a notebook that starts 2 training processes
def test_a_notebook_runs_on_two_processes(tmp_path, tiny_cifar100):
    import papermill as pm

    data = tiny_cifar100                          # 32 training and 16 test images
    teacher_file = tmp_path / "teacher.pth"
    torch.save({"model": create_model("resnet8", num_classes=100).state_dict()}, teacher_file)
    output = tmp_path / "cifar100.executed.ipynb"
    pm.execute_notebook(str(REPO / "notebooks" / "cifar100.ipynb"), str(output), cwd=str(REPO), kernel_name="python3",
                        progress_bar=False, parameters=dict(
                            nproc=2, teacher="resnet8", student="resnet8", lr=0.05, epochs=1, batch_size=8,
                            lr_decay_stages=[1], subset=32, device="cpu", progress=False,
                            teacher_ckpt=str(teacher_file), data_dir=str(data), output_dir=str(tmp_path / "outputs")))
    cells = json.loads(output.read_text())["cells"]
    logged = "".join(o.get("text", "") if isinstance(o.get("text"), str) else "".join(o.get("text", []))
                     for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert "torch.distributed.run --standalone --nproc_per_node 2" in logged and "epoch 1/1" in logged
    run = next((tmp_path / "outputs" / "cifar100").glob("*/metrics.json"))
    metrics = experiment.load_metrics(run)
    assert metrics["distributed"]["world_size"] == 2 and metrics["variant"] == "sd_dkd"
    assert metrics["distributed"]["bn_batch"] == 4 and metrics["departures"]["bn_batch"] == [4, 64]
    assert (run.parent / "figures").is_dir()


@pytest.mark.slow  # starts 2 processes
def test_a_launched_run_that_fails_says_why(tmp_path):
    with pytest.raises(RuntimeError, match=r"the run on 2 processes failed \(exit status 1\): error: teacher "
                                           r"checkpoint .*missing.pth does not exist;"):
        distributed.launch({**RUN, "teacher_ckpt": str(tmp_path / "missing.pth"), "output_dir": str(tmp_path)}, 2)
    assert not (tmp_path / "digit_mosaic").exists()
