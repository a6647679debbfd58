"""The train loss of each of a recipe's first optimiser steps: where a run diverges.

The training log keeps one loss per epoch, which averages a blow-up of the first steps away
(RefineNet's first CamVid epoch: 56). This runs the recipe's own Trainer (data, loss,
optimiser, learning-rate schedule, precision) for a few steps and prints every step's loss,
with keys of the recipe overridden, so that two settings can be compared on the same data:

    .venv/bin/python benchmarks/first_steps.py configs/camvid/refinenet_resnet18.yaml \\
        --steps 40 --crop-size 128 --threads 1 --set iters=300
    .venv/bin/python benchmarks/first_steps.py configs/camvid/refinenet_resnet18.yaml \\
        --steps 40 --crop-size 128 --threads 1 --set iters=300 lr=0.0003 warmup_iters=30

The learning rate follows the recipe's schedule over its `iters` (iters=300: the light
protocol's), as in the real run.
Nothing is written but a scratch run folder (--out, overwritten).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch
import yaml
from harness import ROOT


def parse_sets(items: list[str]) -> dict:
    """['lr=0.0003', 'precision=fp32'] -> {'lr': 0.0003, 'precision': 'fp32'} (YAML values)."""
    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got '{item}'")
        found[key] = yaml.safe_load(value)
    return found


def first_losses(recipe: dict, steps: int) -> tuple[str, list[float]]:
    """The precision the run resolved to, and the loss of each of its first `steps` steps."""
    from atrous.training.trainer import TrainConfig, Trainer, poly_lr

    cfg = TrainConfig(**recipe)
    trainer = Trainer(cfg)
    losses = []
    for step, micro_batches in enumerate(itertools.islice(trainer.steps(), steps)):
        trainer.step = step
        lr = poly_lr(cfg.base_lr, step, trainer.total, cfg.poly_power, cfg.warmup_iters)
        losses.append(trainer._train_step(micro_batches, lr)["loss"])
    return trainer.precision, losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a training YAML (configs/...)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--crop-size", type=int, help="smaller crops for a quick look (default: the recipe's)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="recipe keys to override")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--out", default="/tmp/atrous_first_steps", help="scratch run folder (overwritten)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe_path = os.path.abspath(args.recipe)
    with open(recipe_path) as handle:
        recipe = yaml.safe_load(handle)
    os.chdir(ROOT)  # the recipes' data_root is relative to the project root
    recipe.update(out=args.out, overwrite=True, progress=False, eval_split=None)
    if args.crop_size:
        recipe["crop_size"] = args.crop_size
    recipe.update(parse_sets(args.set))
    precision, losses = first_losses(recipe, args.steps)
    print(f"{os.path.relpath(recipe_path, ROOT)} {' '.join(args.set)} ({precision}): "
          + ", ".join(f"{v:.2f}" for v in losses))
    print(f"max {max(losses):.2f} at step {losses.index(max(losses)) + 1}; last 10 mean "
          f"{sum(losses[-10:]) / len(losses[-10:]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
