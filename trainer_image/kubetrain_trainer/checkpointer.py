"""The loop's checkpoints: resume, save, restore, rotate and mark good, given what to save.

The Trainer hands over its components once (`attach`): the model and optimizer go
through torch.distributed.checkpoint, every other stateful object by name through
its own `state_dict`/`load_state_dict`, so nothing is saved that is not loaded back.
Saves copy the state into RAM at the step boundary and are written, uploaded and
committed by a worker thread (checkpoint.async_upload); the store's rules (terms,
fencing, lineage, rotation) are the CheckpointManager's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from kubetrain_core.checkpoints.storage import Storage
from kubetrain_core.config import ConfigError, TrainingConfig, to_yaml
from kubetrain_core.config.compat import changed_fields, shape_of
from kubetrain_trainer.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    CheckpointManager,
    Fenced,
    LoadedCheckpoint,
    ResumeRequest,
    RetryingStorage,
    checkpoint_dir,
    claims,
    open_storage,
)
from kubetrain_trainer.checkpoint.async_save import AsyncCheckpointer, SaveResult, group_collectives
from kubetrain_trainer.checkpoint.state import (
    CONFIG_FILE,
    HF_CONFIG_FILE,
    TOKENIZER_FILE,
    read_state,
)
from kubetrain_trainer.data.tokenizers import Tokenizer
from kubetrain_trainer.distributed import DistInfo, all_gather_object, broadcast_object
from kubetrain_trainer.export import beside, publish
from kubetrain_trainer.faults import FaultInjector
from kubetrain_trainer.metrics import Sink, TrainerMetrics
from kubetrain_trainer.models import lora
from kubetrain_trainer.recovery import HealthTracker
from kubetrain_trainer.runtime import Runtime

LOGS_PREFIX = "logs"
log = logging.getLogger(__name__)
# Budgets a fresh process continues from the checkpoint; an in-process restore keeps
# its own (the restore itself spends them).
RESUME_ONLY = frozenset({"guard"})


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> None: ...


class Checkpointer:
    def __init__(
        self,
        cfg: TrainingConfig,
        runtime: Runtime,
        dist_info: DistInfo,
        scratch: Path,
        *,
        faults: FaultInjector,
        metrics: TrainerMetrics,
    ) -> None:
        self.cfg = cfg.checkpoint
        self.runtime = runtime
        self.dist = dist_info
        self.scratch = scratch
        self.metrics = metrics
        self.shape = shape_of(cfg)
        # A checkpoint holds no frozen weights (a LoRA base, layers the finetune strategy
        # froze): it names the base they come from. Rank 0 alone reads the base through
        # (GBs for a large model) and tells the others.
        pretrained = cfg.model.pretrained
        self.base: dict[str, str] | None = None
        if (cfg.model.lora is not None or cfg.training.freezes) and pretrained is not None:
            digest = lora.base_digest(pretrained) if dist_info.is_main else None
            self.base = {"uri": pretrained, "sha256": broadcast_object(digest)}
        self.run_dir = Path(cfg.run_dir)
        self.config_yaml = to_yaml(cfg)
        uri = cfg.checkpoint.uri or str(Path(cfg.run_dir) / "checkpoints")
        self.manager = CheckpointManager.from_config(
            cfg.checkpoint,
            uri,
            storage=RetryingStorage(open_storage(uri, cfg.checkpoint.s3)),
            rank=dist_info.rank,
            world_size=dist_info.world_size,
            all_gather_object=all_gather_object,
            key=runtime.checkpoint_key,
            owner=runtime.owner,
            attempt=runtime.restart_count,
        )
        # Uploads run in a worker thread with collectives of their own (a collective call).
        self.saver = AsyncCheckpointer(
            self.manager,
            collectives=group_collectives(),
            on_done=self._done,
            before_commit=faults.stall_commit,
            omit_frozen=self.base is not None,
        )
        self.health = HealthTracker(cfg.recovery.good_after_steps)
        self.last: CheckpointInfo | None = None  # the newest committed (or loaded) one
        self.resumed_from: CheckpointInfo | None = None
        self.restored_step: int | None = None  # the checkpoint last loaded (resume or restore)
        self.committed = 0
        self._sink: Sink = Sink()
        self._model: torch.nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._states: dict[str, Stateful] = {}
        self._tokenizer: Tokenizer | None = None

    # ---- before the components exist ----------------------------------------

    def resume_point(self) -> LoadedCheckpoint | None:
        """The checkpoint this attempt starts from (None: step 0), downloaded: chosen by
        the manager from what the store holds and what the operator asked (env)."""
        rt = self.runtime
        request = ResumeRequest(
            # resume: false starts a new timeline once, on the job's first start.
            fresh=not self.cfg.resume and rt.earlier_starts == 0,
            rollback_before=rt.rollback_before,
            rollback_id=rt.rollback_id,
        )
        point = self.manager.start(request, self.scratch / "resume", check=self._check_shape)
        self.resumed_from = point.info if point else None
        return point

    @property
    def rolled_back(self) -> bool:
        """Whether this attempt's resume applied a rollback request."""
        return self.manager.rolled_back

    def tokenizer_file(self, point: LoadedCheckpoint | None) -> Path | None:
        return point.path / TOKENIZER_FILE if point else None

    def attach(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        states: dict[str, Stateful],
        tokenizer: Tokenizer,
        sink: Sink,
    ) -> None:
        """What every checkpoint holds, and where its events go."""
        self._model, self._optimizer = model, optimizer
        self._states, self._tokenizer, self._sink = states, tokenizer, sink

    # ---- loading ----------------------------------------------------------------

    def load(self, point: LoadedCheckpoint, *, resuming: bool) -> None:
        """Put the checkpoint's state into the attached components (a collective)."""
        model, optimizer = self._attached()
        extra = read_state(
            point.path, model, optimizer, self.dist.rank, omit_frozen=self.base is not None
        )
        if "loop" not in extra:  # written by kubetrain 0.1: the loop's fields at the top
            extra = {**extra, "loop": extra}
        for name, state in self._states.items():
            saved = extra.get(name)
            if saved is not None and (resuming or name not in RESUME_ONLY):
                state.load_state_dict(saved)
        self.last = point.info
        self.restored_step = point.info.step
        if not point.info.good:  # it still has to prove itself with healthy steps
            self.health.checkpoint_saved(point.info.step)

    def restore(self) -> LoadedCheckpoint | None:
        """Tier-1 rollback: the newest good checkpoint (else the newest committed one),
        loaded into the components and continued in a new term. None: nothing to load."""
        self.flush()  # the newest checkpoint may still be uploading
        local = self.scratch / f"restore-{time.monotonic_ns()}"
        point = self.manager.restore(local)
        if point is not None:
            self.load(point, resuming=False)
            self.health.discard_after(point.info.step)
        return point

    # ---- saving -------------------------------------------------------------------

    def save(self, step: int, metrics: dict[str, float]) -> CheckpointInfo:
        """Copy the state into RAM now (the step boundary keeps it consistent) and have
        it written, uploaded and committed: in the background with async_upload, else
        before returning. The info returned is committed only in the second case."""
        model, optimizer = self._attached()
        started = time.monotonic()
        self._results(self.saver.wait())  # one snapshot in flight per rank
        extra = {name: state.state_dict() for name, state in self._states.items()}
        snapshot = self.saver.snapshot(model, optimizer, extra, self.dist.rank)
        staging = self.scratch / f"save-{step}"
        staging.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            self._describe(staging, model)
        # The worker writes the snapshot into staging, uploads, commits, deletes staging;
        # the manifest records the config's shape, which a resume must match.
        meta: dict[str, Any] = {"config": self.shape}
        if self.base is not None:
            meta["base"] = self.base
        self.saver.submit(step, staging, metrics, snapshot=snapshot, meta=meta)
        if not self.cfg.async_upload:
            self._results(self.saver.wait())
        info = self.last
        if info is None or info.step != step:
            term = self.manager.term
            uri = self.manager.storage.uri(checkpoint_dir(step, term))
            info = CheckpointInfo(step, term, uri, False)
        for good_step in self.health.checkpoint_saved(step):
            self._mark_good(good_step)  # deferred to the commit while uploading
        self.metrics.checkpoint_stalled(time.monotonic() - started)
        return info

    def ensure_saved(self, step: int) -> None:
        """Wait for uploads, then make sure checkpoint `step` is committed (the end of a
        run, a preemption): CheckpointError when it cannot be."""
        self.flush()
        if self.last is None or self.last.step != step:
            self.save(step, {})
            self.flush()
            if self.last is None or self.last.step != step:
                raise CheckpointError(f"the checkpoint at step {step} did not commit")

    def healthy(self, steps_done: int) -> None:
        """`steps_done` steps finished healthy: mark the checkpoints that proved good."""
        for good_step in self.health.observe_healthy(steps_done):
            self._mark_good(good_step)

    def publish(self, export_dir: Path) -> str | None:
        """Copy the exported model into the store's export/; returns where it went."""
        what = "the export (`kubetrain export` of the final checkpoint makes it again)"
        return self._copy_out(what, export_dir, lambda store: publish(export_dir, store))

    def upload_logs(self) -> None:
        """Copy metrics.jsonl and TensorBoard event files to the store's
        logs/attempt-<n>/, so a finished or failed job's logs outlive its pod."""
        files = [self.run_dir / "metrics.jsonl", *(self.run_dir / "tensorboard").glob("*")]
        prefix = f"{LOGS_PREFIX}/attempt-{self.runtime.restart_count}"

        def copy(store: Storage) -> str:
            for path in (p for p in files if p.is_file()):
                store.put_file(f"{prefix}/{path.relative_to(self.run_dir)}", path)
            return store.uri(prefix)

        self._copy_out("the run's logs", self.run_dir / LOGS_PREFIX, copy)

    def _copy_out(self, what: str, local: Path, copy: Callable[[Storage], str]) -> str | None:
        """Rank 0 runs `copy` against the store, unless the store is the run dir's own
        (`local` is already beside it) or a newer attempt owns it. A failing store is a
        warning, never a failed run: the checkpoints are the data."""
        if not self.dist.is_main or beside(local, self.manager.uri):
            return None
        try:
            if claims.superseded(self.manager.storage, self.manager.term):
                log.warning("not copying %s: a newer attempt owns %s", what, self.manager.uri)
                return None
            return copy(self.manager.storage)
        except Exception as err:  # a convenience on top of the checkpoints
            log.warning("could not copy %s to %s: %s", what, self.manager.uri, err)
            return None

    def flush(self) -> None:
        """Wait for the upload in flight (before exit, restore, or the final save)."""
        self._results(self.saver.wait())

    def close(self) -> None:
        self.saver.close()  # an upload in flight still reads from scratch
        self._results(self.saver.finished())
        self.upload_logs()  # the last lines, however the run ended

    # ---- helpers ------------------------------------------------------------------

    def _attached(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        if self._model is None or self._optimizer is None:
            raise RuntimeError("Checkpointer.attach() the components first")
        return self._model, self._optimizer

    def _describe(self, staging: Path, model: torch.nn.Module) -> None:
        """What rebuilds the model from this checkpoint alone: tokenizer and configs."""
        if self._tokenizer is not None:
            self._tokenizer.save(staging / TOKENIZER_FILE)
        (staging / CONFIG_FILE).write_text(self.config_yaml)
        to_json = getattr(getattr(model, "config", None), "to_json_string", None)
        if callable(to_json):  # a transformers model
            (staging / HF_CONFIG_FILE).write_text(to_json())

    def _check_shape(self, info: CheckpointInfo) -> None:
        meta = info.manifest.meta if info.manifest else {}
        saved_base = meta.get("base")
        if (
            self.base is not None
            and isinstance(saved_base, dict)
            and saved_base.get("sha256") != self.base["sha256"]
        ):
            raise ConfigError(
                "model.pretrained",
                [
                    f"{info.uri} holds LoRA adapters trained on the base "
                    f"{saved_base.get('uri')} (weights sha256 {saved_base.get('sha256')}),"
                    f" but {self.base['uri']} now has sha256 {self.base['sha256']}: point"
                    " model.pretrained at that base again, or start elsewhere"
                ],
            )
        changed = changed_fields(meta.get("config"), self.shape)
        if changed:
            raise ConfigError(
                "checkpoint.uri",
                [
                    f"{info.uri} was written with another model shape, which this config "
                    "cannot resume:",
                    *(f"  {line}" for line in changed),
                    "Start elsewhere (another run dir or checkpoint.uri), or start over "
                    "beside it with checkpoint.resume: false (kubetrain run --from-scratch); "
                    "its checkpoints are kept either way.",
                ],
            )

    def _mark_good(self, step: int) -> None:
        if self.dist.is_main:
            self.saver.mark_good(step)
        self.metrics.checkpoint_good(step)

    def _done(self, result: SaveResult) -> None:
        # The upload worker's hook: only thread-safe updates (an attribute, metrics).
        if result.info is not None:
            self.last = result.info
            self.metrics.checkpoint_committed(result.step, result.upload_seconds)
        else:
            self.metrics.checkpoint_failed()

    def _results(self, results: list[SaveResult]) -> None:
        """Count and report the saves that ended; a fenced one stops this process."""
        for result in results:
            if result.fenced:
                self._sink.event("checkpoint_fenced", result.step, error=result.error)
                raise Fenced(f"{result.error}: this attempt was replaced and stops here")
            if result.info is not None:
                self.committed += 1
                self.upload_logs()  # as often as checkpoints, from the loop's thread
                self._sink.event(
                    "checkpoint", result.step, uri=result.info.uri, seconds=result.upload_seconds
                )
            else:
                self._sink.event("checkpoint_failed", result.step, error=result.error)
                self._sink.message(f"checkpoint at step {result.step} did not commit")
