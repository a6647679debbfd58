"""Training speed of atrous against smp on identical work, in one process: the CamVid peer
pairs' recipes (same data pipeline, loss, optimiser, bf16, channels-last, batch 8, 256 crops),
their training steps interleaved (atrous, smp, atrous, smp, ...) so that both see the same
machine state; the median seconds per step of each and their ratio.

    .venv/bin/python benchmarks/train_speed.py [--steps 15] [--warmup 3] [--threads 2]

The benchmark table's s/iter columns are whole-run means of runs that may have shared the CPU
with other jobs; this is the controlled comparison. Writes benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import camvid  # benchmarks/camvid.py: recipes, the peer pairs, the smp adapters
import torch

ROOT = Path(__file__).resolve().parents[1]


def make_stepper(recipe: Path, out: str):
    """A function doing one training step of the recipe's Trainer (its own data stream)."""
    from atrous.engine.train import Trainer, poly_lr

    cfg = camvid.train_config(recipe, out=out, iters=10_000, resume=False, overwrite=True, progress=False)
    trainer = Trainer(cfg)
    batches = iter(trainer._loader())

    def step() -> float:
        images, masks = next(batches)  # data loading is outside the timing, as for both models
        start = time.perf_counter()
        trainer._train_step(images, masks, poly_lr(cfg.base_lr, trainer.step, trainer.total, cfg.poly_power))
        trainer.step += 1
        return time.perf_counter() - start

    return step


def compare(ours: Path, peer: Path, steps: int, warmup: int) -> dict:
    camvid.register_smp_models()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = make_stepper(ours, f"{tmp}/a"), make_stepper(peer, f"{tmp}/b")
        for _ in range(warmup):
            a(), b()
        times_a, times_b = [], []
        for _ in range(steps):
            times_a.append(a())
            times_b.append(b())
    med_a, med_b = statistics.median(times_a), statistics.median(times_b)
    return {"atrous": camvid.recipe_key(ours), "smp": camvid.recipe_key(peer), "steps": steps,
            "s_per_iter_atrous": med_a, "s_per_iter_smp": med_b, "smp_over_atrous": med_b / med_a,
            "times_atrous": times_a, "times_smp": times_b}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the recipes' data_root is relative to the project root
    pairs = [(camvid.resolve_recipe(ours), camvid.resolve_recipe(peer)) for peer, ours in camvid.PEERS.items()]
    rows = []
    print("| atrous | smp | s/iter atrous | s/iter smp | smp / atrous |\n|---|---|---|---|---|")
    for ours, peer in pairs:
        row = compare(ours, peer, args.steps, args.warmup)
        rows.append(row)
        print(f"| {row['atrous']} | {row['smp']} | {row['s_per_iter_atrous']:.2f} | {row['s_per_iter_smp']:.2f} "
              f"| {row['smp_over_atrous']:.2f} |", flush=True)
    result = {"command": "benchmarks/train_speed.py " + " ".join(sys.argv[1:]), "threads": args.threads,
              "torch": torch.__version__, "machine": platform.machine(), "rows": rows}
    out = ROOT / "benchmarks" / "results" / "train_speed.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
