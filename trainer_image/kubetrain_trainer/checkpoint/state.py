"""What goes into a checkpoint directory and how it comes back (the torch side).

    dcp/                 model + optimizer through torch.distributed.checkpoint (DCP);
                         each rank writes its shard files, rank 0 the metadata
    trainer_state.pt     the loop's opaque `extra` dict (rank 0): step, epoch, scheduler,
                         GradScaler, loss EMA, best metric, NaN-guard counters, ...
    rng-rank{r}.pt       every rank's RNG states (python, numpy, torch CPU, CUDA)

DCP with `get_state_dict`/`set_state_dict` reads and writes the same keys for a plain
module, DDP (no "module." prefix) and sharded models (FSDP/DTensor), so resuming after
a change of wrapping works. Without an initialised process group DCP runs in
single-process mode. Exact resume needs all three parts: with them, N steps + resume +
N steps reproduce the losses of 2N steps.
"""

from __future__ import annotations

import importlib
import logging
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

__all__ = [
    "DCP_DIR",
    "TRAINER_STATE",
    "capture_rng",
    "read_state",
    "restore_rng",
    "rng_file",
    "write_state",
]

log = logging.getLogger(__name__)

DCP_DIR = "dcp"
TRAINER_STATE = "trainer_state.pt"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def _numpy() -> Any:
    # numpy is optional: the trainer does not need it, but data code may draw from it.
    try:
        return importlib.import_module("numpy")
    except ImportError:
        return None


def capture_rng() -> dict[str, Any]:
    """This process's RNG states, in types torch.load(weights_only=True) accepts."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
    }
    np = _numpy()
    if np is not None:
        bitgen = np.random.get_state(legacy=False)
        if bitgen.get("bit_generator") == "MT19937":
            state["numpy"] = {
                "key": [int(k) for k in bitgen["state"]["key"]],
                "pos": int(bitgen["state"]["pos"]),
                "has_gauss": int(bitgen["has_gauss"]),
                "gauss": float(bitgen["gauss"]),
            }
    # Only when this process uses CUDA: querying would otherwise create a CUDA context.
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what capture_rng returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    np = _numpy()
    if np is not None and "numpy" in state:
        saved = state["numpy"]
        key = np.asarray(saved["key"], dtype=np.uint32)
        np.random.set_state(("MT19937", key, saved["pos"], saved["has_gauss"], saved["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    # DCP warns on every call without a process group; single-process is intended here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def write_state(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    rank: int,
) -> None:
    """Write this rank's part of a checkpoint into the local `directory` (a collective
    when a process group is initialised: every rank must call it).

    Use a fresh directory per rank and step (outside the checkpoint URI): the manager
    uploads everything in it. `extra` may hold tensors, python scalars, strings and
    lists/tuples/dicts of them (it is read back with torch.load(weights_only=True)).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_state, optim_state = get_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp_save(
            {"model": model_state, "optimizer": optim_state},
            checkpoint_id=directory / DCP_DIR,
            no_dist=_no_dist(),
        )
    if rank == 0:
        torch.save(extra, directory / TRAINER_STATE)
    torch.save(capture_rng(), directory / rng_file(rank))


def read_state(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG in place from a local checkpoint
    directory (a collective like write_state); returns the loop's `extra` dict.

    Tensors in `extra` come back on the CPU.
    """
    directory = Path(directory)
    # get_state_dict gives the optimizer its (lazy) state, so DCP has tensors to fill.
    model_state, optim_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
    with _quiet_single_process():
        dcp_load(state, checkpoint_id=directory / DCP_DIR, no_dist=_no_dist())
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    extra: dict[str, Any] = torch.load(
        directory / TRAINER_STATE, map_location="cpu", weights_only=True
    )
    rng_path = directory / rng_file(rank)
    if rng_path.is_file():
        # Last: nothing above may draw random numbers after the restore.
        restore_rng(torch.load(rng_path, map_location="cpu", weights_only=True))
    else:
        log.warning(
            "%s has no RNG state for rank %d (world size changed?): resume is not bit-exact",
            directory,
            rank,
        )
    return extra
