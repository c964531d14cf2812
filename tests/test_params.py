"""params/: one papermill file per experiment of the paper's tables, values equal to the authors' configs.

SD files come from the authors' SDD configs (experiments.yaml); on ImageNet the plain baselines have files of their
own, from the authors' plain configs (imagenet_baselines.yaml), because their ImageNet SD models cannot run M=[1].
"""
import hashlib
from pathlib import Path

import pytest
import yaml

from sddlib import experiment, report
from sddlib.data.spec import DATASETS
from sddlib.models import list_models

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params"
FILES = sorted(PARAMS.glob("*/*.yaml"))
SD_FILES = [f for f in FILES if "-sd_" in f.stem]
BASELINE_FILES = [f for f in FILES if "-sd_" not in f.stem]
SOLVER = ("epochs", "batch_size", "lr", "lr_decay_stages", "lr_decay_rate", "weight_decay", "momentum")
LOSS = ("ce_weight", "kd_weight", "warmup_epochs", "T", "alpha", "beta", "gamma")

# The authors' configs name their ImageNet MobileNetV1 student "MobileNetV2" (reference README).
AUTHORS_NAMES = {("imagenet", "MobileNetV2"): "MobileNetV1"}
# The authors' ImageNet batch is per process and they ran 2 processes with SyncBatchNorm: one process runs the total.
IMAGENET_PROCESSES = 2
# The authors' published r34_r18 SD-DKD config says batch 4: a debugging leftover (an earlier commit of the same
# file and its sdd_kd/sdd_nkd siblings say 256 per process). The params file uses 2 x 256 and says so.
BATCH4_CONFIG = "configs/imagenet/r34_r18/sdd_dkd.yaml"


def _student(e: dict) -> str:
    return AUTHORS_NAMES.get((e["dataset"], e["student"]), e["student"])


def _authors_config(p: dict) -> dict:
    hits = [e for e in report.authors_experiments()
            if (e["dataset"], e["teacher"], _student(e), e["method"]) ==
            (p["dataset"], p["teacher"], p["student"], p["method"])]
    assert len(hits) == 1, f"{len(hits)} authors' configs for {p}"
    return hits[0]


def _authors_baseline(p: dict) -> dict:
    hits = [b for b in report.imagenet_baselines()
            if (b["teacher"], b["student"], b["method"]) == (p["teacher"], p["student"], p["method"])]
    assert len(hits) == 1, f"{len(hits)} authors' baseline configs for {p}"
    return hits[0]


def _expected(e: dict) -> dict:
    """The params file a config of experiments.yaml must give (the rules of the brief, written once)."""
    loss, method = e["loss"], e["method"]
    scales = e["sd_scales_used_by_authors"]
    want = {"dataset": e["dataset"], "teacher": e["teacher"], "student": _student(e), "method": method,
            "recipe": method, "M": scales[0] if scales else "[1,2,4]", **{k: e["solver"][k] for k in SOLVER},
            "ce_weight": loss["ce_weight"], "kd_weight": loss["kd_weight"] if method == "kd" else 1.0,
            "warmup_epochs": loss["warmup_epochs"], "T": loss["temperature"]}
    if method == "dkd":
        want.update(alpha=loss["alpha"], beta=loss["beta"])
    if method == "nkd":
        want["gamma"] = loss["gamma"]
    if e["dataset"] == "imagenet":
        want["teacher_weights"] = "IMAGENET1K_V1"
        per_process = 256 if e["source"] == BATCH4_CONFIG else e["solver"]["batch_size"]
        want["batch_size"] = IMAGENET_PROCESSES * per_process
    return want


def _expected_baseline(b: dict) -> dict:
    """The params file of an entry of imagenet_baselines.yaml: its values exactly, run as the plain method."""
    return {"dataset": "imagenet", "teacher": b["teacher"], "student": b["student"], "method": b["method"],
            "recipe": b["method"], "M": "[1]", "teacher_weights": "IMAGENET1K_V1", **b["solver"], **b["loss"]}


def _paper_rows(p: dict):
    paper = report.paper_results()
    return paper[(paper.dataset == p["dataset"]) & (paper.teacher == p["teacher"]) & (paper.student == p["student"])]


def _load(path: Path) -> tuple[str, dict]:
    text = path.read_text()
    p = yaml.safe_load(text)
    assert isinstance(p, dict)
    assert set(p) <= set(experiment.DEFAULTS)
    experiment.resolve_params(p)  # accepted as it is
    stem = DATASETS[p["dataset"]].stem
    assert {p["teacher"], p["student"]} <= set(list_models(stem)), f"{path.name}: no such {stem!r} model"
    assert path.parent.name == p["dataset"]
    return text, p


def test_grid_is_the_papers_tables():
    paper = report.paper_results()
    sd = paper[paper.method.str.startswith("sd_")]
    expected = {PARAMS / r.dataset / f"{r.teacher}-{r.student}-{r.method}.yaml" for r in sd.itertuples()}
    # every ImageNet SD config of the authors, also the ResNet-34 -> ResNet-18 pair the paper has no numbers for
    expected |= {PARAMS / "imagenet" / f"{e['teacher']}-{_student(e)}-sd_{e['method']}.yaml"
                 for e in report.authors_experiments() if e["dataset"] == "imagenet"}
    assert set(SD_FILES) == expected
    baselines = {PARAMS / "imagenet" / f"{b['teacher']}-{b['student']}-{b['method']}.yaml"
                 for b in report.imagenet_baselines()}
    assert set(BASELINE_FILES) == baselines
    plain_imagenet = paper[(paper.dataset == "imagenet") & paper.method.isin(["kd", "dkd", "nkd"])]
    assert {PARAMS / "imagenet" / f"{r.teacher}-{r.student}-{r.method}.yaml"
            for r in plain_imagenet.itertuples()} <= baselines   # each paper baseline row has its file
    assert len(SD_FILES) == 18 + 15 + 6 and len(BASELINE_FILES) == 6


@pytest.mark.parametrize("path", SD_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_sd_file(path):
    text, p = _load(path)
    assert path.stem == f"{p['teacher']}-{p['student']}-sd_{p['method']}"
    e = _authors_config(p)
    assert e["solver"]["optimizer"] == "SGD"
    assert p == _expected(e)  # every value is the authors', no key more or less
    # the header: where the values come from, the paper's numbers, how to run the baseline
    assert e["source"] in text
    row = _paper_rows(p)
    if len(row):
        for method in (p["method"], f"sd_{p['method']}"):
            assert f"{row[row.method == method].top1.iloc[0]:.2f}" in text
    else:
        assert p["dataset"] == "imagenet" and "Paper: no numbers for this pair" in text
    if p["dataset"] == "imagenet":
        assert f"params/imagenet/{p['teacher']}-{p['student']}-{p['method']}.yaml" in text
        assert "2 processes x 256 with SyncBatchNorm" in text
    else:
        assert 'the same file with -p M "[1]"' in text


@pytest.mark.parametrize("path", BASELINE_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_imagenet_baseline_file(path):
    text, p = _load(path)
    assert p["dataset"] == "imagenet" and path.stem == f"{p['teacher']}-{p['student']}-{p['method']}"
    b = _authors_baseline(p)
    assert p == _expected_baseline(b)  # exactly the authors' plain config, no key more or less
    assert b["source"] in text and "imagenet_baselines.yaml" in text
    row = _paper_rows(p)
    if len(row):
        assert f"{row[row.method == p['method']].top1.iloc[0]:.2f}" in text
    else:
        assert "Paper: no numbers for this pair" in text
    assert "run this baseline from this file only" in text


def test_imagenet_baselines_differ_from_the_sd_configs_where_the_authors_did():
    """Why the baselines need their own files: KD and NKD differ from the SD config run with M=[1]."""
    for path in BASELINE_FILES:
        base = yaml.safe_load(path.read_text())
        sd_path = path.with_name(path.name.replace(f"-{base['method']}.", f"-sd_{base['method']}."))
        sd = yaml.safe_load(sd_path.read_text())
        differs = {k for k in LOSS if base.get(k) != sd.get(k)}
        assert bool(differs) == (base["method"] != "dkd"), (path.name, differs)


def test_imagenet_batch_is_512_everywhere():
    assert DATASETS["imagenet"].protocol["batch_size"] == 512
    for path in PARAMS.glob("imagenet/*.yaml"):
        assert yaml.safe_load(path.read_text())["batch_size"] == 512, path.name


def test_imagenet_batch_size_quirk_is_recorded():
    assert [e["solver"]["batch_size"] for e in report.authors_experiments() if e["source"] == BATCH4_CONFIG] == [4]
    text = (PARAMS / "imagenet" / "ResNet34-ResNet18-sd_dkd.yaml").read_text()
    assert yaml.safe_load(text)["batch_size"] == 512 and "debugging leftover" in text


# sha256 of the reference tables the package ships, pinned here so that every clone checks them (they are copies of
# the project's shared/reference/, which a fresh clone does not have): the paper's numbers and the authors' configs
# that the params, report and model tests read. A change to one of them is a change of published facts: say why
# in the commit and update its hash.
REFERENCE_SHA256 = {
    "paper_results.csv": "d9ccf137603204d093c47bd4c04a8478e826b6a86b123aff6594a247f1b48a29",
    "experiments.yaml": "f0d733a1cddafb939b9d02ab744a8c2f2b5caa44fccedfb00ff87fc5b71223f8",
    "imagenet_baselines.yaml": "1b9d6a6b5004fbc5cbe4eb31209e1d05eb4710293fbe0b7c96d1e31aa389b6ce",
    "authors_logged_runs.csv": "ad1212a682e5c5758d79f5d2b377403930090c2445f5bc792ad14106e9c01c70",
    "cifar_state_dicts.json": "51cd78d84bd4c2878f244daa80a199f7e88a18dfd4eca2149dd8bc5f32a3114d",
}


@pytest.mark.parametrize("name", sorted(REFERENCE_SHA256))
def test_package_reference_tables_are_the_pinned_ones(name):
    data = (REPO / "sddlib" / "reference" / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == REFERENCE_SHA256[name], f"sddlib/reference/{name} changed"
