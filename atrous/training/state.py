"""The resume state of a run: what `train_state.pt` holds, how it is written (atomically, by
rank 0) and read back, how `--resume auto` decides, and the log lines a resumed run keeps.

The state holds the trained weights, the optimiser, the gradient scaler, the step, the RNG
states, the running epoch loss, the elapsed training time, the configuration, and each
training feature's own state under "features" (atrous.training.hooks), so that a resumed run
equals one that never stopped. Nothing in it belongs to one rank: a run resumes on any number
of processes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from atrous.errors import UserError
from atrous.outputs import write_atomic, write_text_atomic

STATE_FILE = "train_state.pt"
# states written before the features had their own entries kept these two at the top level
_LEGACY_FEATURE_KEYS = {"ema": "average", "adversarial": "adversary"}


def capture(trainer: Any) -> dict[str, Any]:
    """The trainer's whole resume state (see the module's docstring)."""
    state = {
        "step": trainer.step,
        "total_iters": trainer.total,
        "finished": trainer.finished,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(trainer.device) if trainer.device.type == "cuda" else [],
        "epoch_loss": list(trainer.epoch_loss),
        "elapsed": trainer.elapsed,
        "config": trainer.config_record(),
        "world_size": trainer.world.size,  # for the record only
        "features": {feature.name: feature.state_dict() for feature in trainer.features},
    }
    if trainer.scaler is not None:
        state["scaler"] = trainer.scaler.state_dict()
    return state


def save(path: str, state: dict[str, Any]) -> None:
    """Written beside `path` and moved over it in one step: a kill leaves the old state or the new."""
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def read(path: str, device: torch.device | str = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """The state in `path`; `mmap`: its tensors mapped, not read (to look at its step alone)."""
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as err:  # a damaged file: say which and why, in one line
        raise UserError(f"resume: cannot read {path}: {str(err).splitlines()[0]}", argument="resume") from err


def restore(trainer: Any, state: dict[str, Any]) -> None:
    """The trainer (and each of its features) as it was when `state` was captured."""
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"].cpu())
    _restore_cuda_rng(state.get("cuda_rng"), trainer.device)
    if trainer.scaler is not None and "scaler" in state:
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.step = int(state["step"])
    trainer.finished = bool(state.get("finished", False))
    trainer.epoch_loss = list(state["epoch_loss"])
    trainer.elapsed = float(state["elapsed"])
    saved = state.get("features", {})
    for feature in trainer.features:
        own = saved.get(feature.name, state.get(_LEGACY_FEATURE_KEYS.get(feature.name, ""), None))
        if own is not None:
            feature.load_state_dict(own)


def check_same_recipe(saved: dict[str, Any], current: dict[str, Any], may_change: tuple[str, ...],
                      out: str) -> None:
    """A resumed run must train as the saved one did: any other option changed is an error."""
    for key in current:
        if key not in may_change and saved.get(key) != current.get(key):
            raise UserError(f"resume: {out} was trained with {key}={saved.get(key)!r}, not {current.get(key)!r}",
                            argument="resume")


def resume_mode(out: str, resume: bool | str) -> str:
    """What `--resume` means for the run folder `out`: "fresh" (no resume asked, or `auto`
    and no state yet), "resume", or "finished" (`auto`, and the state says the run is done)."""
    if not resume:
        return "fresh"
    path = os.path.join(out, STATE_FILE)
    if resume != "auto":
        return "resume"
    if not os.path.isfile(path):
        return "fresh"
    return "finished" if progress(out)["finished"] else "resume"


def progress(out: str) -> dict[str, Any]:
    """How far the run in `out` came: {"step", "total_iters", "finished"}, from its state with
    the tensors mapped rather than read (states from before "total_iters": finished unknown)."""
    state = read(os.path.join(out, STATE_FILE), mmap=True)
    step, total = int(state["step"]), state.get("total_iters")
    finished = bool(state.get("finished")) or (total is not None and step >= int(total))
    return {"step": step, "total_iters": int(total) if total is not None else step, "finished": finished}


def truncate_log(path: str, step: int) -> None:
    """Keep the log lines written up to `step` (the restored checkpoint); drop later ones (a
    crash between the two) and a torn line (a kill while a line was being written)."""
    if not os.path.isfile(path):
        return
    with open(path) as handle:
        lines = [line for line in handle if line.strip()]
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(record)
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _restore_cuda_rng(saved: Any, device: torch.device) -> None:
    """The saved CUDA generator state onto this rank's GPU (every rank draws the same
    dropout masks); states saved before distributed training held one per visible GPU."""
    if device.type != "cuda" or saved is None or len(saved) == 0:
        return
    if isinstance(saved, list | tuple):
        saved = saved[min(device.index or 0, len(saved) - 1)]
    torch.cuda.set_rng_state(saved.cpu(), device)
