"""One description per dataset (issue 28): a sixth dataset registered in one module (tests/spine_dataset.py) runs
through `experiment.run`, a sweep with `--jobs 2` (memory planning included), the report tables and the results
page; and a sweep over two `dataset: folder` params files that differ only in seed, with `--jobs 2`, runs each seed
and ends with its report and page."""
import pytest
import yaml

from sddlib import experiment, report, report_page, run_memory, sweep
from sddlib.config import RunConfig
from sddlib.data.spec import DATASETS, registering_modules
from sddlib.preflight import check_environment
from tests import spine_dataset
from tests.test_folder import write_folder


def test_a_registered_dataset_is_known_to_the_configuration_and_the_planner(tmp_path):
    cfg = RunConfig.from_params({"dataset": "stripes", "output_dir": str(tmp_path)})
    assert (cfg.teacher, cfg.student, cfg.stem, cfg.epochs, cfg.batch_size) == ("resnet8", "resnet8", "cifar", 2, 8)
    assert cfg.data_pipeline == "device" and cfg.num_classes == 4 and cfg.directory.parent.name == "stripes"
    check_environment(cfg)
    assert run_memory.train_images(cfg) == spine_dataset.N_TRAIN
    assert "tests.spine_dataset" in registering_modules()   # the memory probe's fresh process imports it
    assert report.title("stripes") == "Stripes" and "stripes" not in report.PAPER_DATASETS


def _write_params(path, **params):
    path.write_text(yaml.safe_dump(params))
    return str(path)


@pytest.mark.slow
def test_a_sixth_dataset_runs_through_run_sweep_tables_and_page(tmp_path):
    out = tmp_path / "out"
    metrics = experiment.run({"dataset": "stripes", "output_dir": str(out), "progress": False, "num_workers": 0})
    assert metrics["status"] == "complete" and metrics["teacher_source"]["source"] == "trained here"
    assert metrics["figures"] and metrics["departures"] == {"experiment": ["your data", None]}
    files = [_write_params(tmp_path / f"{m}.yaml", dataset="stripes", method=m, M="[1]") for m in ("kd", "dkd")]
    assert sweep.main([*files, "--jobs", "2", "-p", "output_dir", str(out)]) == 0
    runs = report.load_runs(out)
    assert set(runs[runs.dataset == "stripes"].variant) == {"teacher", "sd_dkd", "kd", "dkd"}
    report.write_tables(out)
    assert (out / "tables" / "stripes.md").read_text().startswith("## Stripes: our runs")
    page = report_page.write_report(out).read_text()
    assert '<h2 id="stripes">Stripes: our runs' in page and "resnet8-resnet8-kd-M1-seed0" in page


@pytest.mark.slow
def test_a_sweep_of_two_folder_params_files_with_two_jobs_runs_each_seed_and_ends_with_its_report(tmp_path, capsys):
    # resnet14 -> resnet8 on 32-pixel images: the memory probe must see the folder's image size (on main it built
    # the 224-pixel models' stem and refused resnet14), and the summary the folder's size (on main: KeyError).
    # The files differ only in seed: each notebook runs its file's seed (issue 38: your_data.ipynb took `seeds` only
    # and ran seed 0 twice, one job stopped on the locked resnet8-alone-seed0, the other left no ...-seed1 folder)
    folder, out = write_folder(tmp_path / "pets", per_class=6), tmp_path / "out"
    files = [_write_params(tmp_path / f"seed{seed}.yaml", dataset="folder", data_dir=str(folder), image_size=32,
                           teacher="resnet14", student="resnet8", method="kd", seed=seed, epochs=1,
                           teacher_epochs=1, lr_decay_stages=[1], teacher_lr_decay_stages=[1], batch_size=4,
                           num_workers=0, figures=False, output_dir=str(out)) for seed in (0, 1)]
    assert sweep.main([*files, "--jobs", "2"]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "memory: 2 jobs x" in text and "3 done, 0 skipped, 0 failed" in text, text   # the teacher first, once
    assert "results page:" in text and (out / "report.html").is_file()
    complete = {path.parent.name for path in out.glob("pets/*/metrics.json") if experiment.load_metrics(path)}
    assert complete == {"resnet14-teacher-seed0", *(f"{run}-seed{seed}" for seed in (0, 1) for run in (
        "resnet8-alone", "resnet14-resnet8-kd-M1", "resnet14-resnet8-sd_kd-M124"))}
    assert DATASETS["folder"].image_sizes(tmp_path / "pets", 0.2, 32) == (15, 3, 32)   # 1 of 6 per class held out


def test_python_m_sddlib_params_lists_every_parameter_with_its_documentation(capsys):
    import dataclasses

    from sddlib.__main__ import main as cli
    assert cli(["--params"]) == 0
    text = capsys.readouterr().out
    fields = [f for f in dataclasses.fields(RunConfig) if f.metadata.get("parameter", True)]
    for f in fields:
        name = "M" if f.name == "scales" else f.name
        assert f"\n{name} ({f.type}, default " in f"\n{text}", name
        assert f.metadata["doc"] in text, name
    assert text.count("\n    accepts: ") == len(fields)
