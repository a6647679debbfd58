"""Process-group plumbing for runs launched by torchrun (`torchrun --nproc-per-node N -m atrous ...`).

torchrun starts one process per rank and gives each RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address in its environment. `process_group(device)` joins that group (gloo for a
CPU device, NCCL for CUDA), yields the `World` and takes the group down on the way out; a
process started without those variables (or with WORLD_SIZE=1) runs alone, with no group.

Errors: every collective has a timeout (`timeout_s`), so a rank whose peer died or hangs
fails instead of waiting for ever; a rank that raises leaves the group at once (aborting it
where the backend can), so that its peers' collectives fail too. torchrun itself stops the
other ranks as soon as one exits with an error.

Helpers: `all_reduce_sum` (in place; identity alone), `all_reduce_gradients`,
`sum_gradients_hook` (a DistributedDataParallel hook that sums gradients instead of
averaging them).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from atrous.errors import UserError

DEFAULT_TIMEOUT_S = 600.0
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_with_peers() -> bool:
    """True in a process that torchrun started beside others (WORLD_SIZE > 1)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_active() -> bool:
    """A process group of more than one rank is up in this process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current_world() -> World:
    if not is_active():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: torch.device) -> torch.device:
    """A plain "cuda" becomes this rank's GPU, cuda:LOCAL_RANK (torchrun's convention)."""
    if device.type == "cuda" and device.index is None:
        index = int(os.environ.get("LOCAL_RANK", "0")) if launched_with_peers() else torch.cuda.current_device()
        return torch.device("cuda", index)
    return device


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a process on its own (read from the environment, so
    that it holds before and after the process group)."""
    return not launched_with_peers() or os.environ["RANK"] == "0"


def error_prefix() -> str:
    """'rank R: ' in a process launched beside others, so that each error line says whose it is."""
    return f"rank {os.environ['RANK']}: " if launched_with_peers() else ""


@contextlib.contextmanager
def process_group(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[World]:
    """Joins torchrun's process group for the run's `device` and yields this process's World.

    A group that is already up (a caller's own) is used and left alone; without torchrun's
    variables this yields World() and starts nothing."""
    if is_active() or not launched_with_peers():
        yield current_world()
        return
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise UserError(f"distributed run: environment variable {missing[0]} is not set (launch with torchrun)")
    if timeout_s <= 0:
        raise UserError(f"dist_timeout must be positive, got {timeout_s}", argument="dist_timeout")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(rank_device(device))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield current_world()
    except BaseException:
        _leave(abort=True)
        raise
    _leave(abort=False)


def _leave(abort: bool) -> None:
    """Take the group down; after an error, abort it where the backend can (NCCL), so that
    nothing waits on collectives this rank will never join."""
    if not dist.is_initialized():
        return
    if abort and dist.get_backend() == "nccl" and hasattr(dist.distributed_c10d, "_abort_process_group"):
        dist.distributed_c10d._abort_process_group()
        return
    dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sums `tensor` over the ranks, in place, and returns it (unchanged alone). A CPU tensor
    is carried to the GPU and back where the backend (NCCL) only reduces GPU tensors."""
    if not is_active():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu)
        tensor.copy_(on_gpu)
        return tensor
    dist.all_reduce(tensor)
    return tensor


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Sums the gradients of `parameters` over the ranks, in one flat buffer."""
    if not is_active():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum(flat)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset: offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def sum_gradients_hook(process_group, bucket):  # no annotations: DDP compares them with its own types
    """(process group or None, dist.GradBucket) -> Future[Tensor]. DistributedDataParallel
    communication hook: the bucket's gradients summed over the
    ranks (DDP's default averages them). Each rank's loss is already its share of the global
    loss, normalised by global counts, so the sum is the gradient of the global loss."""
    work = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])
