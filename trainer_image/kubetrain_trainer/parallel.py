"""Data parallelism: DDP replicates the model on every rank, FSDP2 shards it.

`training.parallelism` picks one. With ``fsdp`` every block the model names in
``_no_split_modules`` (transformers' own list; the native Transformer sets it too)
becomes a unit of `fully_shard`, then the root: parameters, gradients and optimizer
state are split across ranks and gathered one block at a time. Checkpoints stay
DCP's, which reshard on load, so a run saved by 2 processes resumes with 1 or 4.

The rest of the trainer asks this module, not the wrapper types, how to accumulate
gradients without syncing, what the gradient norm is, and what the full weights are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from kubetrain_core.config import TrainingLoopConfig
from kubetrain_trainer.distributed import DistInfo


def parallelize(
    raw_model: nn.Module, loop: TrainingLoopConfig, dist_info: DistInfo, find_unused: bool = False
) -> nn.Module:
    """The module the strategy trains: `raw_model` sharded in place (fsdp) or wrapped in
    DDP when there is more than one process, compiled when asked. Build the optimizer
    after this: sharding replaces the parameters. `find_unused`: some steps leave some
    parameters without a gradient (DDP then finds them each step, at a small cost)."""
    model = raw_model
    if dist_info.distributed and loop.parallelism == "fsdp":
        for unit in shard_units(raw_model):
            fully_shard(unit)
        fully_shard(raw_model)
    if loop.compile:
        model = cast(nn.Module, torch.compile(model))
    if dist_info.distributed and loop.parallelism == "ddp":
        device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        model = DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused
        )
    return model


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The submodules sharded on their own: instances of the classes the model lists in
    ``_no_split_modules`` (a block must be gathered whole), outermost first."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    units = [m for m in model.modules() if m is not model and type(m).__name__ in names]
    return [u for u in units if not any(o is not u and _inside(u, o) for o in units)]


def _inside(module: nn.Module, outer: nn.Module) -> bool:
    return any(m is module for m in outer.modules())


def unwrap(model: nn.Module) -> nn.Module:
    """The module the wrappers hold: DDP's `.module`, torch.compile's `_orig_mod` (FSDP2
    shards in place, so a sharded model is its own). Its methods besides forward, such
    as a transformers model's, are reached only here."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = cast(nn.Module, model._orig_mod)
        else:
            return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(unwrap(model), FSDPModule)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Backward passes inside all-reduce (DDP) or reduce-scatter (FSDP) their gradients
    only when `sync`; otherwise they accumulate locally until the last micro-batch."""
    inner = unwrap(model)
    if sync:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(inner, FSDPModule):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    else:
        yield


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s result as a plain tensor: over sharded gradients it is a DTensor
    whose value only the full tensor holds."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def full_state_dict(model: nn.Module) -> dict[str, Any] | None:
    """Every weight, whole, on rank 0's CPU (a collective: all ranks call it; the others
    get an empty dict) when the model is sharded; None when `model.state_dict()`
    already is that."""
    if not is_sharded(model):
        return None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(unwrap(model), options=options)
