"""What --deterministic costs: training steps of DeepLab v3+ / ResNet-18 on synthetic 128-pixel
scenes (batch 8, 128 crops, SGD), with and without deterministic algorithms, in one process,
their steps interleaved (plain, deterministic, plain, ...) so that both see the same machine
state; the median seconds per step (data loading not timed), the fastest step, and the ratio.
The deterministic trainer's flags are set and restored around each of its steps by the feature
itself (atrous.training.deterministic). Both runs start from the same seed and each keeps its
own random-number state between its steps, so the script also says whether they ended with
the same weights (deterministic algorithms may compute differently, not only repeatably).

    .venv/bin/python benchmarks/deterministic.py [--steps 20] [--warmup 2] [--threads 2]
        [--device cpu] [--precision fp32]

Writes benchmarks/results/deterministic.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from harness import RESULTS_DIR, ROOT, command_line, cpu_name, write_json

VARIANTS = {"plain": False, "deterministic": True}


def make_stepper(out: str, deterministic: bool, args: argparse.Namespace) -> tuple[Callable[[], float], object]:
    """A function doing one training step of its own Trainer, returning the seconds it took
    (data loading not counted), and the trainer."""
    from atrous.training import state
    from atrous.training.deterministic import Deterministic
    from atrous.training.trainer import TrainConfig, Trainer, poly_lr

    cfg = TrainConfig(model="deeplab_v3plus", backbone="resnet18", dataset="synthetic", synthetic_size=128,
                      synthetic_length=64, crop_size=128, batch_size=8, iters=10_000, eval_split=None,
                      progress=False, checkpoint_every=10**6, out=out, device=args.device,
                      precision=args.precision, deterministic=deterministic)
    trainer = Trainer(cfg)
    steps = trainer.steps()
    switches = [feature for feature in trainer.features if isinstance(feature, Deterministic)]
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    rng = [state.rng_state(trainer.device)]  # its own dropout draws, as if it ran alone

    def step() -> float:
        micro_batches = next(steps)
        state.set_rng_state(rng[0], trainer.device)
        for feature in switches:
            feature.on_start(trainer)
        try:
            sync()
            start = time.perf_counter()
            trainer._train_step(micro_batches, poly_lr(cfg.base_lr, trainer.step, trainer.total, cfg.poly_power))
            sync()
            seconds = time.perf_counter() - start
        finally:
            for feature in switches:
                feature.on_end(trainer, {})
        rng[0] = state.rng_state(trainer.device)
        trainer.step += 1
        return seconds

    return step, trainer


def measure(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        made = {name: make_stepper(f"{tmp}/{name}", flag, args) for name, flag in VARIANTS.items()}
        for _ in range(args.warmup):
            for step, _trainer in made.values():
                step()
        times: dict[str, list[float]] = {name: [] for name in made}
        for _ in range(args.steps):
            for name, (step, _trainer) in made.items():
                times[name].append(step())
        weights = [trainer.model.state_dict() for _step, trainer in made.values()]
        same = all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
        precision = made["plain"][1].precision
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"s_per_step": median, "min_s_per_step": {name: min(values) for name, values in times.items()},
            "deterministic_vs_plain": median["deterministic"] / median["plain"],
            "same_weights": same, "precision": precision, "times": times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "auto"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = measure(args)
    cpu = cpu_name()
    print(f"deeplab_v3plus/resnet18, synthetic 128 px, batch 8, {args.steps} steps each (interleaved); "
          f"{cpu}, {args.threads} threads, device {args.device}, precision {result['precision']}, "
          f"torch {torch.__version__}")
    print("| variant | s/step (median) | s/step (fastest) | vs plain |\n|---|---|---|---|")
    for name, seconds in result["s_per_step"].items():
        print(f"| {name} | {seconds:.3f} | {result['min_s_per_step'][name]:.3f} "
              f"| {seconds / result['s_per_step']['plain']:.3f} |")
    print(f"same weights after {args.warmup + args.steps} steps: {result['same_weights']}")
    out = RESULTS_DIR / "deterministic.json"
    write_json(out, {"command": command_line(__file__), "cpu": cpu, "threads": args.threads,
                     "device": args.device, "torch": torch.__version__, "model": "deeplab_v3plus/resnet18",
                     "input": "synthetic 128x128, batch 8", "steps": args.steps, "warmup": args.warmup, **result})
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
