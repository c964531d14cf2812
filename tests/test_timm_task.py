"""The timm task (`sddlib.timm_task`): the same loss and gradients as sddlib's fastai callback, timm's own
LogitDistillationTask for plain KD, a plain PyTorch loop, DDP over gloo and torch.compile."""
import copy
import os
import re
import socket
from pathlib import Path

import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from timm.optim import create_optimizer_v2
from timm.task import LogitDistillationTask
from torch.utils.data import TensorDataset

from forked import run_children
from sddlib.config import RunConfig
from sddlib.distill import CATEGORIES, DistillationCallback
from sddlib.losses import LOSSES, Hyper, register_loss
from sddlib.timm_task import ScaleDecoupledDistillationTask


class Net(nn.Module):
    """A small timm-interface CNN (sddlib's models have this shape); `bn=False` for DDP, where per-process batch
    statistics would differ from one process's."""

    def __init__(self, num_classes=5, width=8, bn=True):
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(width)) if bn else nn.Identity
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), norm(), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, stride=2), norm(), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, fmap):
        return self.fc(fmap.mean((2, 3)))

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def batch(n=16, num_classes=5, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    x[:, 0] += y.view(-1, 1, 1).float() * 0.5
    return x, y


def squared_logits_rows(student, teacher, target, scale=1.0):
    """A loss registered here (not built in): the task must take any registered loss."""
    return scale * (student - teacher).pow(2).mean(1)


register_loss("task_test_squared", squared_logits_rows, hyper={"scale": Hyper(1.0, low=0)}, ce_weight=0.5,
              kd_weight=2.0, warmup_epochs=3)


class CaptureStep(Callback):
    """The first training step's input, starting weights, total loss and gradients (before the optimizer), in
    `seen` (a Callback's own attribute names would fall through to the Learner's)."""
    order = DistillationCallback.order + 1

    def __init__(self):
        self.seen = {}

    def before_batch(self):
        if self.training:
            self.seen.setdefault("state", copy.deepcopy(self.learn.model.state_dict()))

    def after_loss(self):
        if self.training and "loss" not in self.seen:
            self.seen.update(loss=self.learn.loss_grad.detach().clone(), x=self.xb[0].clone(), y=self.yb[0].clone())

    def before_step(self):
        self.seen.setdefault("grads", {n: p.grad.clone() for n, p in self.learn.model.named_parameters()})


CASES = [("kd", "[1,2,4]", {}), ("dkd", "[1,2]", {"warmup_epochs": 4, "beta": 2.0}), ("nkd", "[1]", {}),
         ("task_test_squared", "[1,2,4]", {"scale": 0.5}), ("kd", "[1,2]", {"logit_standardization": True}),
         ("dkd", "[1,2,4]", {"ce_weight": 0.5, "kd_weight": 3.0, "warmup_epochs": 0, "complementary_weight": 3.0})]


@pytest.mark.trains
@pytest.mark.parametrize("method,M,options", CASES)
def test_loss_and_gradients_equal_the_fastai_callback_step(method, M, options):
    """The real DistillationCallback in a Learner, one batch; the task on the same weights, batch and epoch."""
    torch.manual_seed(0)
    teacher, student = Net(), Net()
    start = copy.deepcopy(student)
    x, y = batch()
    dls = DataLoaders(DataLoader(TensorDataset(x, y), bs=16), DataLoader(TensorDataset(x, y), bs=16), device="cpu")
    capture = CaptureStep()
    callback = DistillationCallback(teacher, method, M, **options)
    learn = Learner(dls, student, loss_func=nn.CrossEntropyLoss(), cbs=[callback, capture], lr=1e-3)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
    seen = capture.seen
    start.load_state_dict(seen["state"])
    timm_names = {"ce_weight": "task_loss_weight", "kd_weight": "distill_loss_weight"}
    task = ScaleDecoupledDistillationTask(start, teacher, method, M, verbose=False,
                                          **{timm_names.get(k, k): v for k, v in options.items()}).train()
    task.set_epoch(0)
    out = task(seen["x"], seen["y"])
    out["loss"].backward()
    torch.testing.assert_close(out["loss"].detach(), seen["loss"], rtol=1e-6, atol=1e-7)
    for name, p in start.named_parameters():
        torch.testing.assert_close(p.grad, seen["grads"][name], rtol=1e-5, atol=1e-7)
    scales = [int(s) for s in M.strip("[]").split(",")]
    assert set(out) == {"loss", "output", "task_loss", "kd_loss", *(f"{c}@{s}" for c in CATEGORIES for s in scales)}
    for s in scales:
        assert float(sum(out[f"{c}@{s}"] for c in CATEGORIES)) == pytest.approx(1.0)
    assert torch.equal(out["output"], start(seen["x"]))


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_the_two_models_alone_give_the_recipe_a_run_trains_on(method):
    cfg = RunConfig.from_params({"dataset": "cifar100", "method": method})
    task = ScaleDecoupledDistillationTask(Net(), Net(), method, verbose=False)
    assert task.scales == cfg.scales == (1, 2, 4)
    assert (task.task_loss_weight, task.distill_loss_weight, task.warmup_epochs) == \
        (cfg.ce_weight, cfg.kd_weight, cfg.warmup_epochs)
    assert task.complementary_weight == cfg.complementary_weight and task.loss_kwargs == cfg.loss_kwargs
    assert ScaleDecoupledDistillationTask(Net(), Net(), verbose=False).method == "kd"


def test_warm_up_follows_set_epoch():
    task = ScaleDecoupledDistillationTask(Net(), Net(), "dkd", verbose=False)
    assert task.warmup_epochs == 20 and task.warmup_factor == pytest.approx(1 / 20)
    task.set_epoch(9)
    assert task.warmup_factor == pytest.approx(10 / 20)
    task.set_epoch(40)
    assert task.warmup_factor == 1.0


@pytest.mark.slow  # builds timm's task and two models
def test_plain_kd_equals_timms_logit_distillation_task():
    """M=[1] KD against timm's own task: timm students and teachers whose normalisations differ (timm renormalises
    the teacher's input in both)."""
    torch.manual_seed(0)
    student = timm.create_model("test_resnet", num_classes=5)
    teacher = timm.create_model("test_efficientnet", num_classes=5).eval()
    assert student.pretrained_cfg["mean"] != teacher.pretrained_cfg["mean"]
    x, y = batch(size=32)
    theirs_student = copy.deepcopy(student)
    ours = ScaleDecoupledDistillationTask(student, teacher, "kd", "[1]", T=2.0, task_loss_weight=0.3,
                                          distill_loss_weight=0.7, verbose=False).train()
    theirs = LogitDistillationTask(theirs_student, teacher, temperature=2.0, task_loss_weight=0.3,
                                   distill_loss_weight=0.7, verbose=False).train()
    a, b = ours(x, y), theirs(x, y)
    for key in ("loss", "task_loss", "kd_loss", "output"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    a["loss"].backward()
    b["loss"].backward()
    for (name, p), q in zip(student.named_parameters(), theirs_student.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_plain_pytorch_loop_lowers_the_loss():
    torch.manual_seed(0)
    teacher = Net()
    x, y = batch(64)
    optimizer = torch.optim.SGD(teacher.parameters(), lr=0.1, momentum=0.9)
    for _ in range(30):   # a teacher that knows the batch
        optimizer.zero_grad()
        F.cross_entropy(teacher(x), y).backward()
        optimizer.step()
    teacher.zero_grad(set_to_none=True)
    task = ScaleDecoupledDistillationTask(Net(), teacher, "dkd", verbose=False)
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.05, momentum=0.9)
    losses = []
    for epoch in range(8):
        task.set_epoch(epoch)
        task.train()
        optimizer.zero_grad()
        result = task(x, y)
        result["loss"].backward()
        optimizer.step()
        losses.append(result["task_loss"].item() + result["kd_loss"].item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert task.get_eval_model() is task.student and task.student(x).shape == (64, 5)


def test_checkpoints_and_optimizer_groups_are_the_students():
    student = timm.create_model("test_vit", num_classes=5, img_size=32)
    task = ScaleDecoupledDistillationTask(student, Net(), "kd", "[1,2]", verbose=False)
    assert set(task.get_checkpoint_state()["state_dict"]) == set(student.state_dict())
    assert task.get_trainable_module().no_weight_decay() == {f"model.{n}" for n in student.no_weight_decay()}
    optimizer = create_optimizer_v2(task.get_trainable_module(), "sgd", lr=0.1, weight_decay=0.05)
    undecayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {id(student.pos_embed), id(student.cls_token)} <= undecayed
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(student.parameters()))


def test_bad_arguments_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match=r"^method 'kdd' is unknown; use one of \["):
        ScaleDecoupledDistillationTask(Net(), Net(), "kdd", verbose=False)
    with pytest.raises(ValueError, match=r"^kd takes no 'temperature'; its loss takes T\.$"):
        ScaleDecoupledDistillationTask(Net(), Net(), "kd", temperature=4.0, verbose=False)
    with pytest.raises(ValueError, match=r"^scales '\[1,3,2\]' is not supported"):
        ScaleDecoupledDistillationTask(Net(), Net(), "kd", "[1,3,2]", verbose=False)
    with pytest.raises(ValueError, match=r"^the teacher predicts 7 classes but the student 5;"):
        ScaleDecoupledDistillationTask(Net(), Net(num_classes=7), verbose=False)


# --- DDP over gloo, two processes ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_step_as_rank(rank, port, folder):
    """Half of the batch on this rank, through `prepare_distributed`; saves the synchronised gradients."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        teacher, student = Net(bn=False), Net(bn=False)
        task = ScaleDecoupledDistillationTask(student, teacher, "dkd", "[1,2,4]", warmup_epochs=0, verbose=False)
        task.prepare_distributed()
        assert isinstance(task.trainable_module, torch.nn.parallel.DistributedDataParallel)
        x, y = batch(16)
        task(x[rank * 8:(rank + 1) * 8], y[rank * 8:(rank + 1) * 8])["loss"].backward()
        torch.save({n: p.grad for n, p in task.student.named_parameters()}, f"{folder}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # starts 2 processes (about 15 s idle, a minute on a loaded machine)
def test_prepare_distributed_wraps_only_the_student(tmp_path):
    port = _free_port()
    ranks = run_children(ddp_step_as_rank, [(r, port, tmp_path) for r in (0, 1)], timeout=120)
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].stdout[-3000:] + ranks[1].stdout[-3000:]
    torch.manual_seed(0)
    teacher, student = Net(bn=False), Net(bn=False)
    task = ScaleDecoupledDistillationTask(student, teacher, "dkd", "[1,2,4]", warmup_epochs=0, verbose=False)
    task(*batch(16))["loss"].backward()
    for rank in (0, 1):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        for name, p in student.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6)   # sums in another order


@pytest.mark.slow  # compiles three graphs
def test_compile_gives_the_same_loss_and_gradients():
    """The three modules the task compiles (the student's SD forward, its plain forward, the teacher's SD forward)
    really run as graphs, with the same loss and gradients. Traced by dynamo and AOTAutograd without inductor's
    code generation (inductor's numbers on the same SD forwards: test_acceleration's compiled step)."""
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    teacher, student = Net(), Net()
    twin = copy.deepcopy(student)
    x, y = batch()
    plain = ScaleDecoupledDistillationTask(twin, teacher, "dkd", "[1,2,4]", verbose=False).train()
    compiled = ScaleDecoupledDistillationTask(student, teacher, "dkd", "[1,2,4]", verbose=False).train()
    graphs = counters["stats"]["unique_graphs"]
    eval_model = compiled.compile(backend="aot_eager")
    a, b = compiled(x, y), plain(x, y)
    assert counters["stats"]["unique_graphs"] >= graphs + 2       # the student's and the teacher's SD forwards
    torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-4, atol=1e-5)
    a["loss"].backward()
    b["loss"].backward()
    for (name, p), q in zip(student.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert compiled.student is student and compiled.get_eval_model() is eval_model
    graphs = counters["stats"]["unique_graphs"]
    torch.testing.assert_close(eval_model(x), student(x), rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] > graphs             # and the plain one, for evaluation


@pytest.mark.slow  # trains two epochs on 512 digit mosaics, then one fastai epoch
def test_the_docs_page_code_runs(tmp_path, monkeypatch, capsys):
    """Every Python block of docs/own-training-loop.md, in order, in one namespace (as a reader pastes them)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "own-training-loop.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) == 2 and len(blocks[0].splitlines()) <= 25
    assert "digit_mosaic(bs=64, subset=512)" in blocks[0]
    blocks[0] = blocks[0].replace("digit_mosaic(bs=64", f"digit_mosaic({str(tmp_path)!r}, bs=64")  # not in ~/.cache
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/own-training-loop.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert re.search(r"^top-1 0\.\d+", printed, re.M)
    assert [row["epoch"] for row in namespace["distill"].history] == [1]
    assert isinstance(namespace["task"], ScaleDecoupledDistillationTask)
