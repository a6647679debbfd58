"""Training features on the hook protocol: the best model, early stopping, stopping on a signal
and continuing (real processes), --resume auto, a torn log line, and a feature added in one
class."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from atrous.training import hooks
from atrous.training.trainer import Trainer, train
from tests.conftest import random_folder_dataset, small_config

ROOT = Path(__file__).resolve().parent.parent


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]


def _evaluations(out: Path) -> list[dict]:
    return [r for r in _log(out) if "val_mIoU" in r]


def _features_config(out: Path, **overrides):
    values = dict(iters=8, eval_split="val", eval_every=2, eval_batch_size=4, optimizer="adamw", lr=2e-3)
    values.update(overrides)
    return small_config(out, **values)


def test_best_model_is_the_highest_evaluation_and_says_when(tmp_path):
    out = tmp_path / "run"
    result = train(_features_config(out, save_best="mIoU"))
    evaluations = _evaluations(out)
    assert [r["step"] for r in evaluations] == [2, 4, 6, 8]  # every 2, the last one after training
    scores = [r["val_mIoU"] for r in evaluations]
    best_step = evaluations[scores.index(max(scores))]["step"]  # the first of equal highest scores
    best = result["best"]
    assert best["metric"] == "mIoU" and best["step"] == best_step and round(best["value"], 5) == max(scores)
    assert json.loads((out / "metrics.json").read_text())["best"]["step"] == best_step
    with safe_open(str(out / "best.safetensors"), "pt") as handle:
        meta = json.loads(handle.metadata()["atrous"])["meta"]
    assert meta["step"] == best_step and meta["best"]["metric"] == "mIoU"
    if best_step == 8:  # the last model was the best: the two files hold the same weights
        last, chosen = load_file(out / "model.safetensors"), load_file(out / "best.safetensors")
        assert all(torch.equal(last[k], chosen[k]) for k in last)


def test_best_of_one_class_and_a_class_that_does_not_exist(tmp_path):
    result = train(_features_config(tmp_path / "a", iters=4, save_best="iou:1"))
    per_class = [r for r in _evaluations(tmp_path / "a")]
    assert result["best"]["metric"] == "iou:1" and len(per_class) == 2
    from atrous.errors import UserError

    with pytest.raises(UserError, match="no class 'Nope'"):
        Trainer(_features_config(tmp_path / "b", save_best="iou:Nope"))
    with pytest.raises(UserError, match="choose one of mIoU"):
        _features_config(tmp_path / "c", save_best="loss").validate()


def test_early_stop_counts_evaluations_and_resumes_the_count(tmp_path):
    """min_delta 1: nothing after the first evaluation is an improvement, so patience 2 ends
    the run at the third evaluation (step 6 of 12); stopped at step 3 and resumed, the count
    goes on from the state and ends at the same step."""
    straight = train(_features_config(tmp_path / "a", iters=12, early_stop=2, min_delta=1.0))
    assert straight["train"]["iters"] == 6 and straight["train"]["finished"]
    assert "early stop" in straight["train"]["stopped"] and straight["val"] is not None
    events = [r for r in _log(tmp_path / "a") if "event" in r]
    assert events == [{**events[0], "event": "finished", "step": 6}] and "early stop" in events[0]["reason"]
    first = train(_features_config(tmp_path / "b", iters=12, early_stop=2, min_delta=1.0, stop_after=3))
    assert first["train"]["iters"] == 3 and not first["train"]["finished"]
    resumed = train(_features_config(tmp_path / "b", iters=12, early_stop=2, min_delta=1.0, resume=True))
    assert resumed["train"]["iters"] == 6 and resumed["train"]["finished"]
    for name in ("model.safetensors",):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished (early-stopped) run is not continued by --resume auto
    again = train(_features_config(tmp_path / "b", iters=12, early_stop=2, min_delta=1.0, resume="auto"))
    assert again["train"]["already_finished"]


def test_resume_auto_starts_continues_and_leaves_a_finished_run_alone(tmp_path):
    out = tmp_path / "run"
    first = train(_features_config(out, resume="auto", stop_after=4, eval_every=None))  # nothing there: a new run
    assert first["train"]["iters"] == 4
    second = train(_features_config(out, resume="auto", eval_every=None))
    assert second["train"]["iters"] == 8 and second["train"]["finished"]
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    third = train(_features_config(out, resume="auto", eval_every=None))
    assert third["train"]["already_finished"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written  # nothing rewritten
    straight = tmp_path / "straight"
    train(_features_config(straight, eval_every=None))
    a, b = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "atrous", "train", "--model", "deeplab_v3plus", "--backbone", "resnet18",
            "--dataset", "synthetic", "--synthetic-size", "32", "--synthetic-length", "8", "--crop-size", "32",
            "--batch-size", "4", "--optimizer", "sgd", "--lr", "0.01", "--iters", "40", "--eval-split", "",
            "--no-progress", "--checkpoint-every", "1000", "--out", str(out), *extra]


def _wait_for_log(process: subprocess.Popen, out: Path, lines: int = 1, timeout: float = 120) -> None:
    log = out / "log.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= lines:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("the run wrote no log line in time")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(_cli(out), check=True, cwd=ROOT, capture_output=True, timeout=600)
    return out


@pytest.mark.parametrize("signum, workers, group", [(signal.SIGTERM, "0", False), (signal.SIGUSR1, "2", False),
                                                    (signal.SIGTERM, "2", True)])
def test_a_signal_stops_at_a_step_and_resume_equals_the_straight_run(tmp_path, straight_run, signum, workers,
                                                                    group):
    """To the trainer alone, or (as a scheduler does) to its whole process group, data workers
    included: the run ends at a step boundary, its state written, and resumes exactly."""
    out = tmp_path / "run"
    process = subprocess.Popen(_cli(out, "--workers", workers), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_log(process, out)  # an epoch line: training is under way, the handlers are installed
    if group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr
    stopped_at = torch.load(out / "train_state.pt", weights_only=True)["step"]
    assert 0 < stopped_at < 40 and f"after iteration {stopped_at} of 40" in stdout
    assert _log(out)[-1] == {**_log(out)[-1], "event": "stopped", "step": stopped_at}
    done = subprocess.run(_cli(out, "--resume", "auto"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    a, b = load_file(out / "model.safetensors"), load_file(straight_run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = subprocess.run(_cli(out, "--resume", "auto"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_a_kill_while_the_log_is_written_resumes_past_a_torn_line(tmp_path, straight_run):
    """SIGKILL gives no chance to clean up: the run continues from its last checkpoint, and a
    torn last log line (as a kill mid-write leaves it) is dropped instead of failing the resume."""
    out = tmp_path / "run"
    process = subprocess.Popen(_cli(out, "--checkpoint-every", "4"), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    _wait_for_log(process, out, lines=4)  # past the first checkpoint (step 4 = the second epoch line)
    process.kill()
    process.wait(timeout=60)
    with open(out / "log.jsonl", "a") as handle:
        handle.write('{"epoch": 99, "step": 1, "lo')  # torn
    done = subprocess.run(_cli(out, "--resume"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = _log(out)  # every line parses again
    assert [r["event"] for r in records if "event" in r] == ["finished"]
    a, b = load_file(out / "model.safetensors"), load_file(straight_run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


class CountingFeature(hooks.TrainingFeature):
    """A feature as a user writes one: it counts the hooks and resumes its count."""

    def __init__(self) -> None:
        self.calls = {"start": 0, "step": 0, "evaluation": 0, "end": 0}

    @classmethod
    def from_config(cls, cfg, run):
        return cls()

    def on_start(self, run):
        self.calls["start"] += 1

    def after_step(self, run, parts):
        assert run.step >= 1 and "loss" in parts
        self.calls["step"] += 1

    def after_evaluation(self, run, metrics):
        self.calls["evaluation"] += 1

    def on_end(self, run, summary):
        self.calls["end"] += 1

    def record(self):
        return dict(self.calls)

    def state_dict(self):
        return dict(self.calls)

    def load_state_dict(self, state):
        self.calls = dict(state)


@pytest.fixture
def counting_feature():
    hooks.register_feature("counting")(CountingFeature)
    yield
    hooks._FEATURES.remove("counting")


def test_a_feature_is_one_class_and_resumes_with_the_run(tmp_path, counting_feature):
    out = tmp_path / "run"
    train(_features_config(out, stop_after=3))
    resumed = train(_features_config(out, resume=True))
    # steps 1-3, then 4-8; evaluations at 2, 4, 6 and the final one; started twice; the first
    # run's end came after its state was written, so the count resumes without it
    assert resumed["counting"] == {"start": 2, "step": 8, "evaluation": 4, "end": 1}
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["features"]["counting"]["step"] == 8 and os.path.isfile(out / "best.safetensors") is False


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_corrupt_image_after_the_first_checkpoint_is_one_line_and_leaves_a_resumable_state(
        tmp_path, capsys, workers):
    from atrous.cli import main

    root = tmp_path / "data"
    order = random_folder_dataset(root, 8)
    bad = root / "images" / f"{order[5]}.png"  # read by step 3 (batch 2: items 4 and 5)
    good = bad.read_bytes()
    bad.write_bytes(b"not a png")
    out = tmp_path / "run"
    argv = ["train", "--model", "unet", "--model-opt", "base_channels=4", "--dataset", "folder", "--data-root",
            str(root), "--crop-size", "32", "--iters", "6", "--batch-size", "2", "--checkpoint-every", "2",
            "--workers", workers, "--no-progress", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad.name in err, err
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 2
    bad.write_bytes(good)  # the user replaces the file and continues
    assert main([*argv, "--resume"]) == 0
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 6


def test_save_pretrained_shares_the_best_model_and_its_card_says_when(tmp_path):
    from atrous.checkpoints import from_pretrained

    out, shared = tmp_path / "run", tmp_path / "shared"
    result = train(_features_config(out, save_best="mIoU", save_pretrained=str(shared)))
    best = result["best"]
    card = (shared / "README.md").read_text()
    assert f"chosen at iteration {best['step']} of 8" in card and f"{best['value']:.4f}" in card
    chosen, folder = load_file(out / "best.safetensors"), load_file(shared / "model.safetensors")
    assert chosen.keys() == folder.keys() and all(torch.equal(chosen[k], folder[k]) for k in chosen)
    model = from_pretrained(str(shared))
    assert model.num_classes == len(best["metrics"]["per_class_iou"])


def test_a_state_written_before_the_features_had_their_own_entries_still_resumes(tmp_path):
    """States of earlier releases kept the weight average under "average" at the top level."""
    straight, old = tmp_path / "straight", tmp_path / "old"
    train(_features_config(straight, ema_decay=0.9, eval_every=None, eval_split=None))
    train(_features_config(old, ema_decay=0.9, eval_every=None, eval_split=None, stop_after=4))
    saved = torch.load(old / "train_state.pt", weights_only=True)
    saved["average"] = saved.pop("features")["ema"]  # the earlier layout
    for key in ("total_iters", "finished"):
        saved.pop(key)
    torch.save(saved, old / "train_state.pt")
    train(_features_config(old, ema_decay=0.9, eval_every=None, eval_split=None, resume=True))
    a, b = load_file(old / "model.safetensors"), load_file(straight / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the saved model is the average: it was restored
