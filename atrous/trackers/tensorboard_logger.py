"""`--log tensorboard`: an event file through torch.utils.tensorboard (the `tensorboard`
extra) in <out>/tensorboard, or --log-dir. A resumed run purges the events written after the
step it resumes from, so a curve has no doubled stretch."""

from __future__ import annotations

import os

import numpy as np

from atrous.trackers.base import RunInfo, Tracker, register_tracker


class TensorBoardTracker(Tracker):
    def __init__(self, folder: str, resume_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(folder, purge_step=resume_step + 1 if resume_step else None)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def images(self, images: dict[str, np.ndarray], step: int) -> None:
        for name, picture in images.items():
            self.writer.add_image(name, picture, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@register_tracker("tensorboard", needs="tensorboard", extra="tensorboard")
def open_tensorboard(run: RunInfo) -> TensorBoardTracker:
    return TensorBoardTracker(run.log_dir or os.path.join(run.out, "tensorboard"), run.resume_step)
