"""Committed, verifiable, fenced checkpoints on any Storage (the operator/trainer contract).

Layout under the checkpoint URI:

    _kubetrain/term-00000007.json      the claim of the attempt writing now (claims.py)
    step-00000120-t7/<state files of every rank>
    step-00000120-t7/manifest.json     written LAST by rank 0: the commit (signed)
    step-00000120-t7/good.json         written later, once K healthy steps followed it

An attempt calls `start` once: it reads the newest claim, picks the checkpoint to
resume from (the newest of its lineage, a good one before a rollback step, or none),
verifies it, and claims the next term continuing from it. `save` commits into the
term's own directories and `rotate` deletes only within the writer's own lineage
(retention.py); both stop once a newer term exists. Nothing is ever deleted to
abandon a timeline: lineage (lineage.py) hides it instead.

The manager never touches torch: ranks hand it local files (state.py writes them), and
its collectives are collective.py's.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetrain_core.checkpoints import listing
from kubetrain_core.checkpoints.listing import (
    CheckpointError,
    CheckpointInfo,
    LoadedCheckpoint,
)
from kubetrain_core.checkpoints.manifest import (
    GOOD_MARKER,
    MANIFEST,
    FileEntry,
    GoodMarker,
    Manifest,
    Writer,
    checkpoint_dir,
)
from kubetrain_core.checkpoints.storage import Storage, open_storage
from kubetrain_core.checkpoints.transfer import upload_files
from kubetrain_trainer.checkpoint import claims, retention
from kubetrain_trainer.checkpoint.claims import Fenced, StoreUnreadable
from kubetrain_trainer.checkpoint.collective import first_verified, gather_self, on_rank0
from kubetrain_trainer.checkpoint.lineage import Claim, Lineage, Owner
from kubetrain_trainer.checkpoint.resume import (
    ResumePlan,
    ResumeRequest,
    plan_restore,
    plan_resume,
)

if TYPE_CHECKING:
    from kubetrain_core.config.schema import CheckpointConfig, S3Config

__all__ = ["CheckpointManager"]

log = logging.getLogger(__name__)


@dataclass
class _Timeline:
    """The term this process writes in; shared with the upload worker's twin manager."""

    claim: Claim | None = None

    @property
    def term(self) -> int:
        if self.claim is None:
            raise CheckpointError("no term claimed: call start() before saving")
        return self.claim.term


class CheckpointManager:
    """Resume, save, list, verify, load and rotate checkpoints under one URI.

    Every rank calls the collectives (`start`, `restore`, `save`);
    `all_gather_object` is the process group's, left at its single-process default
    when world_size is 1. Only rank 0 reads claims, writes the manifest,
    markers and claims, and deletes. `key` signs and authenticates manifests and
    markers; `owner` and `attempt` identify the writer.
    """

    def __init__(
        self,
        uri: str,
        s3_cfg: S3Config | None = None,
        *,
        keep_last: int = 3,
        keep_best: int = 0,
        best_metric: str = "val_loss",
        best_mode: str = "auto",
        rank: int = 0,
        world_size: int = 1,
        all_gather_object: Callable[[Any], builtins.list[Any]] | None = None,
        storage: Storage | None = None,
        key: bytes | None = None,
        owner: Owner | None = None,
        attempt: int = 0,
    ) -> None:
        if keep_last < 1 or keep_best < 0:
            raise ValueError("keep_last must be >= 1 and keep_best >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        if world_size > 1 and all_gather_object is None:
            raise ValueError("world_size > 1 needs the all_gather_object collective")
        self.storage = storage if storage is not None else open_storage(uri, s3_cfg)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.rank = rank
        self.world_size = world_size
        self.key = key
        self.owner = owner or Owner()
        self.attempt = attempt
        self._all_gather = all_gather_object or gather_self
        self._timeline = _Timeline()
        self.rolled_back = False  # whether start() applied a rollback request

    @classmethod
    def from_config(cls, cfg: CheckpointConfig, uri: str, **kwargs: Any) -> CheckpointManager:
        """A manager for the `checkpoint` config section, writing under `uri`."""
        return cls(
            uri,
            cfg.s3,
            keep_last=cfg.keep_last,
            keep_best=cfg.keep_best,
            best_metric=cfg.best_metric,
            best_mode=cfg.best_mode,
            **kwargs,
        )

    def twin(
        self,
        storage: Storage,
        all_gather_object: Callable[[Any], builtins.list[Any]] | None,
    ) -> CheckpointManager:
        """The same manager (same term, once claimed) over other storage and collectives:
        for the upload worker, which must not use the training loop's process group."""
        other = CheckpointManager(
            self.uri,
            keep_last=self.keep_last,
            keep_best=self.keep_best,
            best_metric=self.best_metric,
            best_mode=self.best_mode,
            rank=self.rank,
            world_size=self.world_size,
            all_gather_object=all_gather_object,
            storage=storage,
            key=self.key,
            owner=self.owner,
            attempt=self.attempt,
        )
        other._timeline = self._timeline
        return other

    @property
    def uri(self) -> str:
        return self.storage.root_uri

    @property
    def term(self) -> int:
        """The term this process writes in (after start)."""
        return self._timeline.term

    # ---- listing -------------------------------------------------------------

    def scan(self) -> builtins.list[CheckpointInfo]:
        """Every checkpoint directory in the store, of any term, sorted by (step, term)."""
        return listing.scan(self.storage, self.key)

    def _lineage(self) -> Lineage:
        claim = self._timeline.claim
        if claim is None:  # a reader that never started: the store's newest claim
            claim = claims.read_head(self.storage)
        return claim.lineage if claim is not None else Lineage()

    def list(self) -> builtins.list[CheckpointInfo]:
        """The committed checkpoints of the current lineage, sorted by step."""
        lineage = self._lineage()
        return [i for i in self.scan() if i.committed and lineage.covers(i.step, i.term)]

    def latest(self, good_only: bool = False) -> CheckpointInfo | None:
        """The newest committed (or good) checkpoint of the current lineage, or None."""
        for info in reversed(self.list()):
            if info.good or not good_only:
                return info
        return None

    # ---- resuming -----------------------------------------------------------

    def start(
        self,
        request: ResumeRequest,
        local_dir: Path,
        check: Callable[[CheckpointInfo], None] | None = None,
    ) -> LoadedCheckpoint | None:
        """Pick, verify and load the checkpoint this attempt resumes from (None: step 0),
        then claim the next term continuing from it. A collective.

        `check(info)` may refuse a checkpoint before it is loaded (e.g. ConfigError for a
        config it cannot fit). Raises StoreConflict for another job's store, and
        NoUsableCheckpoint when the lineage has checkpoints but none verifies."""
        plan = on_rank0(self.rank, self._all_gather, lambda: self._plan(request))
        loaded = first_verified(plan.candidates, self._loader(local_dir), self._all_gather, check)
        if loaded is None and plan.must_resume:
            raise plan.unusable(self.uri)
        if loaded is None and plan.rolling_back:
            log.warning(
                "no good checkpoint before step %d under %s: starting over from step 0 "
                "(every checkpoint is kept)",
                request.rollback_before,
                self.uri,
            )
        self._claim(loaded.info if loaded else None, plan)
        self.rolled_back = plan.rolling_back and loaded is not None
        return loaded

    def restore(self, local_dir: Path) -> LoadedCheckpoint | None:
        """Tier-1 rollback in process: load the newest good checkpoint of the lineage
        (else the newest committed one) and continue from it in a new term. A collective."""
        plan = on_rank0(self.rank, self._all_gather, lambda: plan_restore(self.list()))
        loaded = first_verified(plan.candidates, self._loader(local_dir), self._all_gather, None)
        if loaded is not None:
            self._claim(loaded.info, plan)
        return loaded

    def _plan(self, request: ResumeRequest) -> ResumePlan:
        head = claims.read_head(self.storage)
        claims.check_owner(self.storage, head, self.owner)
        return plan_resume(head, self.scan(), request)

    def _claim(self, resume: CheckpointInfo | None, plan: ResumePlan) -> None:
        def make(term: int, head: Claim | None) -> Claim:
            claims.check_owner(self.storage, head, self.owner)
            base = head or Claim(0, self.owner, Lineage())
            if resume is not None and not base.lineage.covers(resume.step, resume.term):
                raise StoreUnreadable(
                    f"{self.uri} changed while resuming: {resume.uri} left its lineage"
                )
            return base.successor(
                term,
                self.owner,
                (resume.step, resume.term) if resume else None,
                attempt=self.attempt,
                resumed_from=resume.directory if resume else None,
                rollback_id=plan.rollback_id if plan.rolling_back else None,
                present=plan.present,
            )

        def claim_on_rank0() -> Claim:
            claim = claims.claim_next(self.storage, make)
            claims.abort_stale_uploads(self.storage, claim.term)
            claims.prune_claims(self.storage, claim.term)
            return claim

        self._timeline.claim = on_rank0(self.rank, self._all_gather, claim_on_rank0)

    def _loader(self, local_dir: Path) -> Callable[[CheckpointInfo], Path]:
        return lambda info: self.load(info, local_dir)

    def load(self, info: CheckpointInfo, local_dir: Path) -> Path:
        """Download a committed checkpoint into `local_dir`/<dir>, every file verified
        (CorruptCheckpoint otherwise). Ranks sharing a machine need their own `local_dir`."""
        return listing.download(self.storage, info, local_dir)

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
        must stage into its own directory. The directory belongs to this term alone,
        so nothing else is touched. Raises Fenced once a newer term exists.
        """
        term = self.term
        directory = checkpoint_dir(step, term)
        # Errors are carried to the collectives below, never raised between them: a rank
        # that left early would leave the others waiting.
        error: str | None = None
        entries: dict[str, FileEntry] = {}
        try:
            entries = self._upload(directory, listing.local_files(files))
        except Exception as exc:  # reported to every rank below
            error = f"rank {self.rank}: {exc!r}"
            log.exception("uploading checkpoint %s failed", self.storage.uri(directory))
        gathered = self._all_gather(({k: v.to_dict() for k, v in entries.items()}, error))
        merged = listing.merge_entries(directory, gathered)

        manifest = Manifest.create(
            step,
            epoch=epoch,
            world_size=self.world_size,
            files=merged,
            writer=Writer(term, self.attempt, self.owner.uid),
            metrics=dict(metrics or {}),
            meta=dict(meta or {}),
        )
        commit_error: tuple[str, bool] | None = None  # (message, fenced)
        if self.rank == 0:
            commit_error = self._commit(directory, manifest)
        outcomes = [e for e in self._all_gather(commit_error) if e]
        if outcomes:
            message, fenced = outcomes[0]
            raise (Fenced if fenced else CheckpointError)(
                f"checkpoint {directory} not committed: {message}"
            )
        if self.rank == 0:
            try:
                self.rotate()
            except Exception:  # rotation must never fail training
                log.exception("checkpoint rotation under %s failed", self.uri)
        return CheckpointInfo(step, term, self.storage.uri(directory), True, manifest=manifest)

    def _commit(self, directory: str, manifest: Manifest) -> tuple[str, bool] | None:
        try:
            if claims.superseded(self.storage, manifest.writer.term):
                return (f"term {manifest.writer.term} was superseded by a newer attempt", True)
            self.storage.put_bytes(f"{directory}/{MANIFEST}", manifest.to_json(self.key))
        except Exception as exc:  # not committed (or unknown): never reported as committed
            log.exception("writing the manifest of %s failed", self.storage.uri(directory))
            return (repr(exc), False)
        log.info(
            "committed checkpoint %s (%d files, %d bytes)",
            self.storage.uri(directory),
            len(manifest.files),
            manifest.total_bytes,
        )
        return None

    def _upload(self, directory: str, local: dict[str, Path]) -> dict[str, FileEntry]:
        # Concurrently, each file hashed from its local copy while it uploads: the
        # manifest describes what was meant to be written (transfer.py).
        return upload_files(self.storage, directory, local, self.rank)

    # ---- good markers and rotation --------------------------------------------

    def mark_good(self, step: int, healthy_steps: int | None = None) -> bool:
        """Record that healthy steps followed the lineage's checkpoint at `step` (rank 0
        writes; others no-op). Returns whether a marker was written: one that is not
        committed (e.g. rotated away), or a fenced writer, writes none."""
        if self.rank != 0:
            return False
        info = next((i for i in self.list() if i.step == step), None)
        if info is None:
            log.warning("not marking checkpoint at step %d good: not committed", step)
            return False
        if claims.superseded(self.storage, self.term):
            log.warning("not marking %s good: a newer attempt owns %s", info.uri, self.uri)
            return False
        marker = GoodMarker(step=step, healthy_steps=healthy_steps)
        self.storage.put_bytes(f"{info.directory}/{GOOD_MARKER}", marker.to_json(self.key))
        log.info("checkpoint %s is good", info.uri)
        return True

    def rotate(self) -> builtins.list[tuple[int, int]]:
        """Delete what the retention policy does not keep (retention.py) from this
        writer's own lineage; returns the deleted (step, term). A fenced writer deletes
        nothing."""
        if self.rank != 0:
            return []
        lineage = self._lineage()
        listed = self.scan()
        visible = [i for i in listed if i.committed and lineage.covers(i.step, i.term)]
        victims = retention.doomed(
            listed,
            visible,
            term=self.term,
            keep_last=self.keep_last,
            keep_best=self.keep_best,
            best_metric=self.best_metric,
            best_mode=self.best_mode,
        )
        if not victims:
            return []
        if claims.superseded(self.storage, self.term):
            log.warning("not rotating %s: a newer attempt owns it", self.uri)
            return []
        for step, term in victims:
            directory = checkpoint_dir(step, term)
            log.info("rotating out checkpoint %s", self.storage.uri(directory))
            # Marker and manifest first: a delete cut short leaves a torn directory
            # (removed later), never a committed one with files missing.
            self.storage.delete(f"{directory}/{GOOD_MARKER}")
            self.storage.delete(f"{directory}/{MANIFEST}")
            self.storage.delete_prefix(directory)
        return victims
