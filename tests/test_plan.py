"""A table as one plan (`sddlib.plan`, run by `sddlib.sweep`): every run it needs, each once, teachers settled
first, and the plan file the dry run's twin. Tiny CIFAR-100 and CUB-200 in their real on-disk formats; the published
teachers in the authors' release layout."""
import json
from pathlib import Path

import pytest
import yaml

from fake_datasets import write_teacher_release
from sddlib import experiment, sweep
from sddlib.__main__ import main as cli
from sddlib.plan import Plan, PlannedRun, build_plan

FAST = {"epochs": 1, "subset": 16, "batch_size": 8, "lr_decay_stages": [1], "progress": False,
        "feature_figures": False, "device": "cpu", "num_workers": 0}


def sd_files(folder, dataset, teacher, student, methods, lr=0.05) -> list[str]:
    """Params files of SD rows as params/ holds them (flat YAML), one per method."""
    files = []
    for method in methods:
        path = Path(folder) / f"{teacher}-{student}-sd_{method}.yaml"
        path.write_text(yaml.safe_dump({"dataset": dataset, "teacher": teacher, "student": student,
                                        "method": method, "M": "[1,2,4]", "lr": lr}))
        files.append(str(path))
    return files


def pairs(**values) -> list[tuple[str, str]]:
    """FAST with `values` as the sweep's `-p KEY VALUE` pairs."""
    return [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in {**FAST, **values}.items()]


def overrides(**values) -> list[str]:
    return [a for k, v in pairs(**values) for a in ("-p", k, v)]


def fake_notebook(executed):
    """papermill's execute_notebook standing in for the dataset notebook: records the run and writes the complete
    metrics.json the notebook's run would (the students alone are trained for real)."""
    def execute(nb, out_nb, parameters, cwd, **kwargs):
        cfg = experiment.RunConfig.from_params(parameters)
        executed.append(cfg.name)
        Path(out_nb).parent.mkdir(parents=True, exist_ok=True)
        (Path(out_nb).parent / "metrics.json").write_text(json.dumps({
            "status": "complete", "run_name": cfg.name, "dataset": cfg.dataset, "teacher": cfg.teacher,
            "student": cfg.student, "method": cfg.method, "scales": list(cfg.scales), "sd": cfg.decoupled,
            "variant": cfg.variant, "seed": cfg.seed, "best_top1": 50.0, "last_top1": 49.0, "history": [],
            "params": cfg.to_params(), "departures": {"subset": [16, 0]}}))
    return execute


@pytest.mark.trains  # the students alone (1 epoch on 16 images each)
def test_a_table_of_two_sd_files_over_two_seeds_lists_then_runs_each_run_once(tmp_path, tiny_cifar100, capsys,
                                                                               monkeypatch):
    files = sd_files(tmp_path, "cifar100", "resnet14", "resnet8", ("kd", "dkd"))
    teachers = write_teacher_release(tmp_path / "teachers", ["resnet14"], num_classes=100)
    out = tmp_path / "out"
    args = [*files, "--seeds", "0", "1", *overrides(data_dir=str(tiny_cifar100), output_dir=str(out),
                                                    teachers_dir=str(teachers))]
    expected = {("sd", f"resnet14-resnet8-sd_{m}-M124-seed{s}") for m in ("kd", "dkd") for s in (0, 1)} | \
               {("baseline", f"resnet14-resnet8-{m}-M1-seed{s}") for m in ("kd", "dkd") for s in (0, 1)} | \
               {("alone", f"resnet8-alone-seed{s}") for s in (0, 1)}     # one per student and seed, not per row
    assert sweep.main([*args, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [tuple(line.split()[2:4]) for line in lines[:-1]]
    assert sorted(listed) == sorted(expected) and all(line.startswith("to run ") for line in lines[:-1])
    assert [line.split()[2] for line in lines[:-1]] == ["alone"] * 2 + ["baseline"] * 4 + ["sd"] * 4
    assert all(("teacher: published file" in line) == (kind != "alone") for line, (kind, _) in zip(lines, listed))
    assert lines[-1] == "plan: 10 runs (0 teacher, 2 alone, 4 baseline, 4 sd): 0 complete, 10 to run, 0 failed before"
    assert not out.exists()                                                     # a dry run writes nothing

    executed = []
    monkeypatch.setattr("papermill.execute_notebook", fake_notebook(executed))
    assert sweep.main(args) == 0
    assert "10 done, 0 skipped, 0 failed" in capsys.readouterr().out
    assert sorted(executed) == sorted(name for kind, name in expected if kind != "alone")   # each notebook once
    assert {p.parent.name for p in (out / "cifar100").glob("*/metrics.json")} == {n for _, n in expected}
    assert sorted(p.name for p in out.iterdir()) == ["cifar100", "report.html"]            # nothing else trained
    alone = experiment.load_metrics(out / "cifar100" / "resnet8-alone-seed1" / "metrics.json")
    assert alone["variant"] == "alone" and alone["seed"] == 1 and len(alone["history"]) == 1

    assert sweep.main(args) == 0                                                # again: all complete, none runs
    text = capsys.readouterr().out
    assert "0 complete, 10 to run" not in text and "plan: 10 runs" in text and "10 complete" in text
    assert len(executed) == 8


def test_no_published_teacher_and_no_permission_trains_nothing_and_says_how_on(tmp_path, tiny_cub200, capsys):
    """CUB-200's published teachers have no download: without teachers_dir, a cached teacher or permission, the
    sweep, a dry run included, and one `python -m sddlib` run stop with one sentence before anything trains."""
    [file] = sd_files(tmp_path, "cub200", "resnet8x4", "resnet8x4", ("kd",))
    out = tmp_path / "out"
    args = [file, "--seeds", "0", *overrides(data_dir=str(tiny_cub200), output_dir=str(out), batch_size=2,
                                             subset=0)]
    sentence = (f"teacher resnet8x4 for CUB-200 is nowhere to be had (no teacher_ckpt or teachers_dir given, none "
                f"cached at {out / 'teachers' / 'cub200' / 'resnet8x4.pth'}, and the published CUB-200 teachers have "
                "no download (the authors share them on a file-sharing site)); point teachers_dir at the authors' "
                "release (a folder holding resnet8x4_vanilla/resnet8x4_best.pth) or set allow_teacher_training: true "
                "to train it here once, first (its runs then depart from the paper's teacher).")
    for dry in ([], ["--dry-run"]):
        assert sweep.main(args + dry) == 1
        captured = capsys.readouterr()
        assert captured.err == f"FAILED  nothing ran: {sentence}\n" and captured.out == ""
        assert not out.exists()
    assert cli(["-f", file, *overrides(data_dir=str(tiny_cub200), output_dir=str(out), batch_size=2,
                                       subset=0)]) == 2
    assert capsys.readouterr().err == f"error: {sentence}\n"
    assert not list((out / "cub200").iterdir()) and not list(out.rglob("*.pth"))   # no run folder, nothing trained


def test_the_plan_file_agrees_with_the_dry_run(tmp_path, tiny_cub200, capsys):
    """With permission the teacher is trained here, once, first; the plan file holds the lines of the dry run, and
    a run that failed before says why (read from its folder)."""
    files = sd_files(tmp_path, "cub200", "resnet8x4", "vgg8", ("kd", "nkd"))
    out = tmp_path / "out"
    failed = out / "cub200" / "resnet8x4-vgg8-sd_nkd-M124-seed0"
    failed.mkdir(parents=True)
    (failed / "metrics.json").write_text(json.dumps({"status": "failed", "reason": "the loss became nan at epoch 1"}))
    given = dict(data_dir=str(tiny_cub200), output_dir=str(out), batch_size=2, allow_teacher_training=True)
    args = [*files, "--seeds", "0", *overrides(**given)]
    path = tmp_path / "plan.json"
    assert sweep.main([*args, "--dry-run", "--plan-file", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    plan = Plan.from_json(path.read_text())
    assert lines == [run.line() for run in plan.runs] + [f"plan: {plan.counts()}", f"plan written to {path}"]
    first = plan.runs[0]
    assert (first.kind, first.run, first.state) == ("teacher", "resnet8x4-teacher-seed0", "to run")
    assert [r.kind for r in plan.runs].count("teacher") == 1
    students = [r for r in plan.runs if r.kind in ("sd", "baseline")]
    assert len(students) == 4 and all(r.teacher_source == "trained here" and r.after == (first.folder,)
                                      for r in students)
    [nkd] = [r for r in plan.runs if r.run == failed.name]
    assert nkd.state == "failed before" and nkd.line().endswith(": the loss became nan at epoch 1")
    assert plan.counts() == "6 runs (1 teacher, 1 alone, 2 baseline, 2 sd): 0 complete, 5 to run, 1 failed before"
    assert build_plan(files, sweep.parse_overrides(pairs(**given)), seeds=[0]) == plan     # the same plan
    assert PlannedRun.from_dict(json.loads(json.dumps(first.asdict()))) == first
