"""Distributed training on CPU (gloo): 2 processes train the model 1 process trains, a run
resumes across world sizes, distributed evaluation equals one process's exactly, losses
and batch norm add up over ranks, a failing rank ends the run; and the pieces that make a
global batch independent of the number of ranks and micro-batches.

The 2-process jobs run in one pair of processes (torch.multiprocessing, one process group)
to keep the suite quick; the command line is checked through torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from atrous.errors import UserError
from atrous.runtime.distributed import World
from atrous.training.global_batch import (
    GlobalBatchSampler,
    ShardedDropout,
    micro_batch_size,
    shard_dropout,
)
from tests.conftest import REPO, random_folder_dataset, small_config

WORKER_TIMEOUT_S = 300
LOSS_CASES = {
    "ce": {"class_weights": [0.5, 1.0, 2.0]},
    "focal": {},
    "ohem": {"ohem_min_kept": 1},
    "ohem_min_kept": {"ohem_thresh": 0.2, "ohem_min_kept": 20},
    "dice": {},
    "lovasz_per_image": {"lovasz_per_image": True},
}


ADVERSARIAL = dict(model="unet", backbone=None, model_options={"base_channels": 4}, adversarial=True, loss="ohem",
                   ohem_min_kept=50, iters=2)


# --- what the two ranks run ------------------------------------------------------------------
def _rank_main(rank: int, world: int, port: int, jobs_file: str) -> None:
    """One rank: join the group, run every job (train runs, evaluation, checks), leave."""
    from atrous.runtime.distributed import process_group

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    jobs = json.loads(Path(jobs_file).read_text())
    with process_group(torch.device("cpu"), timeout_s=WORKER_TIMEOUT_S):
        for job in jobs:
            RANK_JOBS[job["kind"]](rank, **job["args"])


def _train_job(rank: int, **config) -> None:
    from atrous.training.trainer import train

    train(small_config(**config))


def _eval_job(rank: int, checkpoint: str, out: str) -> None:
    import atrous
    from atrous.data import SyntheticScenes
    from atrous.inference.evaluate import evaluate

    model = atrous.load_checkpoint(checkpoint)
    metrics = evaluate(model, SyntheticScenes("val", length=7, size=32), batch_size=2, trimap_widths=[1],
                       progress=False)
    if rank == 0:
        Path(out).write_text(json.dumps(metrics))


def loss_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch of 4 images of logits and labels (with void), the same on every rank."""
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 3, 6, 6, generator=generator)
    target = torch.randint(0, 3, (4, 6, 6), generator=generator)
    target[1, :2] = 255
    return logits, target


def loss_shares(logits: torch.Tensor, target: torch.Tensor, reduce, world: int) -> dict[str, tuple[float, torch.Tensor]]:
    """{case: (this part's share of the loss, its gradient w.r.t. these logits)}."""
    from atrous.losses import BatchTotals, build_loss, labelled_weight

    results = {}
    for case, options in LOSS_CASES.items():
        options = dict(options)
        weights = torch.tensor(options.pop("class_weights")) if "class_weights" in options else None
        loss = build_loss(case.split("_")[0], class_weights=weights, reduce=reduce, **options)
        pixels = reduce(labelled_weight(target, weights).reshape(1).clone()).item()
        part = logits.clone().requires_grad_(True)
        share = loss(part, target, BatchTotals(pixels, images=4, world=world))
        share.backward()
        results[case] = (reduce(share.detach().reshape(1).double()).item(), part.grad)
    return results


def _losses_job(rank: int, out: str) -> None:
    from atrous.runtime.distributed import all_reduce_sum

    logits, target = loss_batch()
    rows = slice(2 * rank, 2 * rank + 2)
    torch.save(loss_shares(logits[rows], target[rows], all_reduce_sum, world=2), f"{out}.{rank}")


def batchnorm_case() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(4, 3, 5, 5, generator=generator) * 2 + 1, torch.randn(4, 3, 5, 5, generator=generator)


def _batchnorm_job(rank: int, out: str) -> None:
    from atrous.runtime.distributed import all_reduce_gradients
    from atrous.training.global_batch import convert_sync_batchnorm

    layer = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu")).train()
    x, upstream = batchnorm_case()
    rows = slice(2 * rank, 2 * rank + 2)
    part = x[rows].clone().requires_grad_(True)
    y = layer(part)
    y.backward(upstream[rows])
    all_reduce_gradients(layer.parameters())
    torch.save({"y": y.detach(), "x_grad": part.grad, "weight_grad": layer[0].weight.grad,
                "running_var": layer[0].running_var, "type": type(layer[0]).__name__}, f"{out}.{rank}")


RANK_JOBS = {"train": _train_job, "eval": _eval_job, "losses": _losses_job, "batchnorm": _batchnorm_job}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(jobs: list[dict], folder: Path) -> None:
    """Runs `jobs` on 2 gloo processes; fails (never hangs) if they do not end in time."""
    import torch.multiprocessing as mp

    jobs_file = folder / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    context = mp.start_processes(_rank_main, args=(2, _free_port(), str(jobs_file)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process jobs did not finish in time")


# --- the runs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """1-process and 2-process runs of the same configurations, side by side."""
    from atrous.training.trainer import train

    root = tmp_path_factory.mktemp("ddp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs, so that evaluation compares like with like
    try:
        train(small_config(root / "w1_full"))
        train(small_config(root / "w1_stop", stop_after=1))  # resumed on 2 processes below
        train(small_config(root / "w1_accum", grad_accum=2, iters=1))
        train(small_config(root / "w1_adv", **ADVERSARIAL))
        run_two_ranks([
            {"kind": "train", "args": {"out": str(root / "w2_full")}},
            {"kind": "train", "args": {"out": str(root / "w2_stop"), "stop_after": 1}},
            {"kind": "train", "args": {"out": str(root / "w1_stop"), "resume": True}},
            {"kind": "train", "args": {"out": str(root / "w2_accum"), "grad_accum": 2, "iters": 1}},
            {"kind": "train", "args": {"out": str(root / "w2_adv"), **ADVERSARIAL}},
            {"kind": "eval", "args": {"checkpoint": str(root / "w1_full" / "model.safetensors"),
                                      "out": str(root / "eval_w2.json")}},
            {"kind": "losses", "args": {"out": str(root / "losses")}},
            {"kind": "batchnorm", "args": {"out": str(root / "batchnorm")}},
        ], root)
        train(small_config(root / "w2_stop", resume=True))  # stopped on 2 processes, resumed on 1
    finally:
        torch.set_num_threads(threads)
    return root


def initial_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights the run started from (the trainer seeds, then builds the model)."""
    import atrous

    cfg = json.loads((run / "config.json").read_text())
    torch.manual_seed(cfg["seed"])
    model = atrous.create_model(cfg["model"], 7, backbone=cfg["backbone"], **cfg["model_options"])
    return model.state_dict()


def assert_same_weights(a: Path, b: Path, rtol: float = 2e-3) -> None:
    """Every tensor of the two runs equal to float rounding: their difference is below `rtol`
    of how far training moved it. The runs are 2 steps long: on these 32-pixel scenes some
    later steps magnify rounding-level differences (e.g. torch's batch norm against the
    CPU all-reduce one, both exact) into per-cent ones."""
    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    start = initial_weights(a)
    assert left.keys() == right.keys()
    for key in left:
        if left[key].is_floating_point():
            moved = float((left[key] - start[key]).norm())
            assert float((left[key] - right[key]).norm()) <= rtol * moved + 1e-6, (key, moved)
        else:  # BN's num_batches_tracked
            assert torch.equal(left[key], right[key]), key


def epoch_losses(run: Path) -> list[float]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"epoch"' in line]


def test_two_processes_train_the_model_one_process_trains(runs):
    """SyncBN, global-count loss normalisation, summed gradients, sharded dropout (ASPP's)."""
    assert_same_weights(runs / "w1_full", runs / "w2_full")
    assert epoch_losses(runs / "w2_full") == pytest.approx(epoch_losses(runs / "w1_full"), abs=1e-4)
    # the weights moved: this is not the equality of two untrained models
    start, trained = initial_weights(runs / "w2_full"), load_file(str(runs / "w2_full" / "model.safetensors"))
    assert max(float((trained[k] - start[k]).abs().max()) for k in trained if trained[k].is_floating_point()) > 1e-3


def test_a_run_resumes_across_world_sizes(runs):
    assert_same_weights(runs / "w2_full", runs / "w2_stop")  # 2 processes, then 1
    assert_same_weights(runs / "w1_full", runs / "w1_stop")  # 1 process, then 2
    for run in ("w2_stop", "w1_stop"):
        events = [json.loads(line) for line in (runs / run / "log.jsonl").read_text().splitlines()]
        assert [(e["event"], e["step"]) for e in events if "event" in e] == [("stopped", 1), ("finished", 2)]
        assert epoch_losses(runs / run) == pytest.approx(epoch_losses(runs / "w1_full"), abs=1e-4)


def test_gradient_accumulation_over_two_processes(runs):
    # one step (2 micro-batches, dropout rewound between them): batch norm over 2 images of
    # 32 pixels is so ill-conditioned that later steps magnify rounding
    assert_same_weights(runs / "w1_accum", runs / "w2_accum")


def test_adversarial_training_and_ohem_over_two_processes(runs):
    assert_same_weights(runs / "w1_adv", runs / "w2_adv")
    state1 = torch.load(runs / "w1_adv" / "train_state.pt", weights_only=True)["features"]["adversarial"]["discriminator"]
    state2 = torch.load(runs / "w2_adv" / "train_state.pt", weights_only=True)["features"]["adversarial"]["discriminator"]
    for key in state1:  # Adam (lr 1e-4) moved them by at most 2e-4; it magnifies rounding in tiny gradients
        torch.testing.assert_close(state1[key], state2[key], atol=5e-5, rtol=1e-4, msg=key)


def test_distributed_evaluation_equals_one_process_exactly(runs):
    import atrous
    from atrous.data import SyntheticScenes
    from atrous.inference.evaluate import evaluate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = atrous.load_checkpoint(str(runs / "w1_full" / "model.safetensors"))
        alone = evaluate(model, SyntheticScenes("val", length=7, size=32), batch_size=2, trimap_widths=[1],
                         progress=False)
    finally:
        torch.set_num_threads(threads)
    shared = json.loads((runs / "eval_w2.json").read_text())
    assert json.loads(json.dumps(alone)) == shared
    assert shared["images"] == 7


def test_losses_add_up_over_two_processes(runs):
    """Each rank's share and gradient, summed, are the loss and gradient of the whole batch."""
    logits, target = loss_batch()
    whole = loss_shares(logits, target, lambda t: t, world=1)
    ranks = [torch.load(f"{runs / 'losses'}.{rank}", weights_only=True) for rank in (0, 1)]
    for case, (value, grad) in whole.items():
        assert ranks[0][case][0] == pytest.approx(value, rel=1e-5), case
        torch.testing.assert_close(torch.cat([ranks[0][case][1], ranks[1][case][1]]), grad, atol=1e-6, rtol=1e-4,
                                   msg=case)


def test_batch_norm_across_two_processes_is_batch_norm_of_the_whole_batch(runs):
    x, upstream = batchnorm_case()
    layer = torch.nn.BatchNorm2d(3).train()
    whole = x.clone().requires_grad_(True)
    y = layer(whole)
    y.backward(upstream)
    ranks = [torch.load(f"{runs / 'batchnorm'}.{rank}", weights_only=True) for rank in (0, 1)]
    assert ranks[0]["type"] == "AllReduceBatchNorm"
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), whole.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ranks[1]["weight_grad"], layer.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ranks[0]["running_var"], layer.running_var, atol=1e-6, rtol=1e-5)


# --- pieces ------------------------------------------------------------------------------------
def test_global_batch_split():
    assert micro_batch_size(16, 4, 2) == 2
    with pytest.raises(UserError, match="^batch_size 6 does not split into 4 process.*multiple of 8"):
        micro_batch_size(6, 4, 2)
    # every sample of every step once, micro-batch by micro-batch, rank after rank
    orders = [list(GlobalBatchSampler(1, 3, 8, World(rank, 2), accum=2)) for rank in (0, 1)]
    rebuilt = []
    for step in range(2):
        for micro in range(2):
            for rank in (0, 1):
                start = (2 * step + micro) * 2
                rebuilt += orders[rank][start: start + 2]
    assert rebuilt == list(range(8, 24))
    assert len(GlobalBatchSampler(1, 3, 8, World(1, 2), accum=2)) == 8


@pytest.mark.parametrize("feature", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_sharded_dropout_draws_torchs_masks(feature, layout):
    """Shards drawn from the same RNG state are, together, torch's mask for the whole batch."""
    x = torch.randn(4, 5, 6, 7).contiguous(memory_format=layout)
    reference = torch.nn.Dropout2d(0.3) if feature else torch.nn.Dropout(0.3)
    torch.manual_seed(0)
    expected = reference(x)
    layer = shard_dropout(torch.nn.Sequential(reference))[0]
    assert isinstance(layer, ShardedDropout)
    parts = []
    for first in (0, 2):
        torch.manual_seed(0)
        layer.rows = (first, 4)
        parts.append(layer(x[first: first + 2]))
    assert torch.equal(torch.cat(parts), expected)
    assert torch.equal(layer.eval()(x), x)


def test_gradient_accumulation_equals_the_whole_batch(tmp_path):
    """Without batch norm (the original U-Net), K micro-batches train as one batch does, its
    channel dropout included."""
    from atrous.training.trainer import train

    options = dict(model="unet", backbone=None, model_options={"base_channels": 4}, iters=2)
    train(small_config(tmp_path / "k1", **options))
    train(small_config(tmp_path / "k2", grad_accum=2, **options))
    assert_same_weights(tmp_path / "k1", tmp_path / "k2")


# --- the command line through torchrun ----------------------------------------------------------
def torchrun(*argv: str, timeout: float = WORKER_TIMEOUT_S) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(_free_port()), *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout, env=env)


def test_the_readme_torchrun_line_works(tmp_path):
    line = next(line for line in (REPO / "README.md").read_text().splitlines()
                if line.startswith("torchrun --nproc-per-node 2 -m atrous train --dataset synthetic"))
    argv = line.split()[3:]
    argv[argv.index("--out") + 1] = str(tmp_path / "run")
    small = ["--iters", "2", "--crop-size", "32", "--synthetic-size", "32", "--synthetic-length", "4",
             "--eval-split", "", "--no-progress"]
    result = torchrun(*argv, *small)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained 2/2 iterations") == 1  # rank 0 reports, alone
    assert {"model.safetensors", "train_state.pt", "log.jsonl", "config.json"} <= set(os.listdir(tmp_path / "run"))


def test_an_error_on_one_rank_ends_every_rank(tmp_path):
    """A corrupt image that only rank 1 reads: one line naming it, a non-zero exit, no hang."""
    root = tmp_path / "data"
    order = random_folder_dataset(root, 4)  # the first global batch of 2: order[0] (rank 0) and order[1] (rank 1)
    (root / "images" / f"{order[1]}.png").write_bytes(b"not a png")
    started = time.monotonic()
    result = torchrun("-m", "atrous", "train", "--model", "unet", "--model-opt", "base_channels=4",
                      "--dataset", "folder", "--data-root", str(root), "--crop-size", "32", "--iters", "3",
                      "--batch-size", "2", "--out", str(tmp_path / "run"), "--no-progress", timeout=240)
    assert result.returncode != 0
    assert time.monotonic() - started < 240
    ours = [line for line in result.stderr.splitlines() if line.startswith("atrous train: error: rank 1:")]
    assert len(ours) == 1 and f"{order[1]}.png" in ours[0], result.stderr[-3000:]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_sigterm_stops_every_rank_at_one_step_and_the_run_resumes(tmp_path):
    """torchrun passes SIGTERM to both ranks: they agree on the step, rank 0 writes the state,
    and `--resume auto` on two processes finishes the run."""
    out = tmp_path / "run"
    argv = ["-m", "atrous", "train", "--model", "unet", "--model-opt", "base_channels=4", "--dataset", "synthetic",
            "--synthetic-size", "32", "--synthetic-length", "8", "--crop-size", "32", "--batch-size", "4",
            "--iters", "40", "--eval-split", "", "--no-progress", "--checkpoint-every", "1000", "--out", str(out)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(_free_port()), *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while not ((out / "log.jsonl").exists() and (out / "log.jsonl").read_text().strip()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.terminate()
    stdout, stderr = process.communicate(timeout=WORKER_TIMEOUT_S)
    step = torch.load(out / "train_state.pt", weights_only=True)["step"]
    assert 0 < step < 40 and stdout.count(f"stopped by SIGTERM after iteration {step} of 40") == 1, stderr[-3000:]
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "event" in line]
    assert [(e["event"], e["step"]) for e in events] == [("stopped", step)]
    result = torchrun(*argv, "--resume", "auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 40
