"""`sddlib.distill_learner` on a user's own fastai DataLoaders (a folder of grey 28x28 digits-like PNGs): the
authors' SGD, schedule, clipping and distillation in a real Learner, figures without a hand-built DatasetInfo."""
import json
import types

import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
import numpy as np
import pytest
import torch
from fastai.callback.training import GradientClip
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.vision.data import ImageDataLoaders
from fastai.vision.augment import Normalize
from PIL import Image
from torch.utils.data import TensorDataset

import sddlib
from sddlib.config import ConfigError
from sddlib.data import dataset_info
from sddlib.models import create_model
from sddlib.training import EpochLogger, StepLR
from sddlib.viz import FIGURE_FILES, SAMPLE_FILE, save_learner_figures

CLASSES = ("three", "seven", "nine")


@pytest.fixture(scope="module")
def grey_folder(tmp_path_factory):
    """train/<class>/*.png and valid/<class>/*.png, 1-channel ('L') images as MNIST digits come."""
    root = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("valid", 4)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((28, 28)) * 60 + 60 * c).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(root / split / name / f"{i}.png")
    return root


def folder_dls(root):
    return ImageDataLoaders.from_folder(root, valid="valid", bs=8, num_workers=0, device="cpu", seed=0,
                                        batch_tfms=Normalize.from_stats([0.5] * 3, [0.25] * 3))


@pytest.mark.slow  # trains two epochs and draws the figures
def test_distill_learner_trains_with_the_authors_solver_and_draws_figures(grey_folder, tmp_path, capsys):
    dls = folder_dls(grey_folder)
    assert dls.one_batch()[0].shape[1:] == (3, 28, 28)          # fastai's loaders give grey images 3 channels
    teacher, student = create_model("resnet8", num_classes=3), create_model("resnet8", num_classes=3)
    learn = sddlib.distill_learner(dls, student, teacher, method="kd", M="[1,2,4]", epochs=8)
    assert isinstance(learn, Learner)
    step = next(cb for cb in learn.cbs if isinstance(cb, StepLR))
    assert (step.lr, step.stages, step.rate) == (0.05, [5, 6, 7], 0.1)   # 150, 180, 210 of 240 epochs, scaled
    assert next(cb for cb in learn.cbs if isinstance(cb, GradientClip)).max_norm == 40.0
    sd = learn.distillation
    assert (sd.method, sd.scales, sd.ce_weight, sd.kd_weight, sd.loss_kwargs) == ("kd", (1, 2, 4), 0.1, 0.9, {"T": 4.0})
    with learn.no_bar():
        learn.fit(2)
    sgd = learn.opt.opt
    assert type(sgd) is torch.optim.SGD
    group = sgd.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"], group["dampening"]) == (0.9, 5e-4, False, 0)
    assert len(sgd.param_groups) == 1 and len(group["params"]) == len(list(student.parameters()))  # L2 on all
    assert len(sd.history) == 2 and all(np.isfinite(r) for r in learn.recorder.values[-1])
    out = capsys.readouterr().out
    assert out.count("note: the final map of the teacher is 7x7 and the student is 7x7") == 1   # 28x28 inputs
    assert "epoch 2/2" in out
    # figures from the Learner alone: class names and normalisation from fastai's vocab and Normalize
    info = dataset_info(dls)
    assert info.class_names == tuple(sorted(CLASSES)) and info.mean == (0.5,) * 3 and info.image_size == 28
    paths = save_learner_figures(learn, tmp_path / "figures", max_items=9)
    assert len(paths) == len(FIGURE_FILES) and all(p.is_file() for p in paths)   # 6-7 included
    sample = json.loads((tmp_path / "figures" / SAMPLE_FILE).read_text())
    assert (sample["images"], sample["classes"], sample["test_images"]) == (9, 3, 12)
    # every override is a checked run parameter; the plain method is M="[1]"
    plain = sddlib.distill_learner(dls, student, teacher, method="dkd", M="[1]", epochs=240, lr=0.01)
    assert plain.distillation.scales == (1,) and next(c for c in plain.cbs if isinstance(c, StepLR)).stages == [
        150, 180, 210] and plain.distillation.warmup_epochs == 20      # the authors' 240-epoch schedule as it is
    short = sddlib.distill_learner(dls, student, teacher, method="dkd", epochs=24)
    assert short.distillation.warmup_epochs == 2 and next(c for c in short.cbs if isinstance(c, StepLR)).stages == [
        15, 18, 21]
    with pytest.raises(ConfigError, match="parameter 'learning_rate' is unknown; did you mean 'lr_warmup_epochs'?|"
                                          "parameter 'learning_rate' is unknown"):
        sddlib.distill_learner(dls, student, teacher, learning_rate=0.1)
    with pytest.raises(ConfigError, match="method 'kdd' is unknown"):
        sddlib.distill_learner(dls, student, teacher, method="kdd")


def test_grey_one_channel_batches_are_refused_in_one_sentence():
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 3
    dls = DataLoaders(DataLoader(TensorDataset(x, y), bs=8), DataLoader(TensorDataset(x, y), bs=8), device="cpu")
    teacher, student = create_model("resnet8", num_classes=3), create_model("resnet8", num_classes=3)
    with pytest.raises(ValueError, match=r"^the images have 1 channel\(s\) but the model's first layer takes 3; "
                                         "give it 3-channel images"):
        sddlib.distill_learner(dls, student, teacher, epochs=1)
    with pytest.raises(ValueError, match="names no classes .* CategoryBlock"):
        dataset_info(dls)


def test_the_progress_bar_in_jupyterlab_the_plain_line_headless(grey_folder, monkeypatch):
    from fastai.callback.progress import ProgressCallback
    dls = folder_dls(grey_folder)
    teacher, student = create_model("resnet8", num_classes=3), create_model("resnet8", num_classes=3)

    def shown():
        learn = sddlib.distill_learner(dls, student, teacher, epochs=1)
        bar = any(isinstance(cb, ProgressCallback) for cb in learn.cbs)
        return bar, next(cb for cb in learn.cbs if isinstance(cb, EpochLogger)).show

    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert shown() == (False, True)                               # papermill, scripts: the plain line only
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/quickstart.ipynb")  # what a Jupyter server gives its kernels
    import IPython                                                 # ... and the shell it runs is a kernel's
    monkeypatch.setattr(IPython, "get_ipython", lambda: types.SimpleNamespace(kernel=object()))
    assert shown() == (True, False)                               # JupyterLab: fastai's bar only
    assert sddlib.distill_learner(dls, student, teacher, epochs=1, progress=False).cbs.filter(
        lambda cb: isinstance(cb, ProgressCallback)) == []        # progress=False: never a bar
