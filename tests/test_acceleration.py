"""The speed switches (`channels_last`, `precision`, `compile`): what each changes in a real fit step, that the
fp32 ones compute the reference step, and that none outlives the fit; how they count as departures."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders

from sddlib import training
from sddlib.config import ConfigError, RunConfig
from sddlib.data.build import TensorImageDataset
from sddlib.data.device import DeviceImageDL
from sddlib.departures import departures, vanilla_departures
from sddlib.distill import DistillationCallback
from sddlib.models import create_model

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
PARAMS = dict(dataset="cifar100", teacher="resnet8", student="resnet8", method="dkd", M="[1,2,4]", lr=0.05,
              progress=False, device="cpu")


class TinyNet(nn.Module):
    """A one-convolution classifier with timm's interface: small enough to torch.compile in seconds."""

    def __init__(self, num_classes=100):
        super().__init__()
        self.num_classes = num_classes
        self.conv, self.bn = nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward_features(self, x):
        return torch.relu(self.bn(self.conv(x)))

    def forward_head(self, x, pre_logits=False):
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class Seen(Callback):
    """What the step saw: the input's memory layout and the dtype a convolution computed in."""
    order = 150

    def before_fit(self):
        self.layouts, self.dtypes = [], []
        conv = next(m for m in self.learn.model.modules() if isinstance(m, nn.Conv2d))
        self._hook = conv.register_forward_hook(lambda m, a, out: self.dtypes.append(out.dtype))

    def before_batch(self):
        self.layouts.append(self.learn.xb[0].is_contiguous(memory_format=torch.channels_last))

    def after_fit(self):
        self._hook.remove()


def _fit_one_step(build=lambda: create_model("resnet8", num_classes=100), **switches):
    """One SD-DKD training step (and a validation pass) with the switches: the student, the teacher, what the step
    saw, the images, the student's weights before the step and the distillation callback. No warm-up: DKD's would
    scale the distillation term to 1/20 in this first epoch, too small for a comparison to see."""
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8), \
        torch.randint(0, 100, (16,), generator=g)
    train = DeviceImageDL(TensorImageDataset(images, labels), bs=16, mean=MEAN, std=STD, device="cpu")
    torch.manual_seed(0)
    teacher, student = build(), build()
    initial = {k: v.clone() for k, v in student.named_parameters()}
    seen, distill = Seen(), DistillationCallback(teacher, "dkd", (1, 2, 4), warmup_epochs=0)
    learn = training.build_learner(DataLoaders(train, train, device="cpu"), student, {**PARAMS, **switches},
                                   cbs=[distill, seen])
    learn.fit(1)
    return SimpleNamespace(student=student, teacher=teacher, seen=seen, images=images, initial=initial,
                           distill=distill)


def _update(step) -> torch.Tensor:
    """What the step changed in the student's parameters, as one vector."""
    return torch.cat([(p - step.initial[k]).detach().flatten() for k, p in step.student.named_parameters()])


def _assert_weights_close(a, b, **tol):
    for key, value in b.state_dict().items():
        torch.testing.assert_close(a.state_dict()[key], value, msg=key, **tol)


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_channels_last_changes_the_layout_not_the_step():
    reference, step = _fit_one_step(), _fit_one_step(channels_last=True)
    assert step.seen.layouts == [True, True] and reference.seen.layouts == [False, False]   # train and valid batch
    for model in (step.student, step.teacher):
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    _assert_weights_close(step.student, reference.student, rtol=1e-4, atol=1e-5)


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_bf16_computes_the_forwards_in_bfloat16_and_releases_them_after_the_fit():
    reference, step = _fit_one_step(), _fit_one_step(precision="bf16")
    assert set(step.seen.dtypes) == {torch.bfloat16}                 # the student's convolutions, train and valid
    # the distillation term in full (no warm-up), of the fp32 step's size: here about 1.0 beside a CE of 4.6
    (ours,), (ref,) = step.distill.history, reference.distill.history
    assert ours["warmup_factor"] == 1.0 and ref["distill"] > 0.5
    assert ours["distill"] == pytest.approx(ref["distill"], rel=0.01)
    assert ours["ce"] == pytest.approx(ref["ce"], rel=0.01)
    # the step itself, as the change of the parameters: bf16 rounding moves it by ~5 % of its size, a step without
    # the distillation term by ~80 %
    update, reference_update = _update(step), _update(reference)
    assert float((update - reference_update).norm() / reference_update.norm()) < 0.15
    assert not torch.is_autocast_enabled("cpu")
    assert not step.student._forward_hooks and not step.student._forward_pre_hooks
    assert step.student(step.images.float()).dtype == torch.float32


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_a_fit_that_raises_leaves_no_autocast_behind(tmp_path):
    class Boom(Callback):
        def after_pred(self):
            raise RuntimeError("boom")

    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(8)
    train = DeviceImageDL(TensorImageDataset(images, labels), bs=8, mean=MEAN, std=STD, device="cpu")
    cfg = RunConfig.from_params({**PARAMS, "precision": "bf16", "epochs": 1, "lr_decay_stages": [1]})
    student = create_model("resnet8", num_classes=100)
    learn = training.build_learner(DataLoaders(train, train, device="cpu"), student, cfg, cbs=[Boom()])
    with pytest.raises(RuntimeError, match="boom"):
        training.fit_resumable(learn, cfg, tmp_path, cfg.fingerprint, False, "best.pth")
    assert not torch.is_autocast_enabled("cpu")
    assert not student._forward_hooks and not student._forward_pre_hooks


@pytest.mark.slow  # torch.compile (inductor) builds C++ kernels
def test_compiled_step_equals_the_eager_step():
    from torch._dynamo.utils import counters
    eager = _fit_one_step(build=TinyNet)
    graphs = counters["stats"]["unique_graphs"]
    compiled = _fit_one_step(build=TinyNet, compile="default")
    assert counters["stats"]["unique_graphs"] > graphs             # the step really ran compiled graphs
    _assert_weights_close(compiled.student, eager.student, rtol=1e-4, atol=1e-5)


def test_switches_are_checked_and_only_precision_is_a_departure():
    with pytest.raises(ConfigError, match="precision 'fp16' is unknown.*use one of bf16, fp32"):
        RunConfig.from_params({"precision": "fp16"})
    with pytest.raises(ConfigError, match="compile 'yes' is unknown"):
        RunConfig.from_params({"compile": "yes"})
    base = RunConfig.from_params({"dataset": "digit_mosaic"})
    fast = base.replace(channels_last=True, compile="reduce-overhead")
    assert fast.fingerprint == base.fingerprint and not {"precision", "sync_bn"} & set(base.fingerprint)
    bf16 = base.replace(precision="bf16")
    assert bf16.fingerprint["precision"] == "bf16"
    teacher = {"source": "trained here", "protocol": None}
    assert "precision" not in departures(fast, teacher)[1]
    assert departures(bf16, teacher)[1]["precision"] == ["bf16", "fp32"]
    assert vanilla_departures(bf16, bf16.student)[1] == {"precision": ["bf16", "fp32"]}
    assert vanilla_departures(fast, fast.student)[1] == {}
