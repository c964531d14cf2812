import json
import urllib.error

import pytest
import torch

from sddlib import checkpoints, experiment, run_pipeline, teacher_source
from sddlib.data import get_dataloaders
from sddlib.data.spec import DATASETS
from sddlib.models import create_model
from sddlib.per_image import load_test_predictions

from conftest import TINY_RUN as TINY   # the configuration of the `tiny_run` fixture (tests/conftest.py)


def test_resolve_params_fills_the_authors_defaults():
    p = experiment.resolve_params({"dataset": "cifar100", "method": "kd", "M": [1, 2]})
    assert p["M"] == "[1,2]" and p["epochs"] == 240 and p["lr_decay_stages"] == [150, 180, 210]
    assert (p["ce_weight"], p["kd_weight"], p["warmup_epochs"], p["T"]) == (0.1, 0.9, 0, 4.0)
    q = experiment.resolve_params({"dataset": "cub200", "method": "nkd"})
    assert (q["ce_weight"], q["warmup_epochs"], q["T"], q["gamma"]) == (1.0, 20, 4.0, 8.0)
    assert experiment.resolve_params({"dataset": "imagenet"})["weight_decay"] == 1e-4


def test_run_names_mark_sd_and_plain_runs():
    assert experiment.run_name({"method": "dkd"}) == "resnet32x4-ShuffleV1-sd_dkd-M124-seed0"
    assert experiment.run_name({"method": "kd", "M": "[1]", "seed": 2}) == "resnet32x4-ShuffleV1-kd-M1-seed2"


def test_step_schedule_counts_epochs_from_one():
    sched = experiment.StepLR(0.05, [150, 180, 210], 0.1)
    assert sched.lr_at(150) == 0.05
    assert sched.lr_at(151) == pytest.approx(0.005)
    assert sched.lr_at(181) == pytest.approx(0.0005)
    assert sched.lr_at(240) == pytest.approx(0.00005)


def test_optimizer_is_plain_sgd_with_l2_on_every_parameter():
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from torch.utils.data import TensorDataset

    ds = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    dls = DataLoaders(DataLoader(ds, bs=4), DataLoader(ds, bs=4), device="cpu")
    p = experiment.resolve_params({"dataset": "digit_mosaic"})
    model = create_model("resnet8", num_classes=10)
    learn = experiment.build_learner(dls, model, p)
    learn.create_opt()
    sgd = learn.opt.opt
    assert isinstance(sgd, torch.optim.SGD)
    for group in sgd.param_groups:
        assert (group["momentum"], group["dampening"], group["nesterov"]) == (0.9, 0, False)
        assert group["weight_decay"] == 5e-4
    # with zero gradients, one step shrinks every parameter (BN and biases included) by lr * wd
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    for q in model.parameters():
        q.grad = torch.zeros_like(q)
    learn.opt.step()
    for n, q in model.named_parameters():
        assert torch.allclose(q, before[n] * (1 - 0.05 * 5e-4)), n


@pytest.mark.slow  # trains a teacher and a student (tiny_run)
def test_run_writes_complete_metrics_and_caches_the_teacher(tiny_run):
    params, metrics = tiny_run
    out = experiment.run_dir(params)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["status"] == "complete" and on_disk["variant"] == "sd_kd" and on_disk["scales"] == [1, 2]
    assert [row["epoch"] for row in on_disk["history"]] == [1, 2]
    assert on_disk["history"][0]["lr"] == pytest.approx(0.05) and on_disk["history"][1]["lr"] == pytest.approx(0.005)
    assert on_disk["best_top1"] == max(r["top1"] for r in on_disk["history"])
    assert on_disk["last_top1"] == on_disk["history"][-1]["top1"]
    assert "consistent_right@2" in on_disk["history"][0]
    assert on_disk["versions"]["torch"] == torch.__version__ and on_disk["params"]["seed"] == 0
    assert (out / "student.pth").is_file() and (out / "student_best.pth").is_file()
    assert not (out / experiment.RESUME_FILE).exists()                  # a complete run keeps no resume state
    assert on_disk["teacher_source"]["source"] == "trained here"
    cached = checkpoints.teacher_cache_path(params["output_dir"], "digit_mosaic", "resnet8")
    teacher = checkpoints.load_checkpoint(create_model("resnet8", num_classes=10), cached).eval()
    # top-1 is k of the 96 test images; the teacher's is the cached teacher's on them, counted by hand
    assert all(on_disk[k] * 96 / 100 == pytest.approx(round(on_disk[k] * 96 / 100)) for k in ("best_top1", "last_top1"))
    dls = get_dataloaders("digit_mosaic", params["data_dir"], bs=32, subset=96, num_workers=0, device="cpu")
    with torch.no_grad():
        hits = sum((teacher(x).argmax(1) == y).sum().item() for x, y in dls.valid)
    assert on_disk["teacher_top1"] == pytest.approx(100 * hits / 96)
    student = checkpoints.load_checkpoint(create_model("resnet8", num_classes=10), out / "student.pth").eval()
    with torch.no_grad():                # every test image's top-1 at the last epoch, kept for the bootstrap
        top1 = torch.cat([student(x).argmax(1) for x, _ in dls.valid]).numpy()
    recorded = load_test_predictions(out)
    assert (recorded["top1"] == top1).all() and 100 * recorded["correct"].mean() == pytest.approx(on_disk["last_top1"])
    # the teacher follows the dataset's teacher protocol (not the student's solver), recorded with it
    protocol = torch.load(cached, weights_only=True)["protocol"]
    assert protocol == {**DATASETS["digit_mosaic"].protocol, "epochs": 1, "lr_decay_stages": [5, 7],
                        "clip_grad_norm": 40.0, "subset": 96, "seed": 0}
    teacher_run = experiment.load_metrics(teacher_source.teacher_run_dir(params) / "metrics.json")
    assert teacher_run["variant"] == "teacher" and teacher_run["protocol"] == protocol
    assert teacher_run["params"]["batch_size"] == 64 and teacher_run["params"]["lr"] == 0.05


def test_the_recorded_gpu_is_the_one_the_run_trained_on(monkeypatch):
    """On a machine with several GPUs a run on cuda:1 records cuda:1's name (not the first GPU's); a run on the
    CPU of a machine with GPUs records none."""
    names = {0: "GPU zero", 1: "GPU one"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: names[torch.device(device).index or 0])
    assert run_pipeline._environment(torch.device("cuda", 1))["hardware"]["gpu"] == "GPU one"
    assert run_pipeline._environment(torch.device("cpu"))["hardware"]["gpu"] is None


@pytest.mark.slow  # trains a teacher and a student (tiny_run)
def test_a_run_records_its_warnings(tiny_run):
    assert tiny_run[1]["warnings"] == ["method kd does not read alpha=1.0; its loss takes T."]
    assert tiny_run[1]["distributed"]["bn_batch"] == TINY["batch_size"]


@pytest.mark.slow  # generates the 10,000 mosaics before it refuses
def test_a_batch_larger_than_the_training_set_is_refused_before_the_teacher(tmp_path, capsys):
    params = {**TINY, "alpha": 1.0, "data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path), "subset": 40,
              "batch_size": 64, "epochs": 1}
    with pytest.raises(experiment.ConfigError, match=r"^batch_size=64 is larger than the training set of "
                                                     r"digit_mosaic \(40 images with subset=40\); use a batch_size "
                                                     r"of at most 40, or a larger subset\.$"):
        experiment.run(params)
    assert not experiment.run_dir(params).exists() and not (tmp_path / "teachers").exists()
    said = capsys.readouterr().out.splitlines()
    assert said[:2] == ["warning: method kd does not read alpha=1.0; its loss takes T.",
                        "warning: lr_decay_stages [1] lie at or beyond epochs=1: the LR never decays in this run."]


@pytest.mark.trains  # the trained tiny_run (a copy: the explorer writes its region file there)
def test_the_explorer_opens_a_run_recorded_without_its_region_file(tiny_run_copy):
    """tiny_run drew no figures: its region predictions are made from its saved student and teacher, once."""
    from sddlib import viz
    tiny_run = tiny_run_copy
    run_dir = experiment.run_dir(tiny_run[0])
    assert not (run_dir / "figures" / viz.REGION_FILE).exists()
    app = viz.explore(run_dir)
    saved = run_dir / "figures" / viz.REGION_FILE
    assert saved.is_file() and app.data.models == ["teacher", "student"] and app.data.scales == (1, 2)
    dls = get_dataloaders("digit_mosaic", tiny_run[0]["data_dir"], bs=32, subset=TINY["subset"], device="cpu")
    assert len(app.data) == min(512, dls.valid.n) and set(app.data.targets) == set(dls.valid.dataset.targets.tolist())


def test_a_teacher_protocol_batch_with_no_step_is_refused(tmp_path):
    """The CUB-200 and ImageNet loaders drop the last partial batch: a teacher trained here under the protocol's
    batch on fewer images would take no step at all."""
    from fake_datasets import write_tiny_cub200
    write_tiny_cub200(tmp_path / "cub", n_classes=3, per_class=4, size=32)
    params = dict(dataset="cub200", teacher="resnet8x4", student="resnet8x4", method="kd", M="[1]", epochs=1,
                  batch_size=2, subset=12, data_dir=str(tmp_path / "cub"), output_dir=str(tmp_path / "out"),
                  figures=False, progress=False, device="cpu", allow_teacher_training=True)
    with pytest.raises(experiment.ConfigError, match=r"^the teacher trained here takes the cub200 protocol's "
                                                     r"batch_size=64, larger than its training set \(6 images with "
                                                     r"subset=12\), so its epochs would have no batch at all;"):
        experiment.run(params)


@pytest.mark.slow  # trains the tiny run again (forced), in a copy of it
def test_complete_runs_are_skipped_and_forced_runs_repeat_exactly(tiny_run_copy, capsys):
    params, metrics = tiny_run_copy
    again = experiment.run(params)
    assert "is complete" in capsys.readouterr().out
    assert again["wall_time_s"] == metrics["wall_time_s"]
    forced = experiment.run(params, force=True)
    assert [r["top1"] for r in forced["history"]] == [r["top1"] for r in metrics["history"]]
    assert [r["train_loss"] for r in forced["history"]] == pytest.approx([r["train_loss"] for r in metrics["history"]])


def test_checkpoint_formats_and_clear_errors(tmp_path):
    model = create_model("resnet8", num_classes=10)
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(model.state_dict(), plain)
    checkpoints.save_checkpoint(model, wrapped)
    for path in (plain, wrapped):
        loaded = checkpoints.load_checkpoint(create_model("resnet8", num_classes=10), path)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        checkpoints.load_checkpoint(model, tmp_path / "missing.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(wrapped.read_bytes()[:500])
    with pytest.raises(checkpoints.CheckpointError, match="could not be read .* corrupt"):
        checkpoints.load_checkpoint(model, truncated)
    with pytest.raises(checkpoints.CheckpointError, match="is not a resnet20: .* missing"):
        checkpoints.load_checkpoint(create_model("resnet20", num_classes=10), wrapped, arch="resnet20")
    with pytest.raises(checkpoints.CheckpointError, match=r"fc.weight has shape \(10, 64\), expected \(100, 64\)"):
        checkpoints.load_checkpoint(create_model("resnet8", num_classes=100), wrapped, arch="resnet8")


def test_fetching_teachers_offline_says_what_to_do(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(checkpoints.urllib.request, "urlopen", offline)
    with pytest.raises(checkpoints.CheckpointError, match="download cifar_teachers.tar by hand"):
        checkpoints.fetch_cifar100_teachers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".cifar_teachers.lock"]   # nothing half-written left behind


def test_published_teacher_layout_is_found(tmp_path):
    model = create_model("resnet8", num_classes=10)
    target = checkpoints.cifar100_teacher_path(tmp_path, "resnet8")
    checkpoints.save_checkpoint(model, target)
    (tmp_path / "cifar_teachers" / checkpoints.CIFAR100_COMPLETE).touch()   # unpacked whole
    assert checkpoints.fetch_cifar100_teachers(tmp_path) == tmp_path / "cifar_teachers"   # present: no download


@pytest.mark.slow  # trains a teacher and a student (tiny_run)
def test_a_cached_teacher_of_another_protocol_is_refused(tiny_run):
    from types import SimpleNamespace
    params, _ = tiny_run
    dls = SimpleNamespace(info=SimpleNamespace(num_classes=10))
    teacher, source = teacher_source.get_teacher(params, dls)          # same protocol: reused
    assert source["source"] == "trained here" and source["protocol"]["epochs"] == 1
    with pytest.raises(checkpoints.CheckpointError, match=r"cached teacher .*resnet8.pth was trained under another "
                                                          r"protocol \(lr 0.05 there, 0.1 here\); delete it"):
        teacher_source.get_teacher({**params, "teacher_lr": 0.1}, dls)


def test_published_teachers_dir_is_used_strictly(tmp_path):
    from types import SimpleNamespace
    model = create_model("resnet8", num_classes=10)
    path = tmp_path / "cub200" / "resnet8_vanilla" / "resnet8_best.pth"
    checkpoints.save_checkpoint(model, path)
    params = {**TINY, "output_dir": str(tmp_path / "out"), "teachers_dir": str(tmp_path / "cub200")}
    teacher, source = teacher_source.get_teacher(params, SimpleNamespace(info=SimpleNamespace(num_classes=10)))
    assert source == {"source": "published", "path": str(path)}
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), model.state_dict().values()))
    with pytest.raises(checkpoints.CheckpointError, match=r"^teacher checkpoint .*resnet8_best.pth does not fit"):
        teacher_source.get_teacher(params, SimpleNamespace(info=SimpleNamespace(num_classes=100)))


@pytest.mark.slow  # scores the shipped teacher on the 2,000 test mosaics
def test_the_shipped_digit_mosaic_teacher_is_used_under_its_protocol_only(tmp_path):
    """The quickstart's teacher ships with sddlib: used for its own teacher protocol (and scoring there what it
    recorded), never for another one, where the teacher is trained as before."""
    path = checkpoints.shipped_teacher_path("digit_mosaic", "resnet14")
    saved = checkpoints.read_checkpoint(path, "teacher")
    params = {"dataset": "digit_mosaic", "teacher": "resnet14", "student": "resnet8", "method": "kd",
              "output_dir": str(tmp_path / "out"), "data_dir": str(tmp_path / "data")}
    cfg = experiment.RunConfig.from_params(params)
    assert saved["protocol"] == cfg.teacher_protocol                       # the dataset's teacher protocol, seed 0
    dls = get_dataloaders("digit_mosaic", params["data_dir"], bs=250, seed=0, device=torch.device("cpu"))
    teacher, source = teacher_source.get_teacher(cfg, dls)
    assert source == {"source": "shipped", "path": str(path), "protocol": saved["protocol"]}
    assert run_pipeline.evaluate(teacher, dls.valid, torch.device("cpu"))[0] == pytest.approx(saved["top1"], abs=0.1)
    assert teacher_source._shipped_teacher(cfg.replace(teacher_epochs=2), teacher) is None   # another protocol: trained
    assert teacher_source._shipped_teacher(cfg.replace(subset=64), teacher) is None


def test_a_notebooks_none_takes_the_pairs_published_value(capsys):
    """cifar100.ipynb leaves beta (and lr, T, ...) None: each pair gets its own authors' value, said in one line;
    a value the notebook sets stays."""
    base = dict(dataset="cifar100", method="dkd", M="[1,2,4]", beta=None, T=None, lr=None)
    vgg = experiment.notebook_params({**base, "teacher": "vgg13", "student": "MobileNetV2"})
    assert (vgg.beta, vgg.T, vgg.lr) == (6.0, 4.0, 0.01)
    assert "the authors' values for this pair (cifar100/vgg13-MobileNetV2-sd_dkd.yaml): lr 0.01, T 4.0, beta 6.0" \
        in capsys.readouterr().out
    resnet = experiment.notebook_params({**base, "teacher": "ResNet50", "student": "vgg8"})
    assert (resnet.beta, resnet.lr) == (8.0, 0.05)
    mine = experiment.notebook_params({**base, "teacher": "vgg13", "student": "MobileNetV2", "beta": 2.0})
    assert mine.beta == 2.0
    plain = experiment.notebook_params({**base, "M": "[1]", "teacher": "vgg13", "student": "MobileNetV2"})
    assert plain.beta == 6.0                                   # the plain twin takes the same pair's values
