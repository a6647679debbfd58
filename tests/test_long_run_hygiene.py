"""What long runs need (issue 34, item 6): --deterministic (bit-identical runs, torch's flags
restored, a one-line error for an operation it cannot run), --clip-grad-norm (against a
hand computation, after the last micro-batch, unscaled under fp16), the parameters and FLOPs
of `atrous models NAME`, and progress written as plain lines where stderr is not a terminal."""

from __future__ import annotations

import io
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from atrous.cli import main
from atrous.errors import UserError
from atrous.models.registry import count_cost
from atrous.runtime.progress import LineProgress, progress_bar
from atrous.training.clip_grad import ClipGradNorm
from atrous.training.deterministic import seed_globals
from atrous.training.trainer import Trainer, train
from tests.conftest import small_config

ROOT = Path(__file__).resolve().parent.parent


def _flags() -> tuple[bool, bool, bool]:
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark)


# --- --deterministic ---------------------------------------------------------------------------

def test_deterministic_runs_with_workers_give_the_same_weights_bit_for_bit(tmp_path):
    before = _flags()
    for name in ("a", "b"):
        train(small_config(tmp_path / name, iters=3, deterministic=True, workers=2))
        assert _flags() == before  # set for the loop, restored after it
    first, second = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_workers_seed_the_global_generators_from_seed_rank_and_worker():
    def draws(seed: int, rank: int, worker: int) -> tuple[float, float, float]:
        seed_globals(seed, rank, worker)
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    assert draws(0, 0, 1) == draws(0, 0, 1)
    assert len({draws(0, 0, 0), draws(0, 0, 1), draws(0, 1, 0), draws(1, 0, 0), draws(-1, 0, 0)}) == 5


def test_an_operation_without_a_deterministic_implementation_is_one_line_naming_the_option(tmp_path):
    """max_unpool2d has no deterministic implementation, on the CPU too."""
    before = _flags()
    trainer = Trainer(small_config(tmp_path / "run", deterministic=True))
    net = trainer.net

    def unpooling(images: torch.Tensor, return_aux: bool = False) -> dict[str, torch.Tensor]:
        outputs = net(images, return_aux=True)
        pooled, indices = F.max_pool2d(outputs["out"], 2, return_indices=True)
        return {**outputs, "out": F.max_unpool2d(pooled, indices, 2)}

    trainer.net = unpooling
    with pytest.raises(UserError) as caught:
        trainer.run()
    message = str(caught.value)
    assert "\n" not in message and message.startswith("deterministic: max_unpooling2d")
    assert _flags() == before


# --- --clip-grad-norm --------------------------------------------------------------------------

def _one_step(out: Path, **overrides) -> tuple[Trainer, dict, dict, dict]:
    """One SGD step (lr 1, no momentum, no weight decay) of two micro-batches: the trainer,
    and each parameter before it, its gradient, and after it."""
    trainer = Trainer(small_config(out, lr=1.0, momentum=0.0, weight_decay=0.0, grad_accum=2, **overrides))
    params = dict(trainer.model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    trainer._train_step(next(trainer.steps()), 1.0)
    grads = {name: p.grad.clone() for name, p in params.items() if p.grad is not None}
    return trainer, before, grads, {name: p.detach().clone() for name, p in params.items()}


def test_clipping_scales_the_global_batch_gradient_by_max_over_its_norm(tmp_path):
    """The same step without clipping gives the gradient g of both micro-batches; with
    --clip-grad-norm MAX the step applies g * MAX / ||g|| instead. Skipping the clip, or
    clipping the first micro-batch's gradient alone, would not give that."""
    _, start, grads, plain = _one_step(tmp_path / "plain")
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])).item()
    limit = norm / 4
    trainer, start_again, clipped_grads, clipped = _one_step(tmp_path / "clipped", clip_grad_norm=limit)
    scale = limit / (norm + 1e-6)  # clip_grad_norm_'s coefficient
    assert all(torch.equal(start[name], start_again[name]) for name in start)
    for name, grad in grads.items():
        torch.testing.assert_close(clipped_grads[name], grad * scale, rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(clipped[name] - start[name], (plain[name] - start[name]) * scale,
                                   rtol=1e-3, atol=1e-6)
    feature = next(f for f in trainer.features if isinstance(f, ClipGradNorm))
    assert feature.record() == {"max_norm": limit, "steps": 1, "clipped": 1, "not_finite": 0}


def test_clipping_under_a_gradient_scaler_clips_the_unscaled_gradient():
    """fp16's scaler multiplies the loss by 1024: clipped before unscaling, the step would
    move the weights by MAX / 1024 instead of MAX."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    scaler.scale(model(torch.randn(8, 4)).pow(2).sum()).backward()
    feature = ClipGradNorm(0.5)
    feature.before_optimizer_step(SimpleNamespace(model=model, optimizer=optimizer, scaler=scaler))
    scaler.step(optimizer)
    scaler.update()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.linalg.vector_norm(after - before).item() == pytest.approx(0.5, rel=1e-4)
    assert feature.record()["clipped"] == 1


# --- atrous models NAME: parameters and FLOPs ---------------------------------------------------

def test_the_flops_of_one_convolution_are_two_per_multiply_add():
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)
    params, flops = count_cost(conv, (16, 20))
    assert params == 8 * 3 * 3 * 3 + 8
    assert flops == 2 * (16 * 20) * 8 * (3 * 3 * 3)  # per output value: 27 multiply-adds (bias not counted)


def test_models_name_prints_the_parameters_and_flops(capsys):
    import atrous

    assert main(["models", "unet", "--input-size", "64", "48"]) == 0
    out = capsys.readouterr().out
    params = int(re.search(r"parameters\s+[\d.]+ M \(([\d,]+)\)", out).group(1).replace(",", ""))
    assert params == sum(p.numel() for p in atrous.create_model("unet", 21).parameters())
    flops = float(re.search(r"FLOPs\s+([\d.]+) G", out).group(1))
    macs = float(re.search(r"MACs\s+([\d.]+) G", out).group(1))
    assert "at 64x48, 21 classes" in out and flops > 0 and macs == pytest.approx(flops / 2, abs=0.01)


# --- progress written to a file ------------------------------------------------------------------

def test_progress_lines_show_the_step_they_count():
    stream = io.StringIO()
    bar = LineProgress(3, desc="train x", every=0, file=stream)
    for step in (1, 2, 3):
        bar.update(1)
        bar.set_postfix(loss=f"{step}.000")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["train x: 1/3 it", "train x: 2/3 it", "train x: 3/3 it"]
    assert all(line.endswith(f"loss {n}.000") for n, line in enumerate(lines, 1))
    quiet = io.StringIO()
    with LineProgress(None, desc="predict", unit="img", file=quiet) as bar:  # every 30 s: only the last
        for _ in range(5):
            bar.update(2)
    assert quiet.getvalue().startswith("predict: 10 img, ") and quiet.getvalue().count("\n") == 1
    silent = io.StringIO()
    LineProgress(4, desc="eval", file=silent).close()  # nothing done (an error before the first step)
    assert silent.getvalue() == ""


def test_a_terminal_gets_tqdm():
    from tqdm import tqdm

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress_bar(3, desc="x", file=Terminal()), tqdm)
    assert isinstance(progress_bar(3, desc="x", file=io.StringIO()), LineProgress)


def test_training_with_stderr_in_a_file_writes_lines_not_frames(tmp_path):
    log = tmp_path / "stderr.log"
    command = [sys.executable, "-m", "atrous", "train", "--model", "deeplab_v3plus", "--backbone", "resnet18",
               "--dataset", "synthetic", "--synthetic-size", "32", "--synthetic-length", "8", "--crop-size", "32",
               "--batch-size", "4", "--iters", "3", "--out", str(tmp_path / "run")]
    with open(log, "wb") as handle:
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=handle, timeout=300,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    text = log.read_bytes().decode()
    assert done.returncode == 0, text
    assert "\r" not in text
    assert re.search(r"^train deeplab_v3plus: 3/3 it, [\d.]+ it/s, loss \d+\.\d{3}, lr \S+$", text, re.M), text
    assert re.search(r"^eval: \d+/\d+ img", text, re.M), text
