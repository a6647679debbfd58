"""Training speed of atrous against smp on identical work, in one process, with and without
torch.compile and the fused optimiser: the CamVid peer pairs' recipes (same data pipeline,
loss, optimiser, precision ("auto": bf16 where native), channels-last, batch 8, 256 crops),
their training steps interleaved (atrous eager, compiled, fused, smp eager, compiled, fused,
atrous eager, ...) so that all see the same machine state; the median seconds per step of
each (and the fastest step: on a shared machine, what a step costs when nothing else runs),
steps per second, and the speed ratios (of medians).

    .venv/bin/python benchmarks/train_speed.py [--steps 15] [--warmup 3] [--threads 2]
        [--variants eager compile fused] [--pairs unet deeplab_v3plus]

`compile` is the recipe with `compile: true` (torch.compile of the model, default mode); its
first step (compilation) is reported apart and its warm-up steps are not timed. `fused` is
the recipe with `fused_optimizer: true` (the optimiser's fused kernel). The benchmark
table's s/iter columns are whole-run means of runs that may have shared the CPU with other
jobs; this is the controlled comparison. Writes benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import camvid  # benchmarks/camvid.py: recipes, the peer pairs, the smp adapters
import torch
from harness import RESULTS_DIR, ROOT, clock, command_line, cpu_name, write_json

VARIANTS = {"eager": {}, "compile": {"compile": True}, "fused": {"fused_optimizer": True}}
# atrous's DeepLab v3+ follows the paper: plain 3x3 convolutions in ASPP and decoder on a ResNet
# (separable ones with Xception); smp's uses separable ones on every encoder. This variant
# gives atrous smp's separable head: the same work, so the step times compare kernels.
SEPARABLE = {"model_options": {"separable": True}}


def make_stepper(recipe: Path, out: str, **overrides) -> Callable[[], float]:
    """A function doing one training step of the recipe's Trainer (its own data stream),
    returning the seconds the step took (data loading not counted)."""
    from atrous.training.trainer import Trainer, poly_lr

    cfg = camvid.train_config(recipe, out=out, iters=10_000, resume=False, overwrite=True, progress=False)
    if "model_options" in overrides:
        overrides["model_options"] = {**cfg.model_options, **overrides["model_options"]}
    trainer = Trainer(dataclasses.replace(cfg, **overrides))
    steps = trainer.steps()

    def step() -> float:
        micro_batches = next(steps)  # data loading is outside the timing, as for every model
        seconds, _ = clock(lambda: trainer._train_step(
            micro_batches, poly_lr(cfg.base_lr, trainer.step, trainer.total, cfg.poly_power)))
        trainer.step += 1
        return seconds

    return step


def compare(ours: Path, peer: Path, variants: list[str], steps: int, warmup: int) -> dict:
    camvid.register_smp_models()
    names = {"atrous": ours, "smp": peer}
    with tempfile.TemporaryDirectory() as tmp:
        steppers = {f"{who}:{variant}": make_stepper(recipe, f"{tmp}/{who}_{variant}", **VARIANTS[variant])
                    for who, recipe in names.items() for variant in variants}
        if "deeplab_v3plus" in ours.name:
            steppers["atrous:separable"] = make_stepper(ours, f"{tmp}/atrous_separable", **SEPARABLE)
        first = {key: step() for key, step in steppers.items()}  # compilation happens here
        for _ in range(warmup - 1):
            for step in steppers.values():
                step()
        times: dict[str, list[float]] = {key: [] for key in steppers}
        for _ in range(steps):
            for key, step in steppers.items():
                times[key].append(step())
    median = {key: statistics.median(values) for key, values in times.items()}
    smp_eager = median.get("smp:eager")
    return {
        "atrous": camvid.recipe_key(ours), "smp": camvid.recipe_key(peer), "steps": steps,
        "s_per_iter": median,
        # the fastest step: what a step costs when nothing else runs (on a shared machine)
        "min_s_per_iter": {key: min(values) for key, values in times.items()},
        "steps_per_s": {key: 1 / value for key, value in median.items()},
        # > 1: faster than smp without compile
        "speed_vs_smp_eager": {key: smp_eager / value for key, value in median.items()} if smp_eager else {},
        "first_step_s": first,
        "times": times,
    }


def print_row(row: dict) -> None:
    for key, seconds in row["s_per_iter"].items():
        who, variant = key.split(":")
        model = row[who].split("/")[-1]
        same = row["s_per_iter"].get(f"smp:{variant}", row["s_per_iter"].get("smp:eager"))
        print(f"| {model} | {variant} | {seconds:.3f} | {row['min_s_per_iter'][key]:.3f} | {1 / seconds:.2f} "
              f"| {row['speed_vs_smp_eager'].get(key, float('nan')):.2f} | {same / seconds if same else float('nan'):.2f} "
              f"| {row['first_step_s'][key]:.1f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--pairs", nargs="+", help="atrous recipes to run (e.g. unet deeplab_v3plus); default all")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the recipes' data_root is relative to the project root
    pairs = [(camvid.resolve_recipe(ours), camvid.resolve_recipe(peer)) for peer, ours in camvid.PEERS.items()
             if not args.pairs or any(name in ours for name in args.pairs)]
    rows = []
    print("| model | variant | s/iter (median) | s/iter (fastest) | steps/s | speed vs smp eager "
          "| speed vs smp same variant | first step s |\n|---|---|---|---|---|---|---|---|")
    for ours, peer in pairs:
        row = compare(ours, peer, args.variants, args.steps, args.warmup)
        rows.append(row)
        print_row(row)
    from atrous.runtime.device import cpu_has_native_bf16

    result = {"command": command_line(__file__), "threads": args.threads,
              "torch": torch.__version__, "machine": platform.machine(), "cpu": cpu_name(),
              "native_bf16": cpu_has_native_bf16(),  # the recipes' precision "auto" is bf16 only then
              "rows": rows}
    out = RESULTS_DIR / "train_speed.json"
    write_json(out, result)
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
