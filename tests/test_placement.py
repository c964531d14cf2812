"""Parallel local runs over the visible GPUs (issue 37): one device each, the least loaded first, at most per_gpu at
once on one device; K runs that the memory plan says do not fit one GPU are refused in one sentence. Devices are
names here, so the placement is tested on this CPU machine."""
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sddlib.placement import least_loaded, run_placed, visible_devices
from sddlib.run_memory import too_many

EIGHT = [f"cuda:{i}" for i in range(8)]
GIB = 2**30


def test_the_least_loaded_device_with_room_comes_first():
    assert least_loaded(EIGHT, {}, 1) == "cuda:0"
    assert least_loaded(EIGHT, {"cuda:0": 1, "cuda:1": 1}, 2) == "cuda:2"      # empty ones before busy ones
    assert least_loaded(EIGHT, {d: 2 for d in EIGHT} | {"cuda:5": 1}, 2) == "cuda:5"
    assert least_loaded(EIGHT, {d: 2 for d in EIGHT}, 2) is None                 # every GPU full
    assert visible_devices() == ["cpu"]                                          # this machine has no GPU


def _placed(jobs, devices, per_gpu, seconds):
    """Run `jobs` through run_placed on threads: (job, device, result) as each ended, the most runs one device held
    at once, and the (job, device) of each start in order."""
    lock, now, most, log = threading.Lock(), {}, {}, []

    def work(job, device):
        with lock:
            now[device] = now.get(device, 0) + 1
            most[device] = max(most.get(device, 0), now[device])
        time.sleep(seconds(job))
        with lock:
            now[device] -= 1
        return job

    def start(job, device):
        log.append((job, device))
        return pool.submit(work, job, device)

    with ThreadPoolExecutor(len(devices) * per_gpu) as pool:
        done = [(job, device, future.result()) for job, device, future in run_placed(jobs, devices, per_gpu, start)]
    return done, most, log


def test_runs_fill_every_gpu_and_never_more_than_per_gpu_on_one():
    done, most, log = _placed(range(40), EIGHT, 3, lambda job: 0.02)
    assert sorted(job for job, _, _ in done) == list(range(40)) and all(job == ran for job, _, ran in done)
    assert dict(log) == {job: device for job, device, _ in done}                   # ended where it was placed
    assert set(most) == set(EIGHT) and max(most.values()) == 3
    assert [device for _, device in log[:16]] == EIGHT + EIGHT                     # spread first, then stacked


def test_a_finished_run_frees_its_device_for_the_next():
    # cuda:0's run is short: the third run goes to it, not to the busy cuda:1
    done, most, log = _placed(["short", "long", "third"], ["cuda:0", "cuda:1"], 1,
                              lambda job: 0.01 if job == "short" else 0.2)
    assert dict(log) == {"short": "cuda:0", "long": "cuda:1", "third": "cuda:0"} and set(most.values()) == {1}


def test_per_gpu_runs_that_do_not_fit_a_gpu_are_refused_in_one_sentence():
    free = {"cuda:0": 70 * GIB, "cuda:1": 10 * GIB}
    assert too_many("--per-gpu", 2, "resnet32x4-ShuffleV1-sd_kd", 3 * GIB, free) is None
    assert too_many("--per-gpu", 4, "resnet32x4-ShuffleV1-sd_kd", 3 * GIB, free) == (
        "--per-gpu 4 needs about 4 x 3.0 GiB = 12.0 GiB (resnet32x4-ShuffleV1-sd_kd, measured) but cuda:1 has "
        "10.0 GiB free; use --per-gpu 3 or fewer.")
    with pytest.raises(ValueError, match=r"^--per-gpu 0 would run nothing; give 1 or more runs per device\.$"):
        list(run_placed([1], EIGHT, 0, None))


@pytest.mark.slow  # three training processes, a few steps each
def test_the_gpu_packing_check_runs_dry_on_this_cpu(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_packing
    summary = gpu_packing.main(["--dry-run", "--json", str(tmp_path / "packing.json")])
    assert [r["runs"] for r in summary["rounds"]] == [1, 2]
    assert all(r["images_per_s"] > 0 and len(r["per_run"]) == r["runs"] for r in summary["rounds"])
    assert json.loads((tmp_path / "packing.json").read_text()) == summary
