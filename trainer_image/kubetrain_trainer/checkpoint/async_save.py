"""Checkpoint writes and uploads in a background thread, one in flight per rank.

At the step boundary the loop only copies its state into RAM
(`AsyncCheckpointer.snapshot`: torch's DCP stager, pinned memory for CUDA state).
`submit` hands that copy to a worker thread that writes it with DCP into a local
staging directory, uploads the directory, commits the manifest (CheckpointManager.save)
and deletes it. Training goes on meanwhile: the copy is detached from the live model.

Memory is the trade-off: each rank holds one extra copy of its model + optimizer state
in CPU RAM (pinned when on CUDA), allocated at the first checkpoint and reused by every
later one. It never grows: a new snapshot first waits for the previous one to be
written, uploaded and committed, so at most one snapshot per rank is in flight.

The worker's collectives (the DCP save, the all_gather of hashes) run on a gloo
process group of its own (group_collectives, created once by every rank): on the
training group they could interleave with the loop's collectives in a different order
on different ranks.

Storage errors are retried with backoff around every storage call (on top of
botocore's own retries); a save that still fails is logged and counted, never
committed (no manifest), and training goes on: the next checkpoint tries again.
A save refused by the fence (a newer attempt owns the store) ends in a result
marked `fenced`, and the loop stops the process.
"""

from __future__ import annotations

import builtins
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from kubetrain_core.checkpoints.listing import CheckpointError, CheckpointInfo
from kubetrain_trainer.checkpoint.claims import Fenced
from kubetrain_trainer.checkpoint.manager import CheckpointManager
from kubetrain_trainer.checkpoint.retrying import RetryingStorage
from kubetrain_trainer.checkpoint.state import Snapshot, StateStager, write_snapshot

__all__ = [
    "AsyncCheckpointer",
    "CheckpointGroup",
    "SaveResult",
    "group_collectives",
]

log = logging.getLogger(__name__)

# A collective that waits longer than this on the checkpoint group raises instead of
# hanging the worker forever (e.g. a peer that died mid-save).
_GROUP_TIMEOUT = timedelta(minutes=15)


@dataclass(frozen=True)
class CheckpointGroup:
    """The checkpoint worker's own process group and the collectives it runs on it."""

    process_group: dist.ProcessGroup

    def all_gather_object(self, obj: Any) -> builtins.list[Any]:
        out: list[Any] = [None] * dist.get_world_size(self.process_group)
        dist.all_gather_object(out, obj, group=self.process_group)
        return out


def group_collectives(timeout: timedelta = _GROUP_TIMEOUT) -> CheckpointGroup | None:
    """A new gloo group spanning every rank for the checkpoint worker, or None without
    a process group. A collective itself: every rank must call it."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = dist.new_group(backend="gloo", timeout=timeout)
    if not isinstance(group, dist.ProcessGroup):  # every rank is a member of this one
        raise RuntimeError("this rank is not in the checkpoint process group")
    return CheckpointGroup(group)


@dataclass(frozen=True)
class SaveResult:
    """How one submitted checkpoint ended: committed (`info`) or failed (`error`)."""

    step: int
    upload_seconds: float  # in the worker: DCP write + upload + commit
    info: CheckpointInfo | None = None
    error: str | None = None
    fenced: bool = False  # a newer attempt owns the store: this process must stop

    @property
    def committed(self) -> bool:
        return self.info is not None


class AsyncCheckpointer:
    """Writes, uploads and commits checkpoints in one worker thread.

    `manager` is the loop's manager; the worker uses a twin of it on `collectives`
    (see group_collectives; required with more than one rank) and a RetryingStorage
    over the same storage. `on_done` runs in the worker after each save (keep it
    thread-safe: metrics, attributes).
    """

    def __init__(
        self,
        manager: CheckpointManager,
        *,
        collectives: CheckpointGroup | None = None,
        on_done: Callable[[SaveResult], None] | None = None,
        retry: Mapping[str, Any] | None = None,
        before_commit: Callable[[int], None] | None = None,
        omit_frozen: bool = False,
    ) -> None:
        self._group = collectives
        gather = collectives.all_gather_object if collectives else None
        storage = manager.storage
        if not isinstance(storage, RetryingStorage):
            storage = RetryingStorage(storage, **dict(retry or {}))
        self.manager = manager.twin(storage, gather)
        self._on_done = on_done
        self._before_commit = before_commit  # fault injection: delay a commit
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-upload")
        self._lock = threading.Lock()
        self._inflight: Future[SaveResult] | None = None
        self._markers: list[Future[None]] = []
        self._inflight_step: int | None = None
        self._good_after_commit: set[int] = set()
        self._finished: list[SaveResult] = []
        self._stager = StateStager(omit_frozen=omit_frozen)  # see state.write_state

    @property
    def busy(self) -> bool:
        """Whether a save (write, upload, commit) is still running."""
        return self._inflight is not None and not self._inflight.done()

    def snapshot(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        extra: dict[str, Any],
        rank: int,
    ) -> Snapshot:
        """Copy this rank's state into RAM for `submit` (the loop's only stall).

        Waits for the snapshot in flight first: the copy reuses its memory.
        """
        self._join()
        return self._stager.snapshot(model, optimizer, extra, rank)

    def submit(
        self,
        step: int,
        staging: Path,
        metrics: Mapping[str, float] | None = None,
        *,
        epoch: int = 0,
        snapshot: Snapshot | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Start saving checkpoint `step`: write `snapshot` (if any) into the local
        directory `staging`, upload everything in it, commit (with `meta` in the
        manifest), delete `staging`.

        Waits for the previous save first: one in flight per rank. Every rank must
        submit the same steps in the same order (the worker runs collectives).
        """
        self._join()
        with self._lock:
            self._inflight_step = step
            self._inflight = self._pool.submit(
                self._run,
                step,
                Path(staging),
                dict(metrics or {}),
                epoch=epoch,
                snapshot=snapshot,
                meta=meta,
            )

    def wait(self) -> builtins.list[SaveResult]:
        """Block until no upload or good marker is in flight; returns (and forgets)
        every save that ended since the last call, oldest first."""
        self._join()
        markers, self._markers = self._markers, []
        for marker in markers:
            marker.result()  # _mark never raises
        return self.finished()

    def _join(self) -> None:
        future = self._inflight
        if future is not None:
            future.result()  # _run never raises
            self._inflight = None

    def finished(self) -> builtins.list[SaveResult]:
        """The saves that ended since the last call, without waiting."""
        with self._lock:
            done, self._finished = self._finished, []
        return done

    def mark_good(self, step: int) -> None:
        """Have the worker mark checkpoint `step` good (rank 0 writes, others no-op):
        right after its commit when it is still uploading, else next. The loop never
        waits for storage here, and a failure is logged, not raised."""
        with self._lock:
            if step == self._inflight_step:  # the worker has not decided on markers yet
                self._good_after_commit.add(step)
                return
            self._markers = [m for m in self._markers if not m.done()]
            self._markers.append(self._pool.submit(self._mark, step))

    def _mark(self, step: int) -> None:
        try:
            self.manager.mark_good(step)
        except Exception:  # a missing marker only narrows rollback choices
            log.exception("marking checkpoint at step %d good failed", step)

    def close(self) -> None:
        """Wait for the save in flight, stop the worker and free the snapshot memory."""
        self.wait()
        self._pool.shutdown(wait=True)
        self._stager.close()

    def _write(self, staging: Path, snapshot: Snapshot) -> None:
        """Write the snapshot on every rank; raises on all of them if any one failed
        (the manager's collectives must not start on some ranks only)."""
        error: str | None = None
        try:
            group = self._group.process_group if self._group else None
            write_snapshot(staging, snapshot, process_group=group)
        except Exception as exc:
            error = f"rank {self.manager.rank} writing {staging}: {exc!r}"
            log.exception("writing the checkpoint snapshot to %s failed", staging)
        gather = self._group.all_gather_object if self._group else lambda obj: [obj]
        errors = [e for e in gather(error) if e]
        if errors:
            raise CheckpointError("; ".join(errors))

    def _run(
        self,
        step: int,
        staging: Path,
        metrics: dict[str, float],
        *,
        epoch: int,
        snapshot: Snapshot | None,
        meta: Mapping[str, Any] | None,
    ) -> SaveResult:
        started = time.monotonic()
        log.info("uploading checkpoint at step %d", step)
        try:
            if snapshot is not None:
                self._write(staging, snapshot)
            if self._before_commit is not None:
                self._before_commit(step)
            info = self.manager.save(step, staging, metrics, epoch=epoch, meta=meta)
            result = SaveResult(step, time.monotonic() - started, info=info)
        except Fenced as error:
            log.error("checkpoint at step %d was not committed: %s", step, error)
            result = SaveResult(step, time.monotonic() - started, error=str(error), fenced=True)
        except Exception as error:  # the loop goes on; the next checkpoint tries again
            log.exception("checkpoint at step %d was not committed", step)
            result = SaveResult(step, time.monotonic() - started, error=repr(error))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        with self._lock:
            mark = step in self._good_after_commit
            self._good_after_commit.discard(step)
            self._inflight_step = None
        if mark and result.committed:
            self._mark(step)
        if self._on_done is not None:
            try:
                self._on_done(result)
            except Exception:
                log.exception("checkpoint completion hook failed")
        with self._lock:
            self._finished.append(result)
        return result
