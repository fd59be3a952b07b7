"""Process-group setup for `torchrun --nproc_per_node N tvc train ...`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them tvc runs as one process. GPUs use
NCCL (one GPU per process, by LOCAL_RANK); CPUs use gloo. Only rank 0 writes files and prints.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from tvc.errors import ConfigError

log = logging.getLogger("tvc")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: Any  # torch.device
    backend: str | None  # "nccl" | "gloo" | None (one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def pick_device(name: str = "auto", local_rank: int = 0):
    """'auto' -> this process's GPU when there is one, else the CPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA GPU is visible",
                              "use --device cpu (or auto)")  # fmt: skip
        return torch.device("cuda", local_rank if name == "cuda" else int(name.split(":")[1]))
    if name != "cpu":
        raise ConfigError(f"unknown device '{name}'", "use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def setup(device: str = "auto") -> DistContext:
    """Join the process group torchrun started (once per process), or run alone."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world == 1:
        return DistContext(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        log.debug("rank %d/%d joined the %s process group", rank, world, backend)
    return DistContext(rank, world, local_rank, dev, dist.get_backend())


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_mean(ctx: DistContext, values: list[float]) -> list[float]:
    """Average a few numbers over every process (loss logging)."""
    if not ctx.distributed:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return (t / ctx.world_size).tolist()


def broadcast(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's `obj` on every process."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(ctx: DistContext, local, positions, total: int):
    """Assemble a (total, ...) tensor from each process's rows `local` at `positions`."""
    import torch

    if not ctx.distributed:
        out = torch.empty((total, *local.shape[1:]), dtype=local.dtype, device=local.device)
        out[positions] = local
        return out
    import torch.distributed as dist

    # all_gather needs equal sizes: pad every shard to the largest
    size = -(-total // ctx.world_size)
    pad = size - local.shape[0]
    local = torch.cat([local, local.new_zeros((pad, *local.shape[1:]))])
    pos = torch.cat([positions, positions.new_full((pad,), -1)])
    shards = [torch.empty_like(local) for _ in range(ctx.world_size)]
    places = [torch.empty_like(pos) for _ in range(ctx.world_size)]
    dist.all_gather(shards, local)
    dist.all_gather(places, pos)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for rows, where in zip(shards, places, strict=True):
        keep = where >= 0
        out[where[keep]] = rows[keep]
    return out
