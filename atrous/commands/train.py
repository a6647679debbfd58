"""`atrous train`: the options from flags over a config file (over the run being resumed),
then training and the final evaluation."""

from __future__ import annotations

import os
from typing import Any

from atrous.errors import UserError
from atrous.inference.evaluate import format_table
from atrous.options import read_config
from atrous.runtime.distributed import is_main_process
from atrous.training import TrainConfig, train
from atrous.training.config import RESUME_INHERITS, RESUME_MAY_CHANGE
from atrous.training.state import STATE_FILE
from atrous.training.trainer import metrics_key

HELP = "train a model; writes DIR/model.safetensors and DIR/metrics.json"
Options = TrainConfig


def resolve(flags: dict[str, Any], config: str | None = None) -> TrainConfig:
    """The run's configuration: `flags` (the options given on the command line) win over the
    `config` file's values, which win over the saved config.json of a run being resumed."""
    values: dict[str, Any] = {}
    if flags.get("resume") and flags.get("out"):
        # --resume continues the run as it was configured: no need to repeat its flags
        saved = os.path.join(flags["out"], "config.json")
        has_state = os.path.isfile(os.path.join(flags["out"], STATE_FILE))
        if os.path.isfile(saved) and (flags["resume"] != "auto" or has_state):
            run_control = set(RESUME_MAY_CHANGE) - set(RESUME_INHERITS)  # how the first run was driven
            values.update({k: v for k, v in read_config(saved, TrainConfig).items() if k not in run_control})
    if config:
        values.update(read_config(config, TrainConfig))
    if "iters" in flags or "epochs" in flags:  # a budget flag replaces the config's budget
        values.pop("iters", None)
        values.pop("epochs", None)
    for merged in ("model_options", "loss_options"):  # KEY=VALUE flags add to the config's mapping
        if merged in flags:
            flags = {**flags, merged: {**(values.get(merged) or {}), **flags[merged]}}
    values.update(flags)
    for required in ("model", "dataset", "out"):
        if not values.get(required):
            raise UserError(f"--{required} is required (or set '{required}' in --config)")
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def run(cfg: TrainConfig) -> int:
    """0 when the run finished (or had finished, with --resume auto); 128 + the signal's number
    when a signal stopped it, its state written (atrous.training.preemption)."""
    result = train(cfg)
    summary = result["train"]
    code = summary.get("exit_code", 0)
    if not is_main_process():  # under torchrun, rank 0 reports
        return code
    if summary.get("already_finished"):
        print(f"{cfg.out} already finished its {summary['total_iters']} iterations: nothing to do")
        return 0
    if summary.get("stopped") and not summary["finished"]:
        print(f"{summary['stopped']} after iteration {summary['iters']} of {summary['total_iters']}; "
              f"state written: continue with --resume (or --resume auto)")
        return code
    print(f"trained {summary['iters']}/{summary['total_iters']} iterations in {summary['seconds']:.1f} s "
          f"-> {cfg.out}/model.safetensors")
    if summary.get("stopped"):  # finished early
        print(summary["stopped"])
    metrics = result.get(metrics_key(cfg.eval_split))
    if metrics:
        print(format_table(metrics))
    if result.get("best"):
        best = result["best"]
        print(f"best {best['metric']} {best['value']:.4f} at iteration {best['step']} -> {cfg.out}/{best['file']}")
    return 0
