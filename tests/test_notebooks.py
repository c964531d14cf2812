"""The real notebooks on tiny datasets in the real on-disk formats. The three dataset notebooks share their code
cells (a test proves it): CIFAR-100's is executed headlessly with papermill end to end, ImageNet's and CUB-200's
code cells run in this process after their parameters (what papermill's kernel would run, without its ~15 s of
imports). They train (a few epochs each): all `slow`, left out by `make test-fast`; on one xdist worker (conftest's
ONE_WORKER), since the last test reads the runs of the others."""
import contextlib
import json
import os
import re
import urllib.error
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest
import torch
from PIL import Image

from executed import check_readable
from fake_datasets import write_tiny_cifar100, write_tiny_cub200, write_tiny_imagenet
from sddlib import experiment, report, viz
from sddlib.checkpoints import CheckpointError
from sddlib.config import ConfigError, RunConfig
from sddlib.data import DatasetNotFoundError
from sddlib.models import create_model

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
pytestmark = pytest.mark.slow
DATASET_NOTEBOOKS = ("cifar100", "imagenet", "cub200")
FAST = dict(epochs=2, teacher_epochs=1, batch_size=8, lr_decay_stages=[1], progress=False)


def execute(name, out_dir, **parameters):
    output = Path(out_dir) / f"{name}.executed.ipynb"
    pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(output), parameters=parameters, cwd=str(REPO),
                        kernel_name="python3", progress_bar=False)
    return json.loads(output.read_text())


def code_cells(name):
    """(tags, source) of each code cell of a notebook."""
    cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
    return [(c["metadata"].get("tags", []), "".join(c["source"])) for c in cells if c["cell_type"] == "code"]


def run_in_process(name, **parameters):
    """A notebook's code cells in this process, as papermill's kernel runs them: the parameters cell, then
    `parameters` (papermill's injected cell), then every other code cell in order; the namespace they leave."""
    namespace = {}
    for tags, source in code_cells(name):
        exec(compile(source, f"{name}.ipynb", "exec"), namespace)
        if "parameters" in tags:
            namespace.update(parameters)
    return namespace


def only_run(output_dir, dataset):
    metrics = [json.loads(p.read_text()) for p in (Path(output_dir) / dataset).glob("*/metrics.json")]
    distilled = [m for m in metrics if m["variant"] not in ("alone", "teacher")]   # not the teacher trained here
    assert len(distilled) == 1, [m["run_name"] for m in metrics]
    return distilled[0]


def assert_figures(run_dir, expect_history=True, expect_features=True):
    for key, name in viz.FIGURE_FILES.items():
        path = Path(run_dir) / "figures" / name
        if key == "category_history" and not expect_history:
            continue
        if key in ("tsne", "correlation") and not expect_features:
            assert not path.exists(), path
            continue
        assert path.is_file(), path
        width, height = Image.open(path).size
        assert width > 300 and height > 200
        frame = pd.read_csv(viz.csv_path(path))                      # its data beside it
        assert len(frame.columns) >= 4 and (len(frame) > 0 or key == "per_class")   # M=[1]: nothing complementary


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # a second worker building this would not see the first one's runs: fail loudly, not late
        claim = tmp_path_factory.getbasetemp().parent / "test_notebooks.worker"
        with contextlib.suppress(FileExistsError), open(claim, "x") as first:
            first.write(worker)
        assert claim.read_text() == worker, f"tests/test_notebooks.py ran on {claim.read_text()} and {worker}: its " \
            "tests must share one worker (tests/conftest.py, ONE_WORKER)"
    root = tmp_path_factory.mktemp("notebooks")
    return {"root": root, "outputs": root / "outputs"}


def test_cifar100_notebook_headline_run(work, tiny_cifar100):
    data = tiny_cifar100                            # 32 training and 16 test images
    nb = execute("cifar100", work["root"], M="[1,2,4]", teacher="resnet8", student="resnet8", lr=0.05,
                 data_dir=str(data), output_dir=str(work["outputs"]), subset=32, allow_teacher_training=True, **FAST)
    m = only_run(work["outputs"], "cifar100")
    assert m["variant"] == "sd_dkd" and m["scales"] == [1, 2, 4] and m["params"]["beta"] == 8.0
    assert "runs not as published" in (work["outputs"] / "tables" / "cifar100.md").read_text()   # its tables
    top1 = [row["top1"] for row in m["history"]]
    assert len(top1) == 2 and m["best_top1"] == max(top1) and m["last_top1"] == top1[-1]
    assert m["best_epoch"] == 1 + top1.index(max(top1))
    assert all(100 * round(t * 16 / 100) / 16 == pytest.approx(t) for t in top1)   # k of the 16 test images
    assert m["params"]["data_dir"] == str(data)
    assert_figures(work["outputs"] / "cifar100" / m["run_name"])
    text = json.dumps(nb)
    assert "Figure 1" in text and text.count("image/png") == len(viz.FIGURE_FILES) + 1   # with captions; curves
    assert "Best and last epoch" in text and "top-1" in text              # the results section
    run = work["outputs"] / "cifar100" / m["run_name"]
    assert f"{m['run_name']}: last top-1" in text and "epoch 2/2" not in text   # one line for the run...
    assert "epoch 2/2" in (run / "log.txt").read_text()                   # ... its epochs in its log
    check_readable(nb)
    assert f"-p run_dir {run}" in text                                     # next: the explorer on this run


def test_the_dataset_notebooks_share_their_code_cells():
    """Apart from the parameters cell and the dataset's name, the ImageNet and CUB-200 notebooks run exactly the
    CIFAR-100 notebook's code, so the papermill run of that one executes theirs too."""
    def shared(name):
        cells = code_cells(name)
        assert ["parameters" in tags for tags, _ in cells].count(True) == 1 and "parameters" in cells[0][0]
        assert sum(f'dataset="{name}"' in source for _, source in cells) == 1
        return [source.replace(f'dataset="{name}"', 'dataset="<name>"') for _, source in cells[1:]]
    reference = shared("cifar100")
    assert len(reference) >= 5
    for name in DATASET_NOTEBOOKS[1:]:
        assert shared(name) == reference, name


def test_cub200_notebook(work, tiny_cub200, tmp_path):
    """The notebook's cells in this process, with a teacher checkpoint (none trained here) and a batch of 6 that
    the 6 training images fill (the CUB-200 loader drops a partial last batch)."""
    teacher = tmp_path / "resnet8x4.pth"
    stem = RunConfig.from_params({"dataset": "cub200"}).stem                 # CUB-200's networks' input layers
    torch.save({"model": create_model("resnet8x4", num_classes=200, stem=stem).state_dict()}, teacher)
    run_in_process("cub200", teacher="resnet8x4", student="MobileNetV2", method="nkd", M="[1,2]",
                   teacher_ckpt=str(teacher), data_dir=str(tiny_cub200), output_dir=str(work["outputs"]),
                   feature_figures=False, **{**FAST, "batch_size": 6})
    m = only_run(work["outputs"], "cub200")
    assert m["variant"] == "sd_nkd" and m["params"]["gamma"] == 8.0 and m["params"]["T"] == 4.0
    assert m["teacher_source"]["source"] == "checkpoint" and len(m["history"]) == 2
    assert (work["outputs"] / "tables" / "cub200.md").is_file()                          # the tables cell
    assert_figures(work["outputs"] / "cub200" / m["run_name"], expect_features=False)   # the switch for sweeps


def test_imagenet_notebook(work, tiny_imagenet):
    namespace = run_in_process("imagenet", method="kd", M="[1]", teacher_weights="", data_dir=str(tiny_imagenet),
                               output_dir=str(work["outputs"]), subset=6, **{**FAST, "batch_size": 4})
    m = only_run(work["outputs"], "imagenet")
    assert namespace["metrics"]["run_name"] == m["run_name"]
    assert m["variant"] == "kd" and m["teacher"] == "ResNet50" and m["student"] == "MobileNetV1"
    assert (work["outputs"] / "tables" / "imagenet.md").is_file()
    assert_figures(work["outputs"] / "imagenet" / m["run_name"])


def test_quickstart_notebook(work, mosaic_dir):
    out = work["outputs"] / "quickstart"
    nb = execute("quickstart", work["root"], subset=64, epochs=1, teacher_epochs=1, method="dkd",
                 seeds=[0, 1], output_dir=str(out), data_dir=str(mosaic_dir), teacher="resnet14")
    metrics = [json.loads(p.read_text()) for p in out.glob("digit_mosaic/*/metrics.json")]
    assert sorted(m["run_name"] for m in metrics if m["variant"] in ("alone", "teacher")) == [
        "resnet14-teacher-seed0", "resnet8-alone-seed0", "resnet8-alone-seed1"]     # one teacher for both seeds
    assert sorted((m["variant"], m["seed"]) for m in metrics if m["variant"] not in ("alone", "teacher")) == sorted(
        (v, s) for v in ("dkd", "sd_dkd") for s in (0, 1))                    # the methods asked for, not KD
    assert all(m["params"]["lr"] == 0.05 and m["params"]["lr_decay_stages"] == [5, 7] for m in metrics)  # protocol
    assert all(m["params"]["channels_last"] for m in metrics)                   # the quickstart's faster layout
    for m in metrics:                                   # figures for the SD runs of the first seed only
        shown = m["variant"].startswith("sd_") and m["seed"] == 0
        assert (out / "digit_mosaic" / m["run_name"] / "figures").is_dir() == shown, m["run_name"]
    assert_figures(out / "digit_mosaic" / "resnet14-resnet8-sd_dkd-M124-seed0")
    text = json.dumps(nb, ensure_ascii=False)
    assert "(n=2)" in text and "± " in text                                   # mean ± std over the two seeds
    assert "of 2 seeds" in text                                               # the paired SD gains
    assert text.count("image/png") == len(viz.FIGURE_FILES) + 1                  # the run's figures, the curves
    check_readable(nb)                                                        # pictures as PNG, short outputs
    assert "covering" in text and "class-stratified sample" in text              # what the figures are drawn from
    tables = out / "tables"                                                   # the shown tables, beside the runs
    assert len(pd.read_csv(tables / "quickstart.csv")) >= 2                  # DKD and SD-DKD rows at least
    assert "SD-DKD" in (tables / "quickstart.md").read_text() and (tables / "quickstart-sd-gains.csv").is_file()
    assert "jit.script" not in text and "<progress" not in text               # no warning, no bar headless
    assert "epoch 1/1 " not in text                                            # one summary line per run...
    runs = sorted((out / "digit_mosaic").glob("*/metrics.json"))
    for path in runs:                                                         # ... its epoch lines in its log
        assert "epoch 1/1 " in (path.parent / "log.txt").read_text() and f"{path.parent / 'log.txt'}" in text
    assert "resnet14 teacher: last top-1" in text                             # a teacher trained here says so
    assert (tables / "quickstart-learning-curves.csv").is_file()
    assert "SD-DKD − DKD, last epoch: " in text and "95 % interval over seeds and test images" in text
    assert "complementary regions on the finer grids" in text                 # what they lie on, counted
    assert "Explore this SD run" in text and str(out / "digit_mosaic" / "resnet14-resnet8-sd_dkd-M124-seed0") in text
    assert "your_data.ipynb" in text.split("What to do next")[-1]             # the next step: your own images


def test_results_tables_of_the_notebook_runs(work):
    if not list(work["outputs"].glob("*/*/metrics.json")):
        pytest.skip("needs the runs of the notebook tests above (run the whole file)")
    report.write_tables(work["outputs"])   # the results notebook's call (test_report executes that notebook)
    tables = work["outputs"] / "tables"
    cifar = pd.read_csv(tables / "cifar100.csv")
    assert cifar.n_runs.sum() == 0                      # the short test runs never sit beside the paper...
    paper = cifar[(cifar.teacher == "resnet32x4") & (cifar.student == "ShuffleV1") & (cifar.method == "sd_dkd")]
    assert paper.paper.iloc[0] == pytest.approx(77.30)
    others = pd.read_csv(tables / "cifar100-departures.csv")  # ... but apart, with what they changed
    ours = others[(others.teacher == "resnet8") & (others.method == "SD-DKD")]
    assert len(ours) == 1 and "epochs 2 (240)" in ours.departures.iloc[0] and "subset 32 (0)" in ours.departures.iloc[0]
    assert "runs not as published" in (tables / "cifar100.md").read_text()
    assert (tables / "cub200.md").is_file() and (tables / "imagenet.md").is_file()
    digits = pd.read_csv(tables / "digit_mosaic-departures.csv")
    assert set(digits.method) >= {"Trained alone", "DKD", "SD-DKD"}


def notebook_defaults(name):
    """The values a notebook's parameters cell sets, as its kernel holds them before papermill's injection."""
    cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
    namespace = {}
    exec(source, namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


BAD_INPUT = [
    (dict(M="[1,3,2]"), ConfigError, r"^scales '\[1,3,2\]' is not supported; use an increasing list of grid sizes "
                                     r"starting at 1"),
    (dict(method="fitnet"), ConfigError, r"^method 'fitnet' is unknown; use one of .*\bdkd\b"),
    (dict(data_dir="EMPTY"), DatasetNotFoundError, r"^CIFAR-100 not found under .*empty \(expected .*; download "
                                                   r"failed: URLError: .*; put .*cifar-100-python.tar.gz\) there"),
    (dict(teacher_ckpt="WRONG"), CheckpointError, r"^teacher checkpoint .*resnet20\.pth is not a resnet8: "),
]


def bad_input_parameters(tmp_path, parameters):
    parameters = {**FAST, "teacher": "resnet8", "student": "resnet8", "subset": 8,
                  "output_dir": str(tmp_path / "outputs"), **parameters}
    if parameters.get("data_dir") == "EMPTY":
        parameters["data_dir"] = str(tmp_path / "empty")
    else:
        data = tmp_path / "cifar"
        write_tiny_cifar100(data, n_train=8, n_test=8)
        parameters.setdefault("data_dir", str(data))
    if parameters.get("teacher_ckpt") == "WRONG":
        wrong = tmp_path / "resnet20.pth"
        torch.save({"model": create_model("resnet20").state_dict()}, wrong)
        parameters["teacher_ckpt"] = str(wrong)
    return parameters


def assert_one_sentence(message: str) -> None:
    """One line, one sentence: ends with a full stop and no other sentence starts inside it ("e.g. [" does not)."""
    assert "\n" not in message and message.endswith(".") and not re.search(r"[.!?] [A-Z]", message), message


@pytest.mark.parametrize("parameters,error,message", BAD_INPUT)
def test_bad_input_is_one_sentence_in_the_notebooks_own_calls(tmp_path, monkeypatch, parameters, error, message):
    """Every case, in this process: the notebook's parameters cell, then its calls (a kernel per case would cost
    ~15 s of imports each; test_config checks a bad value through papermill, where the sentence ends the output).
    Offline, as test_data's missing-data tests: an empty data_dir would otherwise download CIFAR-100."""
    import torchvision.datasets.utils as tv_utils

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(tv_utils, "download_url", no_network)
    namespace = {**notebook_defaults("cifar100"), **bad_input_parameters(tmp_path, parameters)}
    with pytest.raises(error, match=message) as err:
        experiment.run(experiment.notebook_params(namespace, dataset="cifar100"), force=namespace["force"])
    assert type(err.value) is error                                     # not a subclass raised deeper down
    assert_one_sentence(str(err.value))
    assert not list((tmp_path / "outputs").glob("**/metrics.json"))   # nothing half-written
