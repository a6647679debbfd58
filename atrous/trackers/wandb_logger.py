"""`--log wandb`: a Weights & Biases run (the `wandb` extra). Offline, in <out>/wandb (or
--log-dir), unless WANDB_MODE says otherwise or WANDB_API_KEY is set: a run with no network
still logs, and `wandb sync <folder>` uploads it later. The configuration is the run's config;
a resumed run continues the same W&B run (its id is kept in the training state)."""

from __future__ import annotations

import os

import numpy as np

from atrous.trackers.base import RunInfo, Tracker, register_tracker


def wandb_mode() -> str:
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


class WandbTracker(Tracker):
    def __init__(self, run: RunInfo) -> None:
        import wandb

        folder = run.log_dir or run.out
        os.makedirs(folder, exist_ok=True)
        self.wandb = wandb
        # no console capture, system statistics or git scan: the trainer logs what matters
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True,
                                  save_code=False)
        self.run = wandb.init(dir=folder, name=run.name, config=run.config, mode=wandb_mode(),
                              id=run.resumed_id, resume="allow" if run.resumed_id else None,
                              project=os.environ.get("WANDB_PROJECT", "atrous"), reinit="create_new",
                              settings=settings)
        self.run_id = self.run.id

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def images(self, images: dict[str, np.ndarray], step: int) -> None:
        self.run.log({name: self.wandb.Image(picture) for name, picture in images.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


@register_tracker("wandb", needs="wandb", extra="wandb")
def open_wandb(run: RunInfo) -> WandbTracker:
    return WandbTracker(run)
