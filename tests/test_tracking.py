"""--log tensorboard,mlflow,wandb,csv: what each tracker wrote, read back with the tracker's own
reader (TensorBoard's event accumulator, MLflow's client, W&B's offline run file), with no
network; a resumed run continues the same tracker runs; a missing extra or an unknown tracker
is one line."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest

from atrous.cli import main
from atrous.training.trainer import train
from tests.conftest import small_config

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")


def _config(out: Path, **overrides):
    values = dict(iters=6, eval_split="val", eval_every=2, log="tensorboard,mlflow,wandb,csv", log_every=2,
                  log_images=2, optimizer="adamw", lr=2e-3)
    values.update(overrides)
    return small_config(out, **values)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, monkeypatch_module) -> Path:
    """A run stopped after 3 of 6 iterations and resumed, logging to all four trackers."""
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch_module.setenv("WANDB_MODE", "offline")
    monkeypatch_module.chdir(tmp_path_factory.mktemp("elsewhere"))  # nothing may land in the current folder
    out = tmp_path_factory.mktemp("tracked") / "run"
    train(_config(out, stop_after=3))
    train(_config(out, resume=True))
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _jsonl_evaluations(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_mIoU"] for r in records if "val_mIoU" in r}


def test_tensorboard_event_files_hold_the_curves_and_pictures(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/images_per_s", "val/mIoU", "val/pixel_accuracy"} <= set(tags["scalars"])
    assert any(t.startswith("val/iou/") for t in tags["scalars"])  # per-class IoU
    assert {"val/prediction_0", "val/prediction_1"} <= set(tags["images"])
    miou = {e.step: e.value for e in events.Scalars("val/mIoU")}
    assert miou.keys() == {2, 4, 6}  # every 2 iterations across the resume, the last at the end
    for step, value in _jsonl_evaluations(tracked_run).items():
        assert miou[step] == pytest.approx(value, abs=1e-5)
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]  # no doubled stretch after the resume


def test_mlflow_keeps_one_run_across_the_resume(tracked_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tracked_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("atrous")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["model"] == "deeplab_v3plus" and run.info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/mIoU")}
    assert history.keys() == {2, 4, 6}
    for step, value in _jsonl_evaluations(tracked_run).items():
        assert history[step] == pytest.approx(value, abs=1e-5)
    lr = [m.step for m in client.get_metric_history(run.info.run_id, "train/lr")]
    assert sorted(lr) == [2, 4, 6]
    pictures = list((tracked_run / "mlartifacts").rglob("val~prediction_0+step+2+*.png"))
    assert len(pictures) == 1 and not list(Path.cwd().iterdir())  # beside the store, not in the current folder


def _wandb_records(run_file: Path) -> list[bytes]:
    """The records of an offline run file: a 7-byte header (":W&B", magic, version), then
    LevelDB's log format, 32 KiB blocks of chunks (crc32c, length, type: 1 whole, 2 first,
    3 middle, 4 last); wandb 0.31 reads it in Go only, so the test reads it here."""
    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, chunks, pos, block = [], [], 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            records.append(b"".join(chunks))
            chunks = []
    return records


def _wandb_history(run_file: Path) -> list[dict]:
    from wandb.proto import wandb_internal_pb2

    rows = []
    for raw in _wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_wandb_offline_runs_hold_the_metrics_under_one_id(tracked_run):
    runs = sorted((tracked_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2  # the first process and the resumed one
    ids = {path.name.rsplit("-", 1)[1] for path in runs}
    assert len(ids) == 1  # the same W&B run, resumed
    history = [row for path in runs for row in _wandb_history(next(path.glob("run-*.wandb")))]
    miou = {row["_step"]: row["val/mIoU"] for row in history if "val/mIoU" in row}
    assert miou.keys() == {2, 4, 6}
    for step, value in _jsonl_evaluations(tracked_run).items():
        assert miou[step] == pytest.approx(value, abs=1e-5)
    assert any("val/prediction_0/path" in row for row in history)
    assert list(runs[0].glob("files/media/images/val/prediction_0_2_*.png"))  # the picture itself


def test_csv_is_one_long_table_without_repeated_steps(tracked_run):
    with open(tracked_run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and set(rows[0]) == {"step", "name", "value"}
    losses = [int(r["step"]) for r in rows if r["name"] == "train/loss"]
    assert losses == [2, 4, 6]
    miou = {int(r["step"]): float(r["value"]) for r in rows if r["name"] == "val/mIoU"}
    for step, value in _jsonl_evaluations(tracked_run).items():
        assert miou[step] == pytest.approx(value, abs=1e-5)


def test_a_missing_extra_or_an_unknown_tracker_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    base = ["train", "--model", "fcn32s", "--dataset", "synthetic", "--out", str(tmp_path / "run")]
    assert main([*base, "--log", "csv,mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--log mlflow needs mlflow: pip install 'atrous[mlflow]'") and len(err.splitlines()) == 1
    assert main([*base, "--log", "tensorbord"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown logger 'tensorbord'; choose one of: csv, mlflow, tensorboard, wandb" in err
    assert not (tmp_path / "run").exists()
