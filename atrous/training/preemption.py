"""Stopping at any moment: SIGTERM, SIGINT and SIGUSR1 (what a cluster sends before it
preempts a job; SLURM's `--signal=USR1@90`) make the run finish the step it is in, write its
checkpoint and training state atomically, and exit with 128 + the signal's number (143, 130,
138), so that `--resume` (or `--resume auto` in a requeue loop) continues exactly where it
stopped. Under torchrun every rank stops at the same step: the ranks agree at each step
through one small all-reduce. A second signal of the same kind stops at once, as usual.

Handlers are installed only in the main thread of the main interpreter (Python's rule). The
data-loading workers ignore SIGINT and SIGUSR1 (a terminal's Ctrl-C, or a scheduler's signal,
can reach every process), so the loader lives until the step ends and then ends them as usual.
A SIGTERM to a worker ends it WORKER_GRACE_S seconds later at the latest: the loader itself
ends a stuck worker with SIGTERM, which must not hang the exit. Should a worker end before the
step in flight does, the loader's failure is read as the stop (`stopped_by`), and the state
is the last checkpoint's.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import torch

from atrous.runtime import distributed
from atrous.training.hooks import Run, TrainingFeature, register_feature

STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGINT", "SIGUSR1")) if s)
WORKERS_IGNORE = tuple(s for s in STOP_SIGNALS if s != signal.SIGTERM)
WORKER_GRACE_S = 30.0


def exit_code(signum: int) -> int:
    return 128 + signum


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """A DataLoader worker_init_fn: the worker leaves SIGINT and SIGUSR1 to the main process,
    and outlives a SIGTERM by up to WORKER_GRACE_S seconds (the step in flight needs it)."""
    for signum in WORKERS_IGNORE:
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_later)


def _end_later(signum: int, frame: Any) -> None:
    timer = threading.Timer(WORKER_GRACE_S, os._exit, args=(128 + signum,))
    timer.daemon = True
    timer.start()


def stopped_by(features: list[TrainingFeature]) -> int | None:
    """The stop signal a run has received and not yet acted on, if any."""
    for feature in features:
        if isinstance(feature, StopOnSignal) and feature.received:
            return feature.received
    return None


@register_feature("signals")
class StopOnSignal(TrainingFeature):
    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    @classmethod
    def from_config(cls, cfg: Any, run: Run) -> StopOnSignal | None:
        return cls() if threading.current_thread() is threading.main_thread() else None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received == signum:  # the second of the same: the usual behaviour, at once
            signal.signal(signum, self.previous.get(signum) or signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.received = signum
        print(f"\nreceived {signal.Signals(signum).name}: stopping after this step (send it again to stop now)",
              flush=True)

    def on_start(self, run: Run) -> None:
        for signum in STOP_SIGNALS:
            self.previous[signum] = signal.signal(signum, self._handle)

    def after_step(self, run: Run, parts: dict[str, float]) -> None:
        received = self.received or 0
        if run.world.distributed:  # every rank stops at the same step
            anywhere = distributed.all_reduce_sum(torch.tensor([1.0 if received else 0.0]))
            if anywhere.item() and not received:
                received = signal.SIGTERM  # another rank's signal
        if received:
            name = signal.Signals(received).name
            run.request_stop(f"stopped by {name}", finished=False, exit_code=exit_code(received))

    def on_end(self, run: Run, summary: dict[str, Any]) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}
