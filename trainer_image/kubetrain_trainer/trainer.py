"""The training loop: build components from the config, resume, train, checkpoint, report.

Step numbering: ``self.step`` is the number of optimizer steps completed. The
step being computed has index ``self.step``, its batch is a pure function of
that index, and checkpoint ``step-N`` holds the state after N steps, so a run
resumed from it computes step index N next. Fault injection and batch skipping
use the same indices.
"""

from __future__ import annotations

import math
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from kubetrain_trainer import registry
from kubetrain_trainer.callbacks import CallbackList, EarlyStopping, TrainerState, build_callbacks
from kubetrain_trainer.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    CheckpointManager,
    Fenced,
    LoadedCheckpoint,
    ResumeRequest,
    RetryingStorage,
    checkpoint_dir,
    open_storage,
)
from kubetrain_trainer.checkpoint.async_save import AsyncCheckpointer, SaveResult, group_collectives
from kubetrain_trainer.checkpoint.state import read_state
from kubetrain_trainer.config import ConfigError, TrainingConfig
from kubetrain_trainer.config.compat import changed_fields, shape_of
from kubetrain_trainer.contract import format_step_ranges, parse_faults
from kubetrain_trainer.data.base import DatasetAdapter
from kubetrain_trainer.distributed import DistInfo, all_gather_object
from kubetrain_trainer.faults import FaultInjector
from kubetrain_trainer.metrics import MetricsLogger, MetricsServer, ProgressReporter, TrainerMetrics
from kubetrain_trainer.metrics.logger import perplexity
from kubetrain_trainer.models.adapters import ModelAdapter
from kubetrain_trainer.optimization import build_optimizer, build_scheduler, scale_lr
from kubetrain_trainer.recovery import HealthTracker, NanGuard, Verdict
from kubetrain_trainer.runtime import Runtime
from kubetrain_trainer.strategies import StepOutput, TrainingStrategy

TOKENIZER_FILE = "tokenizer.json"


class NaNUnrecoverable(RuntimeError):
    """The in-process NaN budget is spent; the operator rolls back further."""

    def __init__(self, step: int, skip_ranges: list[tuple[int, int]]) -> None:
        super().__init__(f"non-finite loss or gradient persisted at step {step}")
        self.step = step
        self.skip_ranges = skip_ranges


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint was saved when possible."""


@dataclass
class RunSummary:
    steps: int
    total_steps: int
    seconds: float
    train_loss: float
    val_loss: float
    test_loss: float
    tokens_per_second: float
    checkpoints: int
    nan_events: int
    restores: int
    resumed_from: int | None
    run_dir: Path
    last_checkpoint: str | None

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["run_dir"] = str(self.run_dir)
        return d


class Trainer:
    """Builds every component named in a TrainingConfig and runs the loop."""

    def __init__(self, cfg: TrainingConfig, runtime: Runtime, dist_info: DistInfo) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.dist = dist_info
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"kubetrain-rank{dist_info.rank}-"))
        torch.manual_seed(cfg.training.seed)  # identical initial weights on every rank
        self.shape = shape_of(cfg)

        uri = cfg.checkpoint.uri or str(self.run_dir / "checkpoints")
        self.checkpoints = CheckpointManager.from_config(
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
        self.faults = FaultInjector(
            parse_faults(runtime.fault_spec), dist_info.rank, runtime.restart_count
        )
        # Uploads run in a worker thread with collectives of their own (a collective call).
        self.saver = AsyncCheckpointer(
            self.checkpoints,
            collectives=group_collectives(),
            on_done=self._checkpoint_done,
            before_commit=self.faults.stall_commit,
        )
        self.restored_step: int | None = None  # the checkpoint last loaded (resume or restore)
        resume = self._resume_point()
        self.resumed_from = resume.info if resume else None

        tokenizer_cls = registry.TOKENIZERS.get(cfg.data.tokenizer.kind)
        tokenizer = tokenizer_cls.load(resume[1] / TOKENIZER_FILE) if resume else None
        try:
            self.dataset: DatasetAdapter = registry.DATASET_ADAPTERS.get(cfg.data.adapter)(
                cfg.data, seed=cfg.training.seed, tokenizer=tokenizer
            )
        except (OSError, ValueError) as err:  # unreadable corpus, splits too small, ...
            raise ConfigError(cfg.data.path, [str(err)]) from None
        self.adapter: ModelAdapter = registry.MODEL_ADAPTERS.get(cfg.model.adapter)(
            cfg.model, self.dataset.vocab_size
        )
        model = self.adapter.build_model().to(dist_info.device)
        self.raw_model = model
        if cfg.training.compile:
            model = torch.compile(model)
        if dist_info.distributed:
            device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        self.model = model
        self.loss_fn = registry.LOSSES.get(cfg.optimization.loss.name)(cfg.optimization.loss)
        self.optimizer = build_optimizer(self.raw_model, cfg.optimization.optimizer)
        self.total_steps = self._total_steps()
        self.scheduler = build_scheduler(
            self.optimizer, cfg.optimization.scheduler, self.total_steps
        )
        self.strategy: TrainingStrategy = registry.STRATEGIES.get(cfg.training.strategy)(
            model=self.model,
            adapter=self.adapter,
            dataset=self.dataset,
            loss_fn=self.loss_fn,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            cfg=cfg.optimization,
            precision=cfg.training.precision,
            dist_info=dist_info,
        )

        self.guard = NanGuard(cfg.recovery)
        self.health = HealthTracker(cfg.recovery.good_after_steps)
        self.step = 0
        self.loss_ema: float | None = None
        self.best_val = math.inf
        self.skip_ranges = list(runtime.skip_ranges)
        self.state = TrainerState(
            step=0, epoch=0.0, total_steps=self.total_steps, metrics={}, run_dir=self.run_dir
        )
        self.counters = {"checkpoints": 0, "nan_events": 0, "restores": 0}
        self.last_checkpoint: CheckpointInfo | None = None
        self._stop_signal: int | None = None

        main = dist_info.is_main
        self.log = MetricsLogger(self.run_dir, enabled=main and cfg.metrics.jsonl)
        self.metrics = TrainerMetrics()
        self.reporter = ProgressReporter(
            total_steps=self.total_steps, enabled=main and cfg.metrics.console
        )
        self.server: MetricsServer | None = None
        callbacks = build_callbacks(cfg.extensions.callbacks)
        early = cfg.training.early_stopping
        if early.patience is not None:
            callbacks.append(EarlyStopping(early.patience, early.metric, early.min_delta))
        self.callbacks = CallbackList(callbacks)

        if resume:
            self._load(*resume, restore_counters=True)
            if self.checkpoints.rolled_back and runtime.lr_scale != 1.0:
                # A rollback recipe (PaLM/OPT): lower the LR once, from the rollback point on.
                scale_lr(self.scheduler, runtime.lr_scale)
        # Serve /progress only once resumed: a step of 0 while the checkpoint loads
        # would tell the operator that the job went backwards.
        if main and cfg.metrics.port:
            self.server = MetricsServer(cfg.metrics.port, self.metrics, self.progress).start()

    # ------------------------------------------------------------------ the loop

    def train(self) -> RunSummary:
        start, tokens_seen = time.monotonic(), 0
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.metrics.total_steps.set(self.total_steps)
        self.callbacks.on_train_begin(self.state)
        self.callbacks.on_epoch_begin(self.state)
        last_loss = math.nan
        step_start = time.monotonic()
        while self.step < self.total_steps and not self.state.should_stop:
            if self._stop_signal is not None:
                self._preempt()
            self.faults.maybe_fail(self.step)
            if self._skipped(self.step):
                self.strategy.discard_update()
                self.metrics.steps_skipped.inc()
                self.step += 1
                continue

            self.callbacks.on_batch_begin(self.state)
            out = self.strategy.forward_backward(
                self.step, poison=self.faults.loss_fault(self.step)
            )
            verdict = self.guard.check(self.step, out.loss, out.grad_norm)
            if verdict is Verdict.RESTORE:
                self._restore_last_good()
                continue
            if verdict is Verdict.ABORT:
                raise NaNUnrecoverable(self.step, self._all_skip_ranges())
            if verdict is Verdict.OK:
                self.strategy.apply_update()
                self._became_healthy(self.step + 1)
            else:
                self.strategy.discard_update()
                self._record_nan("skip")
            self.step += 1

            now = time.monotonic()
            tokens_seen += out.tokens
            self._report_step(out, verdict, now - step_start)
            step_start = now
            last_loss = out.loss
            self.callbacks.on_batch_end(self.state)
            if self.step % self.cfg.training.eval_steps == 0:
                self.validate()
            if self.step % self.cfg.checkpoint.interval_steps == 0:
                self.save_checkpoint()
            self._maybe_end_epoch()

        if self.state.metrics.get("val_step") != self.step:
            self.validate()
        test_loss = self.strategy.evaluate("test", self.cfg.training.eval_batches)
        self.log.test(step=self.step, test_loss=test_loss)
        self._flush_checkpoints()
        if self.last_checkpoint is None or self.last_checkpoint.step != self.step:
            self.save_checkpoint()
            self._flush_checkpoints()
            if self.last_checkpoint is None or self.last_checkpoint.step != self.step:
                raise CheckpointError(f"the final checkpoint at step {self.step} did not commit")
        self.callbacks.on_epoch_end(self.state)
        self.callbacks.on_train_end(self.state)
        seconds = time.monotonic() - start
        return RunSummary(
            steps=self.step,
            total_steps=self.total_steps,
            seconds=seconds,
            train_loss=last_loss,
            val_loss=self.state.metrics.get("val_loss", math.nan),
            test_loss=test_loss,
            tokens_per_second=tokens_seen / seconds if seconds > 0 else 0.0,
            checkpoints=self.counters["checkpoints"],
            nan_events=self.counters["nan_events"],
            restores=self.counters["restores"],
            resumed_from=self.resumed_from.step if self.resumed_from else None,
            run_dir=self.run_dir,
            last_checkpoint=self.last_checkpoint.uri if self.last_checkpoint else None,
        )

    # ------------------------------------------------------------------ verbs

    def validate(self) -> float:
        self.callbacks.on_validation_begin(self.state)
        val_loss = self.strategy.evaluate("val", self.cfg.training.eval_batches)
        self.state.metrics.update(
            val_loss=val_loss, val_perplexity=perplexity(val_loss), val_step=self.step
        )
        self.best_val = min(self.best_val, val_loss)
        self.metrics.update_val(val_loss)
        self.log.val(step=self.step, val_loss=val_loss)
        self.reporter.validation(self.step, val_loss)
        self.callbacks.on_validation_end(self.state)
        return val_loss

    def save_checkpoint(self) -> CheckpointInfo:
        """Copy the state into RAM now (the step boundary keeps it consistent) and have
        it written, uploaded and committed: in the background with
        checkpoint.async_upload, else before returning. The info returned is committed
        only in the second case."""
        self.callbacks.on_checkpoint_begin(self.state)
        started = time.monotonic()
        self._checkpoint_results(self.saver.wait())  # one snapshot in flight per rank
        snapshot = self.saver.snapshot(
            self.raw_model, self.optimizer, self._extra_state(), self.dist.rank
        )
        staging = self.scratch / f"save-{self.step}"
        staging.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            self.dataset.tokenizer.save(staging / TOKENIZER_FILE)
        metrics = {k: v for k, v in self.state.metrics.items() if k.startswith("val_")}
        # The worker writes the snapshot into staging, uploads, commits, deletes staging;
        # the manifest records the config's shape, which a resume must match.
        meta = {"config": self.shape}
        self.saver.submit(self.step, staging, metrics, snapshot=snapshot, meta=meta)
        if not self.cfg.checkpoint.async_upload:
            self._checkpoint_results(self.saver.wait())
        info = self.last_checkpoint
        if info is None or info.step != self.step:
            term = self.checkpoints.term
            uri = self.checkpoints.storage.uri(checkpoint_dir(self.step, term))
            info = CheckpointInfo(self.step, term, uri, False)
        for good_step in self.health.checkpoint_saved(self.step):
            self._mark_good(good_step)  # deferred to the commit while uploading
        self.metrics.checkpoint_stalled(time.monotonic() - started)
        self.callbacks.on_checkpoint_end(self.state, checkpoint=info)
        return info

    def _checkpoint_done(self, result: SaveResult) -> None:
        # The upload worker's hook: only thread-safe updates (an attribute, metrics).
        if result.info is not None:
            self.last_checkpoint = result.info
            self.metrics.checkpoint_committed(result.step, result.upload_seconds)
        else:
            self.metrics.checkpoint_failed()

    def _checkpoint_results(self, results: list[SaveResult]) -> None:
        """Count and log the saves that ended; a fenced one stops this process."""
        for result in results:
            if result.fenced:
                self.log.event("checkpoint_fenced", step=result.step, error=result.error)
                raise Fenced(f"{result.error}: this attempt was replaced and stops here")
            if result.info is not None:
                self.counters["checkpoints"] += 1
                self.log.event(
                    "checkpoint",
                    step=result.step,
                    uri=result.info.uri,
                    seconds=result.upload_seconds,
                )
            else:
                self.log.event("checkpoint_failed", step=result.step, error=result.error)
                self.reporter.message(f"checkpoint at step {result.step} did not commit")

    def _flush_checkpoints(self) -> None:
        """Wait for the upload in flight (before exit, restore, or the final save)."""
        self._checkpoint_results(self.saver.wait())

    def progress(self) -> dict[str, Any]:
        """The JSON the operator reads from rank 0's /progress endpoint."""
        ckpt = self.last_checkpoint
        return {
            "step": self.step,
            "totalSteps": self.total_steps,
            "epoch": round(self.state.epoch, 4),
            "loss": self.state.metrics.get("loss"),
            "valLoss": self.state.metrics.get("val_loss"),
            "tokensPerSecond": self.state.metrics.get("tokens_per_second"),
            "lastCheckpoint": {"step": ckpt.step, "uri": ckpt.uri, "time": ckpt.time}
            if ckpt
            else None,
            "resumedFrom": self.resumed_from.uri if self.resumed_from else None,
            "restarts": self.runtime.restart_count,
        }

    def close(self) -> None:
        self.saver.close()  # an upload in flight still reads from scratch
        self._checkpoint_results(self.saver.finished())
        if self.server:
            self.server.stop()
        self.reporter.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    def _total_steps(self) -> int:
        loop = self.cfg.training
        if loop.max_steps is not None:
            return loop.max_steps
        per_epoch = self.dataset.steps_per_epoch(
            self.dist.world_size, self.cfg.optimization.accumulation_steps
        )
        return max(1, math.ceil((loop.num_epochs or 1.0) * per_epoch))

    def _resume_point(self) -> LoadedCheckpoint | None:
        """The checkpoint this attempt starts from (None: step 0), chosen by the manager
        from what the store holds and what the operator asked (env)."""
        rt = self.runtime
        request = ResumeRequest(
            # resume: false starts a new timeline once, on the job's first attempt.
            fresh=not self.cfg.checkpoint.resume and rt.restart_count == 0,
            rollback_before=rt.rollback_before,
            rollback_id=rt.rollback_id,
        )
        return self.checkpoints.start(request, self.scratch / "resume", check=self._check_shape)

    def _check_shape(self, info: CheckpointInfo) -> None:
        saved = info.manifest.meta.get("config") if info.manifest else None
        changed = changed_fields(saved, self.shape)
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

    def _load(self, info: CheckpointInfo, path: Path, *, restore_counters: bool) -> None:
        extra = read_state(path, self.raw_model, self.optimizer, self.dist.rank)
        self.step = int(extra["step"])
        self.scheduler.load_state_dict(extra["scheduler"])
        self.strategy.scaler.load_state_dict(extra["scaler"])
        self.loss_ema = extra.get("loss_ema")
        self.best_val = extra.get("best_val", math.inf)
        self.state.metrics.update(extra.get("metrics", {}))
        if restore_counters:  # a fresh process continues the budgets it had
            self.guard.load_state_dict(extra.get("guard", {}))
            for r in extra.get("skip_ranges", []):
                if tuple(r) not in self.skip_ranges:
                    self.skip_ranges.append((int(r[0]), int(r[1])))
        self.last_checkpoint = info
        self.restored_step = info.step
        if not info.good:  # it still has to prove itself with healthy steps
            self.health.checkpoint_saved(info.step)
        self.state.step = self.step
        self.state.epoch = self._epoch()
        self.log.event("resume", step=self.step, uri=info.uri)
        self.reporter.message(f"resumed from {info.uri} at step {self.step}")

    def _restore_last_good(self) -> None:
        """Tier-1 rollback: reload the newest proven checkpoint and skip the bad batches."""
        self._record_nan("restore")
        self.counters["restores"] += 1
        self.optimizer.zero_grad(set_to_none=True)  # the bad step's gradients must not leak
        local = self.scratch / f"restore-{self.counters['restores']}"
        self._flush_checkpoints()  # the newest checkpoint may still be uploading
        point = self.checkpoints.restore(local)  # forks a new term from it
        if point is None:
            raise NaNUnrecoverable(self.step, self._all_skip_ranges())
        bad = self.guard.batches_to_skip()
        self._load(*point, restore_counters=False)
        self.health.discard_after(self.step)
        self.skip_ranges.extend(r for r in bad if r not in self.skip_ranges)
        if self.cfg.recovery.lr_scale != 1.0:
            scale_lr(self.scheduler, self.cfg.recovery.lr_scale)
        self.metrics.rollbacks.inc()
        self.log.event(
            "restore",
            step=self.step,
            uri=point[0].uri,
            skip=format_step_ranges(self.skip_ranges),
        )

    def _all_skip_ranges(self) -> list[tuple[int, int]]:
        return sorted({*self.skip_ranges, *self.guard.batches_to_skip()})

    def _skipped(self, step: int) -> bool:
        return any(lo <= step <= hi for lo, hi in self.skip_ranges)

    def _became_healthy(self, steps_done: int) -> None:
        for good_step in self.health.observe_healthy(steps_done):
            self._mark_good(good_step)

    def _mark_good(self, step: int) -> None:
        if self.dist.is_main:
            self.saver.mark_good(step)
        self.metrics.checkpoint_good(step)

    def _record_nan(self, action: str) -> None:
        self.counters["nan_events"] += 1
        self.metrics.nan_event(action)
        self.log.event(f"nan_{action}", step=self.step)

    def _report_step(self, out: StepOutput, verdict: Verdict, seconds: float) -> None:
        if verdict is Verdict.OK:
            decay = self.cfg.training.loss_ema_decay
            ema = self.loss_ema
            self.loss_ema = out.loss if ema is None else decay * ema + (1 - decay) * out.loss
        lr = self.optimizer.param_groups[0]["lr"]
        self.state.step, self.state.epoch = self.step, self._epoch()
        record: dict[str, Any] = {
            "step": self.step,
            "epoch": round(self.state.epoch, 4),
            "loss": out.loss,
            "loss_ema": self.loss_ema,
            "lr": lr,
            "grad_norm": out.grad_norm,
            "tokens_per_second": out.tokens / seconds if seconds > 0 else 0.0,
            "samples_per_second": out.samples / seconds if seconds > 0 else 0.0,
        }
        self.state.metrics.update(
            loss=out.loss, tokens_per_second=record["tokens_per_second"], lr=lr
        )
        self.metrics.observe_step(**record)
        if self.step % self.cfg.metrics.log_steps == 0 or self.step == self.total_steps:
            self.log.train(**record)
            self.reporter.step(record)

    def _epoch(self) -> float:
        return float(
            self.dataset.epoch_at(
                self.step,
                world_size=self.dist.world_size,
                accumulation_steps=self.cfg.optimization.accumulation_steps,
            )
        )

    def _maybe_end_epoch(self) -> None:
        if int(self._epoch()) > int(self.state.epoch - 1e-9) and self.step < self.total_steps:
            self.callbacks.on_epoch_end(self.state)
            self.callbacks.on_epoch_begin(self.state)

    def _extra_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self._epoch(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.strategy.scaler.state_dict(),
            "loss_ema": self.loss_ema,
            "best_val": self.best_val,
            "metrics": {k: v for k, v in self.state.metrics.items() if isinstance(v, float)},
            "guard": self.guard.state_dict(),
            "skip_ranges": [list(r) for r in self.skip_ranges],
        }

    def _on_sigterm(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = signum  # act at the next step boundary, where state is consistent

    def _preempt(self) -> None:
        self.reporter.message(f"SIGTERM at step {self.step}: saving a checkpoint before exit")
        self._flush_checkpoints()
        if self.last_checkpoint is None or self.last_checkpoint.step != self.step:
            self.save_checkpoint()
            self._flush_checkpoints()
        raise Preempted(f"preempted at step {self.step}")
