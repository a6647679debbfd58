"""Deterministic runs (`--deterministic`): the same command on the same machine and software
gives the same weights, bit for bit, as PyTorch's reproducibility notes describe.

- torch.use_deterministic_algorithms(True) (warn_only=False): an operation that has only a
  nondeterministic implementation on this device raises, said in one line naming the option
  (`nondeterministic_error`), rather than changing the weights from run to run;
- cuDNN picks deterministic convolution algorithms and does not benchmark (benchmark=False);
- on CUDA, CUBLAS_WORKSPACE_CONFIG=:4096:8 (unless set already), which cuBLAS needs for
  deterministic matrix products; it stays set, as cuBLAS reads it once per process.

The flags are set when the loop starts and restored when it ends. Data workers are seeded
from (seed, rank, worker) in every run (`init_worker`): samples are drawn from (seed, sample
number) alone, so this only fixes what code in a worker draws from the global generators.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from atrous.errors import UserError
from atrous.options import option
from atrous.training.hooks import Run, TrainingFeature, register_feature
from atrous.training.preemption import ignore_stop_signals

CUBLAS_WORKSPACE = ":4096:8"


@dataclass(kw_only=True)
class DeterministicOptions:
    deterministic: bool = option(False, "deterministic algorithms only (torch.use_deterministic_algorithms, "
                                 "no cuDNN benchmarking): the same run gives the same weights bit for bit; "
                                 "an operation with no deterministic implementation on the device is an "
                                 "error (atrous.training.deterministic)")


@register_feature("deterministic")
class Deterministic(TrainingFeature):
    """--deterministic: torch's global flags set for the loop, restored after it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.saved: dict[str, bool] | None = None
        if device.type == "cuda":  # before cuBLAS's first use, which reads it
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)

    @classmethod
    def from_config(cls, cfg: Any, run: Run) -> Deterministic | None:
        return cls(run.device) if cfg.deterministic else None

    def on_start(self, run: Run) -> None:
        cudnn = torch.backends.cudnn
        self.saved = {"algorithms": torch.are_deterministic_algorithms_enabled(),
                      "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
                      "cudnn_deterministic": cudnn.deterministic, "cudnn_benchmark": cudnn.benchmark}
        torch.use_deterministic_algorithms(True, warn_only=False)
        cudnn.deterministic, cudnn.benchmark = True, False

    def on_end(self, run: Run, summary: dict[str, Any]) -> None:
        if self.saved is None:
            return
        saved, self.saved = self.saved, None
        torch.use_deterministic_algorithms(saved["algorithms"], warn_only=saved["warn_only"])
        torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
        torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]


def nondeterministic_error(err: RuntimeError) -> UserError | None:
    """torch's refusal of a nondeterministic operation, in one line naming `deterministic`;
    None for any other error."""
    text = str(err).strip()
    if "does not have a deterministic implementation" in text:
        operation = text.split()[0]
        return UserError(f"deterministic: {operation} has no deterministic implementation in torch on this "
                         "device; train with it off (or on another device)", argument="deterministic")
    if "CUBLAS_WORKSPACE_CONFIG" in text:
        return UserError(f"deterministic: cuBLAS was used before CUBLAS_WORKSPACE_CONFIG was set; set "
                         f"CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} in the environment before starting",
                         argument="deterministic")
    return None


def seed_globals(seed: int, rank: int, worker: int) -> None:
    """Seed random's, numpy's and torch's global generators from (seed, rank, worker)."""
    state = np.random.SeedSequence([seed % 2**64, rank, worker]).generate_state(2)  # a negative seed too
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


def init_worker(worker: int, *, seed: int, rank: int = 0) -> None:
    """A DataLoader worker_init_fn (bind seed and rank with functools.partial): the stop
    signals left to the main process (atrous.training.preemption), the global generators seeded."""
    ignore_stop_signals(worker)
    seed_globals(seed, rank, worker)
