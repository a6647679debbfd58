"""What every experiment tracker of `--log` does, and the registry that names them: a tracker
opens for a run (or reopens the run it logged before a --resume), takes scalars and pictures
at a step, and closes. Each lives in its own module with its optional extra, imported only
when asked for, so a missing one is a one-line error naming the extra."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from atrous.errors import UserError
from atrous.registry import Registry


@dataclass(frozen=True)
class RunInfo:
    """What a tracker knows of the run it logs: its folder, where trackers write (--log-dir),
    its name and configuration, and the id this tracker gave it before a resume."""

    out: str
    log_dir: str | None
    name: str
    config: dict[str, Any]
    resumed_id: str | None
    resume_step: int  # steps done before this process started (0 for a new run)


class Tracker:
    """One experiment tracker. `run_id` is kept in the training state so that a resumed run
    logs into the same tracker run."""

    run_id: str | None = None

    def scalars(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def images(self, images: dict[str, np.ndarray], step: int) -> None:
        """(H, W, 3) uint8 pictures by name."""

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class TrackerEntry:
    open: Callable[[RunInfo], Tracker]
    needs: str | None  # the importable module the tracker needs
    extra: str | None  # the optional extra that installs it


TRACKERS: Registry[TrackerEntry] = Registry("logger")


def register_tracker(name: str, *, needs: str | None = None, extra: str | None = None):
    """Decorator on a function RunInfo -> Tracker: the tracker becomes `--log name`."""

    def add(open_tracker: Callable[[RunInfo], Tracker]) -> Callable[[RunInfo], Tracker]:
        TRACKERS.add(name, TrackerEntry(open_tracker, needs, extra), key=open_tracker)
        return open_tracker

    return add


def tracker_names(text: str) -> list[str]:
    """`--log tensorboard,csv` -> ["tensorboard", "csv"], each known and installed."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        entry = TRACKERS.get(name)
        if entry.needs and importlib.util.find_spec(entry.needs) is None:
            raise UserError(f"log {name} needs {entry.needs}: pip install 'atrous[{entry.extra}]'", argument="log")
    return names


def metric_name(name: str) -> str:
    """A name every tracker accepts (MLflow allows letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)
