"""What the whole test run shares, built once (pytest's session scope): the digit mosaics, the tiny fake datasets
and one trained tiny run. With pytest-xdist each worker is a process of its own with its own session; these are
built once per run all the same, in a folder the workers share, by the first worker that asks (a file lock makes
the others wait and then read it). Tests only read them; a test that changes a run works on its own copy
(`tiny_run_copy`).

Also here: the modules the tests import (torch, fastai, ...) loaded with the garbage collector paused, then frozen
out of its reach, as sddlib's own commands load them (sddlib.startup); the tests of a module in ONE_WORKER on one
worker, in order (they share what the first ones build); one torch thread per worker when the workers fill the
cores (and in the processes a test starts), the slow tests sent out first so they overlap the quick ones, and
`trains`: a test that fits a Learner without that marker (or `slow`) fails under `make test-fast`, which leaves
both out and so trains nothing."""
import gc
import json
import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock
from xdist.scheduler import LoadScopeScheduling

from fake_datasets import write_tiny_cifar100, write_tiny_cub200, write_tiny_imagenet
from sddlib.startup import freeze_imports

# Modules whose tests read what earlier tests in the same module built (a module-scoped folder of runs).
ONE_WORKER = ("tests/test_notebooks.py",)


class ModulesOnOneWorker(LoadScopeScheduling):
    """pytest-xdist's load balancing, test by test, except that a module in ONE_WORKER goes to one worker as one
    unit, its tests in file order. The scope is read from the node id the controller sees; pytest-xdist's own
    `--dist loadgroup` cannot be used for this: with pytest 9.2 its `xdist_group` suffix no longer reaches the
    node id and the group is silently split (pytest-xdist issue 1386)."""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return module if module in ONE_WORKER else nodeid


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: unknown under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    return ModulesOnOneWorker(config, log)


WORKER = os.environ.get("PYTEST_XDIST_WORKER")          # "gw0", "gw1", ... under xdist; None in a plain run


def pytest_configure(config):
    if "not trains" in (config.getoption("markexpr") or ""):
        _refuse_training()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if WORKER and workers >= (os.cpu_count() or 1):
        # each worker (and every kernel, torchrun worker or subprocess it starts) one thread: two workers with
        # two threads each on two cores spend their time switching
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch
        torch.set_num_threads(1)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    """The test modules imported with the collector paused, then frozen (under xdist the controller collects
    nothing: its pause is momentary)."""
    gc.disable()
    try:
        return (yield)
    finally:
        freeze_imports()
        gc.enable()


def _refuse_training():
    """`make test-fast` (-m "not slow and not trains") trains nothing: a test it runs that fits a Learner, or a
    fixture that does so for it, fails with the marker it lacks."""
    from fastai.learner import Learner

    def fit(self, *args, **kwargs):
        raise AssertionError("this test fits a Learner (itself or through a fixture): mark it "
                             "@pytest.mark.trains (or slow), so that make test-fast leaves it out")
    Learner.fit = fit


def pytest_collection_modifyitems(config, items):
    """Under xdist the slow tests go first (order kept within each group), the modules of ONE_WORKER before them
    in their file order (each one unit of a minute or more, the longest there are), so that the last minutes are
    not one worker alone on a long notebook while the others have nothing left."""
    def key(item):
        if item.nodeid.split("::", 1)[0] in ONE_WORKER:
            return (0, False)
        return (1, item.get_closest_marker("slow") is None)
    if WORKER:
        items.sort(key=key)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)` once per test run: under a lock in a folder every xdist worker sees; a finished folder is
    marked, so a worker that waited reads it, and one interrupted mid-build is built again."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if WORKER else root               # xdist: .../pytest-N/popen-gwK, shared .../pytest-N
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            done.write_text(json.dumps(build(folder)))
    return folder


@pytest.fixture(scope="session")
def mosaic_dir(tmp_path_factory) -> Path:
    """A data_dir holding the 10,000 digit mosaics (generated once, ~10 s)."""
    from sddlib.data import load_digit_mosaics
    return built_once(tmp_path_factory, "mosaics", lambda folder: bool(load_digit_mosaics(folder)))


@pytest.fixture(scope="session")
def tiny_cifar100(tmp_path_factory) -> Path:
    """CIFAR-100's python pickles, 32 training and 16 test images (the data_dir, read-only)."""
    return built_once(tmp_path_factory, "cifar100", lambda f: str(write_tiny_cifar100(f, n_train=32, n_test=16)))


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory) -> Path:
    """ImageNet's folder tree, 3 classes of 4 training and 4 validation JPEGs (the data_dir, read-only)."""
    return built_once(tmp_path_factory, "imagenet", lambda f: str(write_tiny_imagenet(f, n_classes=3, per_class=4)))


@pytest.fixture(scope="session")
def tiny_cub200(tmp_path_factory) -> Path:
    """CUB-200-2011's tree, 3 classes of 4 JPEGs, half of each for training (the data_dir, read-only)."""
    return built_once(tmp_path_factory, "cub200", lambda f: str(write_tiny_cub200(f, n_classes=3, per_class=4)))


# One trained run: a teacher trained here (1 epoch) and an SD-KD student (2 epochs) on 96 mosaics, no figures.
TINY_RUN = dict(dataset="digit_mosaic", teacher="resnet8", student="resnet8", method="kd", M="[1,2]", epochs=2,
                teacher_epochs=1, subset=96, batch_size=32, lr_decay_stages=[1], progress=False, figures=False)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mosaic_dir):
    """(params, metrics) of the one tiny run, trained once per test run; its folders are read-only to tests."""
    from sddlib import experiment

    def train(folder):
        experiment.run(params(folder))
        return True

    def params(folder):   # kd ignores alpha: the run records a warning
        return {**TINY_RUN, "alpha": 1.0, "output_dir": str(folder), "data_dir": str(mosaic_dir)}
    params = params(built_once(tmp_path_factory, "tiny-run", train))
    return params, experiment.load_metrics(experiment.run_dir(params) / "metrics.json")


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
    """The tiny run's output_dir (run, teacher cache) copied for a test that writes into it: (params, metrics)."""
    params, metrics = tiny_run
    shutil.copytree(params["output_dir"], tmp_path / "outputs")
    return {**params, "output_dir": str(tmp_path / "outputs")}, metrics
