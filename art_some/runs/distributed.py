"""
The process group of a ``torchrun`` launch, one for every command that runs under it: certify and evaluate (each
rank takes a shard and rank 0 merges) and train (DistributedDataParallel). The backend follows the device: NCCL
for CUDA, gloo on the CPU.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import NamedTuple

# Ranks of a sharded run wait at the merge for the slowest shard, which may take hours longer than the others.
SHARD_WAIT = timedelta(days=2)
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets besides WORLD_SIZE


class Rank(NamedTuple):
    """This process's place in a torchrun launch."""

    rank: int
    world: int
    local: int

    @property
    def shard(self) -> tuple[int, int]:
        """The shard ``(i, k)`` this rank certifies or audits."""
        return self.rank, self.world


def world_size() -> int:
    """The processes torchrun launched (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: str = "cpu", timeout: timedelta | None = None) -> Rank | None:
    """
    Join the process group of a torchrun launch with more than one process (initialised once per process): NCCL
    when ``device`` is CUDA, else gloo; each rank on CUDA uses its own GPU (``LOCAL_RANK``). None without torchrun.

    :param device: ``"cpu"``, ``"cuda"`` or ``"cuda:i"``: where this run computes.
    :param timeout: How long a collective may wait (default: torch's).
    """
    if world_size() <= 1:
        return None
    check_launch()
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local)  # before the group: NCCL and ART build on the current device
    if not dist.is_initialized():
        options = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group("nccl" if cuda else "gloo", **options)
    return Rank(dist.get_rank(), dist.get_world_size(), local)


def check_launch() -> None:
    """Refuse a WORLD_SIZE above 1 without the rest of torchrun's environment (a variable left in a shell)."""
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {', '.join(missing)} not: launch with "
                         "torchrun, or unset WORLD_SIZE for one process")


def barrier(world: int) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def gather(obj, world: int) -> list:
    """Every rank's ``obj``, in rank order."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    gathered = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def close(world: int) -> None:
    """Leave the process group at the end of a run."""
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def on_rank_zero_after_all(rank: Rank | tuple[int, int], work):
    """
    Once every rank has reached this point, rank 0 runs ``work`` while the others wait; rank 0 returns its
    result, the other ranks None (the merge step of a torchrun run: certify's records, evaluate's audit).
    """
    world = rank[1]
    barrier(world)
    try:
        result = work() if rank[0] == 0 else None
    finally:
        barrier(world)  # a refusal on rank 0 must not leave the others waiting for it
    return result
