"""Data-parallel fine-tuning under ``torchrun``: process-group setup and batch sharding.

``torchrun`` starts one process per GPU (or per CPU slot) and sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``. :func:`start` joins the process group (NCCL for CUDA devices, gloo otherwise)
when ``WORLD_SIZE`` > 1; without ``torchrun`` it returns the single-process :class:`Shard`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from onnxprune.errors import InputError


@dataclass(frozen=True)
class Shard:
    """This process's place among the data-parallel workers."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False  # this module initialised the process group (and tears it down)

    @property
    def main(self) -> bool:
        """Rank 0: the process that evaluates, logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one worker."""
        return self.world > 1

    def part(self, items):
        """This rank's part of one global batch: items rank, rank + world, …"""
        return items[self.rank :: self.world]


def world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 outside ``torchrun``)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise InputError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def pick_device(requested: str | None):
    """The torch device: `requested`, else ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    import torch

    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def start(device, batch_size: int) -> Shard:
    """Join the ``torchrun`` process group when there is one; check the batch splits evenly."""
    world = world_size()
    if world == 1:
        return Shard()
    if batch_size % world:
        raise InputError(
            f"{{batch_size}} {batch_size} is the global batch; it must be divisible by the {world} processes",
            parameter="batch_size",
        )
    import torch.distributed as dist

    if not dist.is_available():
        raise InputError("this torch build has no torch.distributed; run without torchrun")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Shard(dist.get_rank(), dist.get_world_size(), owns)


def stop(shard: Shard) -> None:
    """Leave the process group if :func:`start` created it."""
    if shard.owns_group:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def wrap(module, shard: Shard, device):
    """`module` in ``DistributedDataParallel`` when there are several workers."""
    if not shard.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def sum_over_ranks(values: dict[str, float], shard: Shard, device) -> dict[str, float]:
    """`values` summed over all workers (the same dict on a single process)."""
    if not shard.distributed:
        return values
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.cpu().numpy().tolist()))
