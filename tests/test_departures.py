"""Which runs followed the published protocol (sddlib.departures), and the tables that keep the others away
from the paper's numbers."""
import json
import warnings

import pytest
import yaml

from sddlib import experiment, report, teacher_source
from sddlib.config import RunConfig
from sddlib.departures import (PARAMS_DIR, departures, describe, published_file, teacher_description,
                               vanilla_departures)
from tests.fake_datasets import write_tiny_cifar100

SD_KD = PARAMS_DIR / "cifar100" / "resnet32x4-ShuffleV1-sd_kd.yaml"
PUBLISHED_TEACHER = {"source": "published", "path": "teachers/resnet32x4_vanilla/ckpt_epoch_240.pth"}


def config(path=SD_KD, **changes) -> RunConfig:
    return RunConfig.from_params({**yaml.safe_load(path.read_text()), **changes})


def test_the_published_file_with_another_seed_is_as_published():
    assert departures(config(), PUBLISHED_TEACHER) == (SD_KD, {})
    assert departures(config(seed=7), PUBLISHED_TEACHER) == (SD_KD, {})
    # the CIFAR-100 baseline is the SD file run with M=[1]
    assert departures(config(M="[1]"), PUBLISHED_TEACHER) == (SD_KD, {})
    # a notebook run with the file's values (not started from the file) is recognised as the same experiment
    assert departures(RunConfig.from_params({"dataset": "cifar100", "method": "kd", "student": "ShuffleV1",
                                             "lr": 0.01}), PUBLISHED_TEACHER) == (SD_KD, {})


def test_a_smoke_test_lists_what_it_changed():
    cfg = config(epochs=1, subset=256)
    path, found = departures(cfg, {"source": "trained here", "protocol": cfg.teacher_protocol})
    assert path == SD_KD
    assert found == {"epochs": [1, 240], "subset": [256, 0],
                     "teacher": ["trained here (subset 256)", "published"]}
    assert describe(found) == "epochs 1 (240), subset 256 (0), teacher trained here (subset 256) (published)"
    assert describe({}) == "as published" and describe(None) == "departures not recorded"
    assert describe({"experiment": ["resnet56-resnet20-sd_dkd", None]}) == "experiment resnet56-resnet20-sd_dkd " \
        "(none published)"


def test_speed_switches_are_as_published_only_at_their_defaults():
    assert departures(config(pipeline="auto"), PUBLISHED_TEACHER)[1] == {}
    assert departures(config(pipeline="workers"), PUBLISHED_TEACHER)[1] == {"pipeline": ["workers", "auto"]}
    assert departures(config(pipeline="device"), PUBLISHED_TEACHER)[1] == {"pipeline": ["device", "auto"]}


def test_an_optimizer_other_than_the_papers_sgd_is_a_departure():
    cfg = config(optimizer="adamw", lr_warmup_epochs=5)
    assert departures(cfg, PUBLISHED_TEACHER)[1] == {"optimizer": ["adamw", "sgd"], "lr_warmup_epochs": [5.0, 0.0]}
    assert describe(departures(cfg, PUBLISHED_TEACHER)[1]) == "optimizer adamw (sgd), lr_warmup_epochs 5 (0)"
    demo = RunConfig.from_params({"dataset": "digit_mosaic", "student": "ViT_micro_p4", "optimizer": "adamw"})
    teacher = {"source": "trained here", "protocol": demo.teacher_protocol}
    assert departures(demo, teacher)[1] == {"optimizer": ["adamw", "sgd"]}     # the teacher itself is as published
    assert vanilla_departures(demo, "ViT_micro_p4")[1] == {"optimizer": ["adamw", "sgd"]}


def test_teacher_sources_and_experiments_without_a_file():
    teacher_ckpt = {"source": "checkpoint", "path": "mine.pth"}
    assert departures(config(), teacher_ckpt)[1] == {"teacher": ["checkpoint mine.pth", "published"]}
    imagenet_kd = PARAMS_DIR / "imagenet" / "ResNet50-MobileNetV1-kd.yaml"
    weights = {"source": "torchvision weights", "weights": "IMAGENET1K_V1"}
    assert departures(config(imagenet_kd), weights) == (imagenet_kd, {})
    # an ImageNet SD file run with M=[1] is not the authors' plain baseline (its own file)
    sd_as_plain = config(PARAMS_DIR / "imagenet" / "ResNet50-MobileNetV1-sd_kd.yaml", M="[1]")
    assert published_file(sd_as_plain) == imagenet_kd
    assert set(departures(sd_as_plain, weights)[1]) == {"ce_weight", "kd_weight", "T"}
    # a pair the paper has no params file for has nothing to be compared with
    other = RunConfig.from_params({"dataset": "cifar100", "teacher": "resnet56", "student": "resnet20"})
    assert departures(other, PUBLISHED_TEACHER) == (None, {"experiment": ["resnet56-resnet20-sd_dkd", None]})
    # no paper for the digit mosaics: the dataset protocol and a teacher trained under its teacher protocol
    demo = RunConfig.from_params({"dataset": "digit_mosaic", "method": "kd", "seed": 3})
    assert departures(demo, {"source": "trained here", "protocol": demo.teacher_protocol}) == (None, {})
    shipped = {"source": "shipped", "path": "sddlib/teachers/digit_mosaic/resnet14.pth", "protocol": demo.teacher_protocol}
    assert teacher_description(shipped, "digit_mosaic") == "shipped with sddlib"
    assert departures(demo, shipped) == (None, {})            # trained under the same protocol as one trained here
    short = demo.replace(epochs=2)
    assert departures(short, {"source": "trained here", "protocol": short.teacher_protocol})[1] == {"epochs": [2, 8]}


def test_what_batchnorm_normalises_over_is_compared():
    """CIFAR-100 was run on one process (BatchNorm over 64), ImageNet on 2 x 256 with SyncBatchNorm (over 512)."""
    assert "bn_batch" not in config().fingerprint                        # earlier single-process runs keep theirs
    two = config().on_processes(2)
    assert two.bn_batch == 32 and two.fingerprint["bn_batch"] == 32
    assert departures(two, PUBLISHED_TEACHER)[1] == {"bn_batch": [32, 64]}
    assert describe(departures(two, PUBLISHED_TEACHER)[1]) == "BatchNorm batch 32 (64)"
    assert vanilla_departures(two, "ShuffleV1")[1] == {"bn_batch": [32, 64]}
    teacher = two.teacher_training_config()                 # a teacher trained on those processes
    assert teacher.processes == 2 and two.teacher_protocol["bn_batch"] == teacher.bn_batch == 32
    assert teacher_description({"source": "trained here", "protocol": two.teacher_protocol}, "cifar100") == \
        "trained here (bn_batch 32)"
    assert departures(config(sync_bn=True).on_processes(2), PUBLISHED_TEACHER)[1] == {}   # SyncBatchNorm on GPUs
    imagenet = PARAMS_DIR / "imagenet" / "ResNet50-MobileNetV1-sd_dkd.yaml"
    weights = {"source": "torchvision weights", "weights": "IMAGENET1K_V1"}
    assert departures(config(imagenet).on_processes(2), weights)[1] == {}               # the authors' 2 x 256
    assert departures(config(imagenet, sync_bn=False).on_processes(2), weights)[1] == {"bn_batch": [256, 512]}
    # on one process sync_bn changes nothing: BatchNorm sees the 512 images either way
    assert departures(config(imagenet, sync_bn=False), weights)[1] == {}


@pytest.mark.parametrize("key, other", [("precision", "bf16"), ("optimizer", "adamw"), ("lr_warmup_epochs", 2.0),
                                        ("lr_schedule", "cosine")])
def test_a_parameter_added_later_departs_whichever_side_sets_it(tmp_path, monkeypatch, key, other):
    """A fingerprint leaves out a parameter added later while it keeps its old value: the key missing on one side
    is still compared, so neither side's silence makes a run as published."""
    from sddlib import departures as module
    folder = tmp_path / "cifar100"
    folder.mkdir()
    (folder / SD_KD.name).write_text(yaml.safe_dump({**yaml.safe_load(SD_KD.read_text()), key: other}))
    monkeypatch.setattr(module, "PARAMS_DIR", tmp_path)
    assert key not in config().fingerprint
    assert departures(config(), PUBLISHED_TEACHER)[1] == {key: [config()[key], other]}
    monkeypatch.setattr(module, "PARAMS_DIR", PARAMS_DIR)
    assert departures(config(**{key: other}), PUBLISHED_TEACHER)[1] == {key: [other, config()[key]]}


def _metrics(cfg: RunConfig, teacher_source: dict, best: float) -> dict:
    """metrics.json as `experiment.run` writes it, with the departures `sddlib.departures` finds."""
    _, found = departures(cfg, teacher_source)
    return {"status": "complete", "run_name": cfg.name, "dataset": cfg.dataset, "teacher": cfg.teacher,
            "student": cfg.student, "method": cfg.method, "scales": list(cfg.scales), "sd": cfg.decoupled,
            "variant": cfg.variant, "seed": cfg.seed, "best_top1": best, "last_top1": best, "best_top5": 90.0,
            "last_top5": 90.0, "best_epoch": cfg.epochs, "teacher_top1": 79.4, "params": cfg.to_params(),
            "teacher_source": teacher_source, "departures": found}


def _write(root, name, metrics):
    path = root / metrics["dataset"] / name / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))


def test_only_runs_as_published_sit_beside_the_paper(tmp_path):
    smoke = config(epochs=1, subset=256)
    _write(tmp_path, "seed0", _metrics(config(seed=0), PUBLISHED_TEACHER, 76.0))
    _write(tmp_path, "seed1", _metrics(config(seed=1), PUBLISHED_TEACHER, 76.4))
    _write(tmp_path, "smoke", _metrics(smoke, {"source": "trained here", "protocol": smoke.teacher_protocol}, 1.17))
    _write(tmp_path, "workers", _metrics(config(seed=2, pipeline="workers"), PUBLISHED_TEACHER, 50.0))
    runs = report.load_runs(tmp_path)
    assert list(runs.sort_values("path").as_published) == [True, True, False, False]  # seed0 seed1 smoke workers
    row = report.results_table(runs, "cifar100").set_index(["teacher", "student", "method"]).loc
    sd = row["resnet32x4", "ShuffleV1", "sd_kd"]
    assert sd.n_runs == 2 and sd.ours_best == pytest.approx(76.2) and sd.paper == pytest.approx(76.30)
    assert row["resnet32x4", "ShuffleV1", "teacher"].teacher_from == "published"
    other = report.departures_table(runs, "cifar100")
    assert sorted(other.departures) == [
        "epochs 1 (240), subset 256 (0), teacher trained here (subset 256) (published)", "pipeline workers (auto)"]
    shown = report.format_departures(other)
    assert list(shown.columns[-2:]) == ["Departures", "Run"] and "1.17" in set(shown["Best top-1"])
    # a run recorded without departures is not known to be as published
    legacy = _metrics(config(seed=5), PUBLISHED_TEACHER, 99.0)
    del legacy["departures"]
    _write(tmp_path, "legacy", legacy)
    runs = report.load_runs(tmp_path)
    table = report.results_table(runs, "cifar100").set_index(["teacher", "student", "method"])
    assert table.loc[("resnet32x4", "ShuffleV1", "sd_kd"), "n_runs"] == 2
    assert "departures not recorded" in set(report.departures_table(runs, "cifar100").departures)
    # the written tables carry the same split
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report.write_tables(tmp_path)
    md = (tmp_path / "tables" / "cifar100.md").read_text()
    assert "runs not as published" in md and "pipeline workers (auto)" in md and "1.17" not in md.split("###")[0]
    csv = (tmp_path / "tables" / "cifar100-departures.csv").read_text()
    assert "epochs 1 (240)" in csv and "departures not recorded" in csv


@pytest.mark.slow  # trains a teacher and a student for one epoch each on 20 images
def test_a_smoke_test_run_records_its_departures_and_stays_out_of_the_paper_table(tmp_path, capsys, monkeypatch):
    """On a node without network (the published release cannot be fetched) and with permission to train the
    teacher here."""
    import urllib.error

    from sddlib import checkpoints

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(checkpoints.urllib.request, "urlopen", offline)
    write_tiny_cifar100(tmp_path / "data")
    params = {**yaml.safe_load(SD_KD.read_text()), "epochs": 1, "subset": 20, "batch_size": 10,
              "teacher_epochs": 1, "data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out"),
              "figures": False, "progress": False, "device": "cpu", "allow_teacher_training": True}
    metrics = experiment.run(params)
    out = capsys.readouterr().out
    assert "published teacher resnet32x4 unavailable (could not fetch" in out
    assert metrics["published_params"] == "params/cifar100/resnet32x4-ShuffleV1-sd_kd.yaml"
    assert metrics["departures"] == {"epochs": [1, 240], "batch_size": [10, 64], "subset": [20, 0],
                                     "teacher": ["trained here (epochs 1, subset 20)", "published"]}
    last = out.strip().splitlines()[-1]
    assert "; departs from the published settings: epochs 1 (240), batch_size 10 (64), subset 20 (0), " \
           "teacher trained here (epochs 1, subset 20) (published); log " in last and last.endswith("log.txt")
    teacher_run = experiment.load_metrics(teacher_source.teacher_run_dir(params) / "metrics.json")
    assert teacher_run["departures"] == {"epochs": [1, 240], "subset": [20, 0]}
    runs = report.load_runs(tmp_path / "out")
    assert not runs.as_published.any()
    table = report.results_table(runs, "cifar100")
    assert table.n_runs.sum() == 0 and set(table.teacher_from) == {""}
    assert set(report.departures_table(runs, "cifar100").run_name) == {metrics["run_name"], "resnet32x4-teacher-seed0"}


def test_an_m_outside_the_papers_three_is_a_departure_on_every_dataset():
    assert departures(config(M="[1,2,4,8]"), PUBLISHED_TEACHER)[1] == {"M": ["[1,2,4,8]", "[1,2,4]"]}
    demo = RunConfig.from_params({"dataset": "digit_mosaic", "method": "kd", "M": "[1,2,4,8]"})
    found = departures(demo, {"source": "trained here", "protocol": demo.teacher_protocol})[1]
    assert found == {"M": ["[1,2,4,8]", "[1], [1,2] or [1,2,4]"]}       # no paper here: compared with the paper's M
    assert describe(found) == "M [1,2,4,8] ([1], [1,2] or [1,2,4])"
    for paper_m in ("[1]", "[1,2]", "[1,2,4]"):
        assert departures(demo.replace(M=paper_m), {"source": "trained here", "protocol": demo.teacher_protocol}) \
            == (None, {})
