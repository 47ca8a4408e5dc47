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

Saving has two halves so that the loop only pays for the first: `StateStager.snapshot`
copies the state into CPU memory at the step boundary (torch's DCP stager, pinned when
the state is on CUDA), and `write_snapshot` writes that copy to disk later, from any
thread. `write_state` does both at once.
"""

from __future__ import annotations

import importlib
import io
import logging
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

__all__ = [
    "DCP_DIR",
    "TRAINER_STATE",
    "Snapshot",
    "StateStager",
    "capture_rng",
    "read_state",
    "restore_rng",
    "rng_file",
    "write_snapshot",
    "write_state",
]

log = logging.getLogger(__name__)

DCP_DIR = "dcp"
TRAINER_STATE = "trainer_state.pt"
# Written by rank 0 beside the state, so a checkpoint alone rebuilds its model (export):
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "kubetrain-config.yaml"  # the whole trainer config (also in an export)
HF_CONFIG_FILE = "hf-config.json"  # a transformers model's own config


# With `omit_frozen`, frozen parameters (a LoRA base) are not saved: the model is rebuilt
# from its reference (model.pretrained, checked by sha256) and only what trains comes
# from the checkpoint. Only a run that names such a base may omit them: a weight frozen
# for a while (a progressive run's trunk) exists nowhere else. DCP still fails a load
# that misses any key it was given; `strict` only lets the omitted frozen ones be.
_SAVE = {True: StateDictOptions(ignore_frozen_params=True), False: StateDictOptions()}
_LOAD = StateDictOptions(strict=False)


def _without_frozen(model: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """`state` less every tensor that is a frozen parameter's. DCP's ignore_frozen_params
    keeps a frozen weight under a tied second name (a LoRA base's lm_head)."""
    frozen = {_address(p) for p in model.parameters() if not p.requires_grad}
    if not frozen:
        return state
    return {k: v for k, v in state.items() if _address(v) not in frozen}


def _address(value: Any) -> int | None:
    """Where a tensor's (local shard's) data starts, to recognise the same weight."""
    local = getattr(value, "_local_tensor", value)  # a DTensor's shard on this rank
    return local.data_ptr() if isinstance(local, torch.Tensor) else None


def _model_state(model: torch.nn.Module) -> dict[str, Any]:
    return _without_frozen(model, get_model_state_dict(model, options=_SAVE[True]))


def _training_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, omit_frozen: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    model_state, optim_state = get_state_dict(model, optimizer, options=_SAVE[omit_frozen])
    return (_without_frozen(model, model_state) if omit_frozen else model_state), optim_state


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


def _quiet_single_process() -> None:
    # DCP warns on every call without a process group; single-process is intended here.
    # A process-wide filter (re-applied per call, in case filters were reset), because
    # saves also run in the upload thread and catch_warnings is not thread-safe.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")


@dataclass(frozen=True)
class Snapshot:
    """One rank's checkpoint state as of a step boundary, detached from the live model
    and optimizer: training may go on while `write_snapshot` writes it."""

    rank: int
    tensors: dict[str, Any]  # {"model": ..., "optimizer": ...} for DCP
    rng: bytes  # torch.save of capture_rng()
    extra: bytes | None  # torch.save of the loop's `extra` dict; rank 0 only


def _serialized(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _capture(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    rank: int,
    omit_frozen: bool,
) -> tuple[dict[str, Any], Snapshot]:
    """The live model/optimizer state dict, and a Snapshot whose `tensors` are still it."""
    model_state, optim_state = _training_state(model, optimizer, omit_frozen)
    live = {"model": model_state, "optimizer": optim_state}
    extra_bytes = _serialized(extra) if rank == 0 else None
    return live, Snapshot(rank, live, _serialized(capture_rng()), extra_bytes)


class StateStager:
    """Copies model + optimizer state into CPU memory that it keeps and reuses.

    torch's DCP DefaultStager does the copy (synchronously: the optimizer may change
    the weights right after), into pinned memory with non-blocking copies when the
    state is on CUDA. After the first snapshot it holds one copy of the state per rank
    for the life of the stager, and each snapshot overwrites the previous one: take
    the next only once the previous has been written. Use it from one thread.
    """

    def __init__(self, *, omit_frozen: bool = False) -> None:
        self._stager: DefaultStager | None = None
        self.omit_frozen = omit_frozen  # see write_state

    def _torch_stager(self, model: torch.nn.Module) -> DefaultStager:
        if self._stager is None:
            cuda = any(p.device.type == "cuda" for p in model.parameters())
            self._stager = DefaultStager(
                StagingOptions(
                    use_pinned_memory=cuda,
                    use_shared_memory=False,  # the writer is a thread, not a process
                    use_async_staging=False,
                    use_non_blocking_copy=cuda,  # still synchronized before returning
                )
            )
        return self._stager

    def snapshot(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        extra: dict[str, Any],
        rank: int,
    ) -> Snapshot:
        """Copy this rank's state (model, optimizer, RNG, and `extra` on rank 0) now."""
        live, snapshot = _capture(model, optimizer, extra, rank, self.omit_frozen)
        staged = self._torch_stager(model).stage(live)
        if not isinstance(staged, dict):  # a Future only with use_async_staging
            raise TypeError(f"DCP staging returned {type(staged).__name__}, not a dict")
        return Snapshot(rank, staged, snapshot.rng, snapshot.extra)

    def close(self) -> None:
        """Free the staging memory."""
        if self._stager is not None:
            self._stager.close()
            self._stager = None


def write_snapshot(
    directory: Path,
    snapshot: Snapshot,
    *,
    process_group: dist.ProcessGroup | None = None,
) -> None:
    """Write a snapshot into the local `directory` (a collective on `process_group`, by
    default the default group when one is initialised: every rank must call it).

    From a thread other than the training loop's, pass a group of its own: collectives
    on the training group could interleave with the loop's in a different order on
    different ranks.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The files are uploaded and then deleted: no fsync (the manifest hashes what is read).
    writer = FileSystemWriter(directory / DCP_DIR, sync_files=False)
    _quiet_single_process()
    dcp_save(
        snapshot.tensors,
        storage_writer=writer,
        process_group=process_group,
        no_dist=process_group is None and _no_dist(),
    )
    if snapshot.extra is not None:
        (directory / TRAINER_STATE).write_bytes(snapshot.extra)
    (directory / rng_file(snapshot.rank)).write_bytes(snapshot.rng)


def write_state(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    rank: int,
    *,
    omit_frozen: bool = False,
) -> None:
    """Write this rank's part of a checkpoint into the local `directory` (a collective
    when a process group is initialised: every rank must call it), without a copy.

    Use a fresh directory per rank and step (outside the checkpoint URI): the manager
    uploads everything in it. `extra` may hold tensors, python scalars, strings and
    lists/tuples/dicts of them (it is read back with torch.load(weights_only=True)).
    `omit_frozen`: leave out the frozen parameters, for a run whose frozen weights come
    from a base it names (model.pretrained); read it back with the same flag.
    """
    write_snapshot(directory, _capture(model, optimizer, extra, rank, omit_frozen)[1])


def read_state(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    *,
    omit_frozen: bool = False,
) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG in place from a local checkpoint
    directory (a collective like write_state); returns the loop's `extra` dict.

    Tensors in `extra` come back on the CPU.
    """
    directory = Path(directory)
    # get_state_dict gives the optimizer its (lazy) state, so DCP has tensors to fill.
    model_state, optim_state = _training_state(model, optimizer, omit_frozen)
    state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
    _quiet_single_process()
    dcp_load(state, checkpoint_id=directory / DCP_DIR, no_dist=_no_dist())
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=_LOAD,
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


def read_model(directory: Path, model: torch.nn.Module) -> None:
    """Only the model's weights from a local checkpoint directory, in one process (no
    optimizer, no RNG): what an export of a checkpoint needs."""
    state: dict[str, Any] = {"model": _model_state(model)}
    _quiet_single_process()
    dcp_load(state, checkpoint_id=Path(directory) / DCP_DIR, no_dist=True)
    set_model_state_dict(model, state["model"], options=_LOAD)
