"""Run tracking (sddlib.tracking), offline: TensorBoard's event files and W&B's offline run files read back hold
what metrics.json holds; a resumed run continues the same runs; a tracker that cannot start stops before work."""
import json
import struct

import pytest

from sddlib import experiment, tracking
from sddlib.config import ConfigError, RunConfig

TINY = dict(dataset="digit_mosaic", teacher="resnet8", student="resnet8", method="kd", M="[1,2]", epochs=2,
            teacher_epochs=1, subset=96, batch_size=32, lr_decay_stages=[1], progress=False, feature_figures=False)


def tensorboard_scalars(folder) -> dict:
    """{tag: {step: value}} of the event files in `folder`, through TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}, events


def wandb_records(run_dir) -> list:
    """Every record of the run's offline W&B files (the .wandb transaction log: LevelDB's log format, blocks of
    32 KiB, after W&B's 7-byte file header), in the order written, as protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2
    records = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        data, pos, parts = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:            # a block's tail too short for a header is padding
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if kind == 0:
                break
            parts += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):                     # a full record, or the last part of one
                record = wandb_internal_pb2.Record()
                record.ParseFromString(parts)
                records.append(record)
                parts = b""
    return records


def wandb_history(run_dir) -> dict:
    """{step: {key: value}} logged to W&B, over every session of the run (a resumed run adds one)."""
    out = {}
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            out.setdefault(items["_step"], {}).update(items)
    return out


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


@pytest.mark.slow  # trains a teacher and a student for a few steps, then draws the figures
def test_a_tracked_run_logs_its_history_config_and_figures(tmp_path, offline, mosaic_dir):
    params = {**TINY, "tracker": ["tensorboard", "wandb"], "output_dir": str(tmp_path), "data_dir": str(mosaic_dir)}
    metrics = experiment.run(params)
    run = experiment.run_dir(params)
    history = metrics["history"]
    assert len(history) == 2 and {"ce", "distill", "warmup_factor", "lr", "top1", "top5", "train_loss",
                                  "complementary_gr_lw@2"} <= set(history[0])

    scalars, events = tensorboard_scalars(run / "tensorboard")
    recorded = {k for row in history for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
    assert set(scalars) == recorded                                    # every column of the history, per epoch
    for row in history:
        for key in recorded:
            assert scalars[key][row["epoch"]] == pytest.approx(row[key], rel=1e-6, abs=1e-6)
    assert {f"figures/{name.split('/')[-1][:-4]}" for name in metrics["figures"]} == set(events.Tags()["images"])
    texts = {t for t in events.Tags()["tensors"]}
    assert {"configuration/text_summary", "departures/text_summary"} <= texts

    logged = wandb_history(run)
    for row in history:
        for key in recorded:
            assert logged[row["epoch"]][key] == pytest.approx(row[key], rel=1e-6, abs=1e-6)
    assert (run / "wandb-run-id.txt").is_file() and len(list((run / "wandb").glob("offline-run-*"))) == 1
    config = next(r.run.config for r in wandb_records(run) if r.WhichOneof("record_type") == "run")
    assert {i.key: json.loads(i.value_json) for i in config.update}["lr"] == metrics["params"]["lr"]
    # the teacher trained alone for the run is a run too, tracked in its own folder
    assert (tmp_path / "digit_mosaic" / "resnet8-teacher-seed0" / "tensorboard").is_dir()


def test_a_resumed_run_continues_the_same_runs(tmp_path, offline):
    """A session that stopped after epoch 2 (having logged epoch 3 too) resumes from epoch 2: TensorBoard drops
    the stale epoch 3 and W&B continues the same run id."""
    params = RunConfig.from_params(TINY).to_params()
    first = tracking.RunTracker(["tensorboard", "wandb"], tmp_path, params)
    first.start(0)
    for epoch, top1 in ((1, 10.0), (2, 20.0), (3, 30.0)):
        first.log_row({"epoch": epoch, "top1": top1})
    first.finish()
    second = tracking.RunTracker(["tensorboard", "wandb"], tmp_path, params)
    second.start(2)
    second.log_row({"epoch": 3, "top1": 33.0})
    second.finish()
    scalars, _ = tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["top1"] == {1: 10.0, 2: 20.0, 3: 33.0}
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    run_id = (tmp_path / "wandb-run-id.txt").read_text()
    assert len(runs) == 2 and all((r / f"run-{run_id}.wandb").is_file() for r in runs)  # two sessions of one run
    assert [h["top1"] for _, h in sorted(wandb_history(tmp_path).items())][-1] == 33.0


def test_a_tracker_that_cannot_start_stops_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"tracker 'tensorbord' is unknown \(did you mean 'tensorboard'\?\)"):
        RunConfig.from_params({"tracker": "tensorbord"})
    with pytest.raises(ConfigError, match=r"tracker=3 is not accepted"):
        RunConfig.from_params({"tracker": 3})
    assert RunConfig.from_params({"tracker": ["wandb", "tensorboard", "wandb"]}).tracker == ("wandb", "tensorboard")
    assert RunConfig.from_params({}).tracker == () and "tracker" not in RunConfig.from_params({}).fingerprint

    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))                    # no ~/.netrc: never logged in
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    params = {**TINY, "tracker": "wandb", "output_dir": str(tmp_path / "out")}
    with pytest.raises(ConfigError, match=r"^tracker='wandb' cannot reach W&B: there is no login .*WANDB_MODE=offline"):
        experiment.run(params)
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else
                        find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"^tracker='tensorboard' needs the tensorboard package, which is not "
                                          r"installed; install the tracking extra"):
        experiment.run_vanilla({**params, "tracker": "tensorboard"})
    assert not (tmp_path / "out").exists()                     # nothing started
