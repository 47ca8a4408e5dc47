"""The two collectives every rank of a checkpoint operation runs: "rank 0 decides, every
rank learns the answer (or the error)" and "the first checkpoint that verifies on every
rank". They only need an `all_gather_object`, so one process is a world of one."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubetrain_core.checkpoints.listing import (
    CheckpointError,
    CheckpointInfo,
    CorruptCheckpoint,
    LoadedCheckpoint,
)
from kubetrain_trainer.checkpoint.claims import Fenced, StoreConflict, StoreUnreadable

log = logging.getLogger(__name__)
T = TypeVar("T")
Gather = Callable[[Any], list[Any]]

# Exceptions rank 0 hands to the other ranks by name (library exceptions may not unpickle).
_SHARED_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls for cls in (Fenced, StoreConflict, StoreUnreadable, CheckpointError)
}


def gather_self(obj: Any) -> list[Any]:
    """all_gather_object of a world of one."""
    return [obj]


def on_rank0(rank: int, gather: Gather, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 and hand every rank its result, or raise its error everywhere."""
    outcome: tuple[Any, str | None, str] = (None, None, "")
    failure: Exception | None = None
    if rank == 0:
        try:
            outcome = (fn(), None, "")
        except Exception as error:
            failure = error
            outcome = (None, str(error), type(error).__name__)
    value, message, kind = gather(outcome)[0]
    if failure is not None:
        raise failure
    if message is not None:
        raise _SHARED_ERRORS.get(kind, CheckpointError)(f"rank 0: {message}")
    result: T = value
    return result


def first_verified(
    candidates: list[CheckpointInfo],
    load: Callable[[CheckpointInfo], Path],
    gather: Gather,
    check: Callable[[CheckpointInfo], None] | None,
) -> LoadedCheckpoint | None:
    """Load the first candidate that verifies on every rank (a corrupt one is skipped
    with a warning, never deleted)."""
    for info in candidates:
        if check is not None:
            check(info)  # the same manifest on every rank: the same answer
        path: Path | None = None
        try:
            path = load(info)
        except CorruptCheckpoint as error:
            log.warning(
                "checkpoint %s is corrupt (kept), trying the previous one: %s", info.uri, error
            )
        verdicts = gather(path is not None)
        if path is not None and all(verdicts):
            return LoadedCheckpoint(info, path)
        if path is not None:
            log.warning("checkpoint %s failed to verify on another rank", info.uri)
            shutil.rmtree(path, ignore_errors=True)
    return None
