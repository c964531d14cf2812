import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.metrics import accuracy
from torch.utils.data import TensorDataset

from sddlib.distill import DistillationCallback, NonFiniteLossError, warmup_factor
from sddlib.losses import sdd_loss
from sddlib.regions import ScaleDecoupled


class SmallNet(nn.Module):
    """timm-interface CNN with BatchNorm, so BN statistics of the teacher can be checked."""

    def __init__(self, num_classes=4, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, stride=2), nn.BatchNorm2d(width), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, fmap):
        return self.fc(F.adaptive_avg_pool2d(fmap, 1).flatten(1))

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def make_dls(n=128, num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randn(n, 3, 16, 16, generator=g) * 0.5
    x[:, 0] += y.view(-1, 1, 1).float()          # learnable signal
    ds = TensorDataset(x, y)
    return DataLoaders(DataLoader(ds, bs=32, shuffle=True), DataLoader(ds, bs=32), device="cpu")


def make_learner(method="kd", scales=(1, 2, 4), num_classes=4, **kw):
    torch.manual_seed(0)
    teacher, student = SmallNet(num_classes), SmallNet(num_classes)
    cb = DistillationCallback(teacher, method=method, scales=scales, **kw)
    learn = Learner(make_dls(), student, loss_func=nn.CrossEntropyLoss(), metrics=accuracy, cbs=cb,
                    lr=0.05)
    learn.model_dir = "."
    return learn, cb, teacher


@pytest.mark.slow  # trains 3 epochs
@pytest.mark.parametrize("method", ["kd", "dkd", "nkd"])
@pytest.mark.parametrize("scales", [(1,), (1, 2, 4)])
def test_fit_reduces_loss_and_leaves_teacher_untouched(method, scales):
    learn, cb, teacher = make_learner(method, scales, warmup_epochs=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with learn.no_bar(), learn.no_logging():
        learn.fit(4, lr=0.05)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)      # weights and BN running stats
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    losses = [float(v) for v in learn.recorder.losses]
    assert sum(losses[-4:]) < sum(losses[:4])
    assert [row["epoch"] for row in cb.history] == [1, 2, 3, 4]
    frame = cb.stats_frame()
    for s in scales:
        shares = frame[[c for c in frame.columns if c.endswith(f"@{s}")]].sum(axis=1)
        assert torch.allclose(torch.tensor(shares.values), torch.ones(4, dtype=torch.float64))
    assert cb.region_counts.shape[1] == sum(s * s for s in scales)
    assert "forward" not in learn.model.__dict__                       # plain forward restored


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_one_student_forward_per_training_batch():
    learn, cb, _ = make_learner("dkd", (1, 2, 4))
    calls = []
    learn.model.body[0].register_forward_hook(lambda *a: calls.append(1))
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
    train_batches, valid_batches = len(learn.dls.train), len(learn.dls.valid)
    assert len(calls) == train_batches + valid_batches


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_loss_equals_the_documented_formula():
    learn, cb, teacher = make_learner("dkd", (1, 2), warmup_epochs=4)
    seen = {}

    class Capture(DistillationCallback.__mro__[1]):   # a plain fastai Callback
        order = DistillationCallback.order + 1

        def after_loss(self):
            if self.training and "loss" not in seen:
                seen.update(loss=self.learn.loss_grad.detach().clone(), xb=self.xb[0].clone(), yb=self.yb[0].clone(),
                            state={k: v.clone() for k, v in self.learn.model.state_dict().items()})

    learn.add_cb(Capture())
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
    student = SmallNet(4)
    student.load_state_dict(seen["state"])
    student.train()
    x, y = seen["xb"], seen["yb"]
    logits, s_regions = ScaleDecoupled(student, (1, 2))(x)
    with torch.no_grad():
        _, t_regions = ScaleDecoupled(teacher.eval(), (1, 2))(x)
    expected = 1.0 * F.cross_entropy(logits, y) + 0.25 * 1.0 * sdd_loss(s_regions, t_regions, y, base="dkd",
                                                                          alpha=1.0, beta=8.0, T=4.0)
    assert torch.allclose(seen["loss"], expected.detach(), rtol=1e-5)


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_save_load_and_validate_use_the_plain_student(tmp_path):
    learn, cb, _ = make_learner("kd", (1, 2))
    learn.path, learn.model_dir = tmp_path, "models"
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
        loss, acc = learn.validate()
    learn.save("student", with_opt=False)
    keys = set(torch.load(tmp_path / "models" / "student.pth", weights_only=True).keys())
    assert keys == set(SmallNet(4).state_dict().keys())
    learn.load("student")
    learn.model.eval()
    with torch.no_grad():                                   # validate() scored the plain student's logits
        x, y = learn.dls.valid.dataset.tensors
        plain = (learn.model(x).argmax(1) == y).float().mean()
    assert float(acc) == pytest.approx(float(plain))


def test_warmup_counts_epochs_from_one():
    assert warmup_factor(1, 20) == 0.05 and warmup_factor(20, 20) == 1.0 and warmup_factor(40, 20) == 1.0
    assert warmup_factor(1, 0) == 1.0


def test_defaults_follow_the_authors_code():
    kd = DistillationCallback(SmallNet(), "kd")
    assert (kd.ce_weight, kd.kd_weight, kd.warmup_epochs, kd.loss_kwargs) == (0.1, 0.9, 0, {"T": 4.0})
    dkd = DistillationCallback(SmallNet(), "dkd", beta=2.0)
    assert (dkd.ce_weight, dkd.warmup_epochs, dkd.loss_kwargs) == (1.0, 20, {"alpha": 1.0, "beta": 2.0, "T": 4.0})
    nkd = DistillationCallback(SmallNet(), "nkd")
    assert nkd.loss_kwargs == {"T": 4.0, "gamma": 8.0, "exclude_target": False}
    with pytest.raises(ValueError, match="kd takes no 'beta'; its loss takes T"):
        DistillationCallback(SmallNet(), "kd", beta=2.0)


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_rejected_inputs():
    with pytest.raises(ValueError, match="method 'fitnet' is unknown"):
        DistillationCallback(SmallNet(), "fitnet")
    with pytest.raises(ValueError, match="scales '\\[1,3,2\\]' is not supported"):
        DistillationCallback(SmallNet(), "kd", "[1,3,2]")
    teacher = SmallNet(num_classes=5)
    learn = Learner(make_dls(), SmallNet(4), loss_func=nn.CrossEntropyLoss(),
                    cbs=DistillationCallback(teacher, "kd"))
    with pytest.raises(ValueError, match="the teacher predicts 5 classes but the student 4"):
        with learn.no_bar(), learn.no_logging():
            learn.fit(1)
    assert "forward" not in learn.model.__dict__


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_an_interrupted_fit_leaves_a_plain_student():
    learn, cb, _ = make_learner("kd", (1, 2, 4))

    class Interrupt(DistillationCallback.__mro__[1]):
        def after_loss(self):
            raise KeyboardInterrupt            # a user stopping a notebook cell mid-epoch

    learn.add_cb(Interrupt())
    with pytest.raises(KeyboardInterrupt), learn.no_bar(), learn.no_logging():
        learn.fit(1)
    out = learn.model(torch.randn(2, 3, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_an_interrupt_inside_the_forward_leaves_a_plain_student():
    """Ctrl-C during the student's forward pass: fastai runs no after_fit, the student must still be plain."""
    learn, cb, _ = make_learner("dkd", (1, 2, 4))
    calls = []

    def interrupt(module, args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
    handle = learn.model.body[0].register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt), learn.no_bar(), learn.no_logging():
        learn.fit(1)
    handle.remove()
    assert "forward" not in learn.model.__dict__
    out = learn.model(torch.randn(2, 3, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_an_exception_in_another_callback_leaves_a_plain_student():
    learn, cb, _ = make_learner("kd", (1, 2))

    class Broken(DistillationCallback.__mro__[1]):
        order = 20          # its before_batch runs before the distillation callback installs its forward

        def before_batch(self):
            raise RuntimeError("broken callback")

    learn.add_cb(Broken())
    with pytest.raises(RuntimeError, match="broken callback"), learn.no_bar(), learn.no_logging():
        learn.fit(1)
    assert "forward" not in learn.model.__dict__     # a patch waiting for its call would not do
    out = learn.model(learn.dls.one_batch()[0])
    assert isinstance(out, torch.Tensor) and out.shape == (32, 4)


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_a_non_finite_term_stops_the_fit_naming_epoch_batch_and_term():
    learn, cb, teacher = make_learner("kd", (1, 2))
    with torch.no_grad():
        teacher.fc.bias.fill_(float("nan"))         # a broken teacher: finite CE, NaN distillation term
    with pytest.raises(NonFiniteLossError) as err, learn.no_bar(), learn.no_logging():
        learn.fit(1)
    assert err.value.sentence == ("epoch 1, batch 1 of 4: the distillation (sd_kd) loss is nan; the run stopped "
                                  "and is recorded as failed (lower lr, or check the loss weights and T).")
    assert "forward" not in learn.model.__dict__
