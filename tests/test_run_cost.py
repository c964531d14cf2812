"""What a plan costs before it starts (`sddlib.run_cost`, `python -m sddlib.sweep ... --estimate`)."""
import json

import pytest
import yaml

from sddlib import sweep
from sddlib.plan import PlannedRun
from sddlib.run_cost import RunCost, wall_time


def test_the_wall_time_runs_the_teachers_first_then_the_rest_longest_first():
    runs = [PlannedRun(f"r{i}", kind, f"f{i}", "x.yaml", {}) for i, kind in enumerate(("teacher", "sd", "sd", "alone"))]
    costs = {f"f{i}": RunCost(f"r{i}", seconds, 0.0, 1, 0) for i, seconds in enumerate((10.0, 4.0, 5.0, 3.0))}
    assert wall_time(runs, costs, 1) == 10 + 4 + 5 + 3
    assert wall_time(runs, costs, 2) == 10 + 7          # 5 on one worker, 4 then 3 on the other
    assert wall_time(runs, costs, 8) == 10 + 5


@pytest.mark.slow  # times a few steps of three configurations in a fresh process (no run is trained)
def test_the_sweep_estimates_every_run_of_a_plan_and_trains_nothing(tmp_path, mosaic_dir, capsys):
    file = tmp_path / "mosaic-sd_kd.yaml"
    file.write_text(yaml.safe_dump({"dataset": "digit_mosaic", "teacher": "resnet8", "student": "resnet8",
                                    "method": "kd", "M": "[1,2]", "epochs": 2, "subset": 128, "batch_size": 32}))
    out, plan_file = tmp_path / "out", tmp_path / "plan.json"
    assert sweep.main([str(file), "--seeds", "0", "--estimate", "--jobs", "2", "--plan-file", str(plan_file),
                       "-p", "data_dir", str(mosaic_dir), "-p", "output_dir", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = {r["run"]: r for r in json.loads(plan_file.read_text())["runs"]}
    assert list(runs) == ["resnet8-teacher-seed0", "resnet8-alone-seed0", "resnet8-resnet8-kd-M1-seed0",
                          "resnet8-resnet8-sd_kd-M12-seed0"]
    assert all(r["estimate_s"] > 0 and r["peak_bytes"] > 0 for r in runs.values())
    # (the teacher's 8 epochs against the others' 2: test_a_runs_estimate_is_its_fixed_cost_and_its_epochs_of_timed_
    # steps; compared here, a few seconds of epochs sat within the noise of the timed fixed costs of a loaded machine)
    assert all(" device-h, peak " in line for line in lines[:4])
    total = sum(r["estimate_s"] for r in runs.values()) / 3600
    assert lines[5].startswith(f"estimate: {total:.1f} device-hours on cpu (") and "at --jobs 2" in lines[5]
    assert not out.exists()                                                   # nothing trained, nothing written


def test_a_runs_estimate_is_its_fixed_cost_and_its_epochs_of_timed_steps(tmp_path, monkeypatch):
    """The arithmetic on the measured step times (what `--estimate` prints per run): fixed + epochs x (training
    steps x step time + evaluation steps x evaluation step time), the steps from the dataset's sizes and subset."""
    from sddlib import run_cost, run_memory
    from sddlib.plan import build_plan
    file = tmp_path / "mosaic-sd_kd.yaml"
    file.write_text(yaml.safe_dump({"dataset": "digit_mosaic", "teacher": "resnet8", "student": "resnet8",
                                    "method": "kd", "M": "[1,2]", "epochs": 3, "subset": 100, "batch_size": 10}))
    plan = build_plan([file], {"output_dir": str(tmp_path / "out")}, seeds=[0])
    timed = {"train_s": 0.5, "valid_s": 0.25, "build_s": 2.0, "data_s": 1.0, "bytes": 2**30}
    monkeypatch.setattr(run_memory, "measure_in_fresh_process", lambda probes, names, **kw: [timed] * len(probes))
    costs = run_cost.estimate_plan(plan.runs)
    alone = costs[next(r.folder for r in plan.runs if r.kind == "alone")]
    sd = costs[next(r.folder for r in plan.runs if r.kind == "sd")]
    teacher = costs[next(r.folder for r in plan.runs if r.kind == "teacher")]
    epoch = 10 * 0.5 + 10 * 0.25                          # 100 images in batches of 10, training and test
    assert alone.seconds == pytest.approx(alone.fixed + 3 * epoch) and alone.peak_bytes == 2**30
    assert sd.fixed == pytest.approx(alone.fixed + 10 * 0.25)     # the teacher evaluated once
    assert teacher.epochs == 8                                    # the dataset's teacher protocol, batch 64
    assert teacher.seconds == pytest.approx(teacher.fixed + 8 * (1 * 0.5 + 2 * 0.25))


def test_a_batch_draw_counts_only_where_it_holds_up_the_step():
    """A loader in the training process (the device pipeline, a loader without workers) adds its draw to each
    step; a loader whose workers draw beside the steps adds nothing (and is not even started)."""
    import torch
    from fastai.data.load import DataLoader

    from sddlib.data.build import TensorImageDataset
    from sddlib.data.device import DeviceImageDL
    from sddlib.run_cost import _draw_time
    data = TensorImageDataset(torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8), torch.zeros(64).long())
    on_device = DeviceImageDL(data, bs=8, mean=(0.5,) * 3, std=(0.25,) * 3, padding=2, flip=True, shuffle=True)
    assert _draw_time(on_device, 5) > 0
    assert _draw_time(DataLoader(data, bs=8, num_workers=0), 5) > 0
    with_workers = DataLoader(data, bs=8, num_workers=2)
    with_workers.create_batches = None        # iterating it would fail: it must not be iterated at all
    assert _draw_time(with_workers, 5) == 0.0
