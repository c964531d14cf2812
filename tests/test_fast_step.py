"""The project's training step (fastai Learner, DistillationCallback, device-resident data) reads nothing
back to the host per batch, and computes exactly the step a plain reference-style loop computes."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback, CancelFitException
from fastai.data.core import DataLoaders

from sddlib import training
from sddlib.data.build import TensorImageDataset
from sddlib.data.device import DeviceImageDL
from sddlib.distill import FINITE_CHECK_EVERY, DistillationCallback
from sddlib.losses import sdd_loss
from sddlib.models import create_model
from sddlib.regions import ScaleDecoupled

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
PARAMS = dict(dataset="cifar100", teacher="resnet8", student="resnet8", method="dkd", M="[1,2,4]", lr=0.05,
              progress=False, device="cpu")
_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


@contextlib.contextmanager
def counting_host_reads(counter: list):
    """Count every Python-level read of a tensor's value: on a GPU each one is a synchronisation."""
    originals = {name: getattr(torch.Tensor, name) for name in _READS}

    def counted(name):
        def read(self, *args, **kwargs):
            counter.append(name)
            return originals[name](self, *args, **kwargs)
        return read
    for name in _READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 100, (n,), generator=g))


def _learner(n, bs, *, shuffle, padding, flip, extra_cbs=()):
    images, labels = _data(n)
    train = DeviceImageDL(TensorImageDataset(images, labels), bs=bs, mean=MEAN, std=STD, shuffle=shuffle,
                          padding=padding, flip=flip, device="cpu")
    valid = DeviceImageDL(TensorImageDataset(images[:bs], labels[:bs]), bs=bs, mean=MEAN, std=STD, device="cpu")
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", num_classes=100), create_model("resnet8", num_classes=100)
    distill = DistillationCallback(teacher, "dkd", (1, 2, 4))
    learn = training.build_learner(DataLoaders(train, valid, device="cpu"), student, PARAMS,
                                   cbs=[distill, *extra_cbs])
    return learn, teacher, student, images, labels


@pytest.mark.slow  # trains 48 steps
def test_training_steps_read_nothing_back_to_the_host():
    steps = FINITE_CHECK_EVERY - 2       # stay between the periodic loss checks
    reads, seen = [], []

    class HostReads(Callback):
        order = 200          # after every other callback of the batch

        def before_batch(self):
            if self.iter == 1:
                self.ctx = counting_host_reads(reads)
                self.ctx.__enter__()

        def after_batch(self):
            seen.append(self.iter)
            if self.iter == steps:
                self.ctx.__exit__(None, None, None)
                raise CancelFitException()

    learn, *_ = _learner(8 * (steps + 2), 8, shuffle=True, padding=4, flip=True, extra_cbs=[HostReads()])
    learn.fit(1)
    assert seen[-1] == steps
    assert reads == [], f"host reads in {steps - 1} training steps: {reads}"


@pytest.mark.trains  # fits a Learner (a step or a few)
def test_the_step_equals_a_reference_style_step():
    """One fit step of the project (no augmentation, one batch) against the same step written plainly:
    teacher and student forwards, CE + warm-up * SD-DKD, backward, clipping at 40, SGD with L2."""
    learn, teacher, student, images, labels = _learner(16, 16, shuffle=False, padding=0, flip=False)
    torch.manual_seed(0)
    ref_teacher, ref_student = create_model("resnet8", num_classes=100), create_model("resnet8", num_classes=100)
    assert all(torch.equal(a, b) for a, b in zip(ref_student.state_dict().values(), student.state_dict().values()))
    learn.fit(1)

    x = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    opt = torch.optim.SGD(ref_student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    with torch.no_grad():
        _, t_regions = ScaleDecoupled(ref_teacher.eval(), (1, 2, 4))(x)
    logits, s_regions = ScaleDecoupled(ref_student.train(), (1, 2, 4))(x)
    loss = F.cross_entropy(logits, labels) + (1 / 20) * sdd_loss(s_regions, t_regions, labels, base="dkd",
                                                                 alpha=1.0, beta=8.0, T=4.0)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ref_student.parameters(), 40)
    opt.step()
    ours, theirs = student.state_dict(), ref_student.state_dict()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)
    assert learn.recorder.losses[-1].device.type == "cpu" and len(learn.recorder.losses) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.trains  # fits a Learner (a step or a few)
def test_training_steps_never_synchronise_on_cuda():
    steps = 10

    class Strict(Callback):
        order = 200

        def before_batch(self):
            if self.iter == 1:
                torch.cuda.set_sync_debug_mode("error")

        def after_batch(self):
            if self.iter == steps:
                torch.cuda.set_sync_debug_mode(0)
                raise CancelFitException()

    images, labels = _data(8 * (steps + 2))
    train = DeviceImageDL(TensorImageDataset(images, labels), bs=8, mean=MEAN, std=STD, shuffle=True, padding=4,
                          flip=True, device="cuda")
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", num_classes=100), create_model("resnet8", num_classes=100)
    learn = training.build_learner(DataLoaders(train, train, device="cuda"), student, {**PARAMS, "device": "cuda"},
                                   cbs=[DistillationCallback(teacher, "dkd", (1, 2, 4)), Strict()])
    try:
        learn.fit(1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
