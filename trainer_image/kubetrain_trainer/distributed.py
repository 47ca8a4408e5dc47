"""torch.distributed from torchrun's environment: gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import PrefixStore, Store
from torch.distributed.rendezvous import rendezvous


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int) -> torch.device:
    """One GPU per local rank when CUDA is there (and allowed), else CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is visible")
    if preference != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str, timeout_seconds: int | None = None) -> DistInfo:
    """Join the process group torchrun set up (RANK/WORLD_SIZE/MASTER_ADDR in env);
    `timeout_seconds` bounds every collective (None: torch's default)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_seconds) if timeout_seconds else None
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            store=_incarnation_store(rank, world_size, timeout),
            rank=rank,
            world_size=world_size,
            device_id=device if backend == "nccl" else None,
            timeout=timeout,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def _incarnation_store(rank: int, world_size: int, timeout: timedelta | None) -> Store:
    """torchrun's store (env://), under a prefix of its own for each in-place restart:
    restarted workers reach the same store the agent keeps, where the keys of the
    incarnation before (a dead peer's address) would otherwise answer the new one."""
    options = {"timeout": timeout} if timeout else {}
    store: Store = next(rendezvous("env://", rank=rank, world_size=world_size, **options))[0]
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return store  # this round's own store (rank 0 serves it): nothing stale in it
    restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return PrefixStore(f"kubetrain/incarnation-{restarts}", store)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's object, in rank order (a one-element list when not distributed)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (in place when distributed)."""
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.AVG if _avg_supported() else dist.ReduceOp.SUM)
        if not _avg_supported():
            value /= dist.get_world_size()
    return value


def _avg_supported() -> bool:
    # gloo has no AVG reduction; NCCL does.
    return dist.get_backend() == "nccl"


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
