"""Committed, verifiable, rotated checkpoints on any Storage (the operator/trainer contract).

Layout under the checkpoint URI, one directory per step:

    step-00000120/<state files of every rank>
    step-00000120/manifest.json   written LAST by rank 0: the commit
    step-00000120/good.json       written later, once K healthy steps followed it

The manager never touches torch: ranks hand it local files (state.py writes them), it
uploads, commits, lists, verifies and rotates. Saving is two separable halves, a local
write and an upload, so the upload can later move to a background thread.
"""

from __future__ import annotations

import builtins
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple

from kubetrain_trainer.checkpoint.manifest import (
    GOOD_MARKER,
    MANIFEST,
    RESERVED_NAMES,
    FileEntry,
    GoodMarker,
    Manifest,
    ManifestError,
    describe_files,
    parse_step_dir,
    sha256_file,
    step_dir,
)
from kubetrain_trainer.checkpoint.storage import Storage, open_storage

if TYPE_CHECKING:
    from kubetrain_trainer.config.schema import CheckpointConfig, S3Config

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointManager",
    "CorruptCheckpoint",
    "LoadedCheckpoint",
]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A save that did not commit (an upload failed on some rank, or ranks disagree)."""


class CorruptCheckpoint(Exception):
    """A committed checkpoint whose files are missing or do not match the manifest."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint directory as found in storage."""

    step: int
    uri: str
    committed: bool
    good: bool = False
    manifest: Manifest | None = None

    @property
    def epoch(self) -> int | None:
        return self.manifest.epoch if self.manifest else None

    @property
    def time(self) -> float | None:
        return self.manifest.time if self.manifest else None

    @property
    def world_size(self) -> int | None:
        return self.manifest.world_size if self.manifest else None

    @property
    def metrics(self) -> dict[str, float | None]:
        return dict(self.manifest.metrics) if self.manifest else {}

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)


class LoadedCheckpoint(NamedTuple):
    info: CheckpointInfo
    path: Path  # local directory holding the verified files


def _no_barrier() -> None:
    pass


def _gather_self(obj: Any) -> list[Any]:
    return [obj]


def _local_files(files: Mapping[str, Path] | Path) -> dict[str, Path]:
    """Name -> local path; a directory contributes every file under it by relative path."""
    if isinstance(files, Mapping):
        collected = {str(name): Path(path) for name, path in files.items()}
    else:
        root = Path(files)
        if not root.is_dir():
            raise FileNotFoundError(f"checkpoint staging directory {root} does not exist")
        collected = {}
        for dirpath, _, filenames in os.walk(root):
            for filename in filenames:
                path = Path(dirpath) / filename
                collected[path.relative_to(root).as_posix()] = path
    for name in collected:
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or ".." in parts or name in RESERVED_NAMES:
            raise ValueError(f"invalid checkpoint file name {name!r}")
    return collected


class CheckpointManager:
    """Save, list, verify, load and rotate checkpoints under one URI.

    Every rank calls `save` with its own files; `barrier` and `all_gather_object` are
    the process group's collectives (torch.distributed.barrier / all_gather_object),
    left at their single-process defaults when world_size is 1. Only rank 0 writes
    the manifest, good markers and deletes.
    """

    def __init__(
        self,
        uri: str,
        s3_cfg: S3Config | None = None,
        *,
        keep_last: int = 3,
        keep_best: int = 0,
        best_metric: str = "val_loss",
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
        all_gather_object: Callable[[Any], builtins.list[Any]] | None = None,
        storage: Storage | None = None,
    ) -> None:
        if keep_last < 1 or keep_best < 0:
            raise ValueError("keep_last must be >= 1 and keep_best >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        if world_size > 1 and (barrier is None or all_gather_object is None):
            raise ValueError("world_size > 1 needs barrier and all_gather_object collectives")
        self.storage = storage if storage is not None else open_storage(uri, s3_cfg)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.best_metric = best_metric
        self.rank = rank
        self.world_size = world_size
        self._barrier = barrier or _no_barrier
        self._all_gather = all_gather_object or _gather_self

    @classmethod
    def from_config(
        cls,
        cfg: CheckpointConfig,
        *,
        uri: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
        all_gather_object: Callable[[Any], builtins.list[Any]] | None = None,
    ) -> CheckpointManager:
        """A manager for the `checkpoint` config section; `uri` overrides cfg.uri."""
        target = uri or cfg.uri
        if not target:
            raise ValueError("no checkpoint URI: set checkpoint.uri or pass uri")
        return cls(
            target,
            cfg.s3,
            keep_last=cfg.keep_last,
            keep_best=cfg.keep_best,
            best_metric=cfg.best_metric,
            rank=rank,
            world_size=world_size,
            barrier=barrier,
            all_gather_object=all_gather_object,
        )

    @property
    def uri(self) -> str:
        return self.storage.root_uri

    # ---- listing -------------------------------------------------------------

    def _scan(self) -> dict[int, set[str]]:
        """Step -> names of the files in its directory (one recursive listing)."""
        found: dict[int, set[str]] = {}
        for key in self.storage.list_keys():
            head, sep, rest = key.partition("/")
            step = parse_step_dir(head)
            if step is not None and sep and head == step_dir(step):
                found.setdefault(step, set()).add(rest)
        return found

    def _info(self, step: int, names: set[str]) -> CheckpointInfo:
        directory = step_dir(step)
        manifest = None
        if MANIFEST in names:
            try:
                manifest = Manifest.from_json(self.storage.get_bytes(f"{directory}/{MANIFEST}"))
                if manifest.step != step:
                    raise ManifestError(f"manifest says step {manifest.step}")
            except (ManifestError, FileNotFoundError) as error:
                log.warning(
                    "checkpoint %s has an unreadable manifest (%s): not committed",
                    self.storage.uri(directory),
                    error,
                )
                manifest = None
        committed = manifest is not None
        return CheckpointInfo(
            step=step,
            uri=self.storage.uri(directory),
            committed=committed,
            good=committed and GOOD_MARKER in names,
            manifest=manifest,
        )

    def list(self, include_uncommitted: bool = False) -> builtins.list[CheckpointInfo]:
        """Checkpoints sorted by step; only committed ones unless asked otherwise."""
        infos = [self._info(step, names) for step, names in sorted(self._scan().items())]
        return [i for i in infos if i.committed or include_uncommitted]

    def latest(self, committed_only: bool = True, good_only: bool = False) -> CheckpointInfo | None:
        """The newest checkpoint (committed, and good if asked), or None."""
        for info in reversed(self.list(include_uncommitted=not committed_only)):
            if info.good or not good_only:
                return info
        return None

    def get(self, step: int) -> CheckpointInfo | None:
        """The checkpoint at `step` (committed or not), or None if there is none."""
        names = {key.partition("/")[2] for key in self.storage.list_keys(step_dir(step))}
        return self._info(step, names) if names else None

    def resolve(self, uri: str) -> CheckpointInfo:
        """The committed checkpoint a URI names (e.g. KUBETRAIN_RESUME_FROM).

        The URI must be a step directory under this manager's URI.
        """
        parent, _, name = uri.rstrip("/").rpartition("/")
        step = parse_step_dir(name)
        if step is None or parent.rstrip("/") != self.uri.rstrip("/"):
            raise ValueError(f"{uri} is not a checkpoint under {self.uri}")
        info = self.get(step)
        if info is None or not info.committed:
            raise CorruptCheckpoint(f"{uri} is not a committed checkpoint")
        return info

    # ---- saving --------------------------------------------------------------

    def save(
        self,
        step: int,
        files: Mapping[str, Path] | Path,
        metrics: Mapping[str, float] | None = None,
        *,
        epoch: int = 0,
        meta: Mapping[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Upload this rank's files and commit the checkpoint at `step` (a collective).

        `files` is this rank's local output (a directory, or name -> path); each rank
        must stage into its own directory. Checkpoints at `step` or newer are deleted
        first: a save at `step` means any newer ones belong to an abandoned timeline
        (the run was rolled back) and must never be resumed from.
        """
        directory = step_dir(step)
        # Errors are carried to the collectives below, never raised between them: a rank
        # that left early would leave the others waiting in a barrier.
        error: str | None = None
        if self.rank == 0:
            try:
                self._discard_from(step)
            except Exception as exc:
                error = f"rank 0 clearing {directory}: {exc!r}"
                log.exception("clearing checkpoint %s failed", self.storage.uri(directory))
        self._barrier()  # nobody uploads into a directory rank 0 is still deleting

        entries: dict[str, FileEntry] = {}
        try:
            if error is None:
                entries = self._upload(directory, _local_files(files))
        except Exception as exc:  # reported to every rank below
            error = f"rank {self.rank}: {exc!r}"
            log.exception("uploading checkpoint %s failed", self.storage.uri(directory))
        gathered = self._all_gather(({k: v.to_dict() for k, v in entries.items()}, error))
        merged = self._merge(directory, gathered)

        manifest = Manifest.create(
            step,
            epoch=epoch,
            world_size=self.world_size,
            files=merged,
            metrics=dict(metrics or {}),
            meta=dict(meta or {}),
        )
        commit_error: str | None = None
        if self.rank == 0:
            try:
                self.storage.put_bytes(f"{directory}/{MANIFEST}", manifest.to_json())
            except Exception as exc:  # not committed (or unknown): never reported as committed
                commit_error = repr(exc)
                log.exception("writing the manifest of %s failed", self.storage.uri(directory))
            else:
                log.info(
                    "committed checkpoint %s (%d files, %d bytes)",
                    self.storage.uri(directory),
                    len(merged),
                    manifest.total_bytes,
                )
        # Every rank returns only once the checkpoint is committed, and learns if it was not.
        commit_errors = [e for e in self._all_gather(commit_error) if e]
        if commit_errors:
            raise CheckpointError(f"checkpoint {directory} not committed: {commit_errors[0]}")
        if self.rank == 0:
            try:
                self.rotate()
            except Exception:  # rotation must never fail training
                log.exception("checkpoint rotation under %s failed", self.uri)
        return CheckpointInfo(step, self.storage.uri(directory), True, False, manifest)

    def _upload(self, directory: str, local: dict[str, Path]) -> dict[str, FileEntry]:
        # Hash the local copy first: the manifest must describe what was meant to be written.
        entries = describe_files(local, self.rank)
        for name, path in sorted(local.items()):
            self.storage.put_file(f"{directory}/{name}", path)
        return entries

    def _merge(self, directory: str, gathered: builtins.list[Any]) -> dict[str, FileEntry]:
        errors = [error for _, error in gathered if error]
        if errors:
            raise CheckpointError(f"checkpoint {directory} not committed: {'; '.join(errors)}")
        merged: dict[str, FileEntry] = {}
        for rank_entries, _ in gathered:
            for name, raw in rank_entries.items():
                entry = FileEntry.from_dict(raw)
                seen = merged.get(name)
                if seen is not None and seen.sha256 != entry.sha256:
                    raise CheckpointError(
                        f"checkpoint {directory}: ranks {seen.rank} and {entry.rank} "
                        f"wrote different contents for {name}"
                    )
                merged.setdefault(name, entry)
        if not merged:
            raise CheckpointError(f"checkpoint {directory} has no files")
        return merged

    def discard_after(self, step: int) -> None:
        """Delete checkpoints newer than `step` (rank 0): after a rollback they are an
        abandoned timeline that a later plain restart must never resume from."""
        if self.rank == 0:
            self._discard_from(step + 1)

    def _discard_from(self, step: int) -> None:
        for existing in sorted(s for s in self._scan() if s >= step):
            if existing > step:
                log.warning(
                    "deleting checkpoint %s: newer than step %d (abandoned timeline)",
                    self.storage.uri(step_dir(existing)),
                    step,
                )
            self._delete(existing)

    def _delete(self, step: int) -> None:
        # Marker and manifest go first: a delete cut short leaves an uncommitted
        # directory (cleaned up later), never a committed one with files missing.
        directory = step_dir(step)
        self.storage.delete(f"{directory}/{GOOD_MARKER}")
        self.storage.delete(f"{directory}/{MANIFEST}")
        self.storage.delete_prefix(directory)

    # ---- good markers and rotation --------------------------------------------

    def mark_good(self, step: int, healthy_steps: int | None = None) -> bool:
        """Record that healthy steps followed checkpoint `step` (rank 0 writes; others no-op).

        Returns whether a marker was written; a checkpoint that is not committed
        (e.g. rotated away) cannot be marked.
        """
        if self.rank != 0:
            return False
        info = self.get(step)
        if info is None or not info.committed:
            log.warning("not marking checkpoint at step %d good: not committed", step)
            return False
        marker = GoodMarker(step=step, healthy_steps=healthy_steps)
        self.storage.put_bytes(f"{step_dir(step)}/{GOOD_MARKER}", marker.to_json())
        log.info("checkpoint %s is good", info.uri)
        return True

    def _to_keep(self, committed: builtins.list[CheckpointInfo]) -> set[int]:
        keep = {info.step for info in committed[-self.keep_last :]}
        keep.add(committed[-1].step)  # the newest committed, whatever keep_last says
        good = [info.step for info in committed if info.good]
        if good:
            keep.add(good[-1])  # the rollback target of last resort
        if self.keep_best:
            scored = [(info.metric(self.best_metric), info.step) for info in committed]
            ranked = sorted((m, -s) for m, s in scored if m is not None)
            keep.update(-neg_step for _, neg_step in ranked[: self.keep_best])
        return keep

    def rotate(self) -> builtins.list[int]:
        """Delete what the retention policy does not keep; returns the deleted steps.

        Keeps the newest `keep_last` committed checkpoints, the `keep_best` best by
        `best_metric` (lower is better), the newest committed and the newest good one;
        deletes uncommitted leftovers older than the newest committed checkpoint.
        """
        if self.rank != 0:
            return []
        infos = self.list(include_uncommitted=True)
        committed = [info for info in infos if info.committed]
        if not committed:
            return []
        keep = self._to_keep(committed)
        newest = committed[-1].step
        doomed = [
            info.step
            for info in infos
            if (info.committed and info.step not in keep)
            or (not info.committed and info.step < newest)
        ]
        for step in doomed:
            log.info("rotating out checkpoint %s", self.storage.uri(step_dir(step)))
            self._delete(step)
        return doomed

    # ---- loading -------------------------------------------------------------

    def load(self, info: CheckpointInfo, local_dir: Path) -> Path:
        """Download a committed checkpoint into `local_dir`/step-N and verify every file.

        Raises CorruptCheckpoint when a file is missing, has the wrong size or hash.
        Ranks sharing a machine must use different `local_dir`s.
        """
        if info.manifest is None:
            raise CorruptCheckpoint(f"{info.uri} is not committed")
        directory = step_dir(info.step)
        target = Path(local_dir) / directory
        shutil.rmtree(target, ignore_errors=True)  # stale files must not mix in
        try:
            for name, entry in sorted(info.manifest.files.items()):
                dest = target / name
                try:
                    self.storage.get_file(f"{directory}/{name}", dest)
                except FileNotFoundError:
                    raise CorruptCheckpoint(f"{info.uri}: {name} is missing") from None
                size = dest.stat().st_size
                if size != entry.size:
                    raise CorruptCheckpoint(
                        f"{info.uri}: {name} has {size} bytes, manifest says {entry.size}"
                    )
                if sha256_file(dest) != entry.sha256:
                    raise CorruptCheckpoint(f"{info.uri}: {name} does not match its sha256")
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return target

    def load_latest(self, local_dir: Path, good_only: bool = False) -> LoadedCheckpoint | None:
        """Load the newest committed (or good) checkpoint that verifies, or None.

        A corrupt checkpoint is skipped with a warning and the previous one tried.
        A collective: all ranks agree on the checkpoint (if any rank fails to verify
        one, every rank moves on to the previous).
        """
        candidates = [info for info in self.list() if info.good or not good_only]
        for info in reversed(candidates):
            path: Path | None = None
            try:
                path = self.load(info, local_dir)
            except CorruptCheckpoint as error:
                log.warning(
                    "checkpoint %s is corrupt, trying the previous one: %s", info.uri, error
                )
            verdicts = self._all_gather(path is not None)
            if path is not None and all(verdicts):
                return LoadedCheckpoint(info, path)
            if path is not None:
                log.warning("checkpoint %s failed to verify on another rank", info.uri)
                shutil.rmtree(path, ignore_errors=True)
        return None
