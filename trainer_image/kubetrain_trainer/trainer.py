"""The training loop and the verbs it calls; components come from `build_components`,
checkpoints are the Checkpointer's, numbers go to the sinks as one record per step.

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
from typing import Any, Literal

from kubetrain_core import registry
from kubetrain_core.config import TrainingConfig
from kubetrain_core.contract import format_step_ranges, parse_faults
from kubetrain_trainer.callbacks import TrainerState
from kubetrain_trainer.checkpoint import CheckpointError
from kubetrain_trainer.checkpointer import Checkpointer
from kubetrain_trainer.components import build_components
from kubetrain_trainer.distributed import DistInfo
from kubetrain_trainer.evaluation.generation import build_generation
from kubetrain_trainer.export import write_export
from kubetrain_trainer.faults import FaultInjector
from kubetrain_trainer.metrics import (
    EvalRecord,
    MetricsServer,
    StepRecord,
    TrainerMetrics,
    build_sinks,
)
from kubetrain_trainer.metrics.stages import StageTally
from kubetrain_trainer.models.lora import parameter_counts
from kubetrain_trainer.optimization import current_lr, scale_lr
from kubetrain_trainer.parallel import full_state_dict, is_sharded
from kubetrain_trainer.recovery import NanGuard, Verdict, step_in_ranges
from kubetrain_trainer.runtime import Runtime
from kubetrain_trainer.strategies import StepOutput


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
    export: str | None = None  # where the loadable model went (rank 0)
    parameters: int = 0
    trainable_parameters: int = 0  # all of them, or the LoRA adapters'
    stages: list[dict[str, Any]] | None = None  # a staged strategy's figures per stage

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "run_dir": str(self.run_dir)}


class Trainer:
    """Builds the components a TrainingConfig names, resumes, and runs the loop."""

    def __init__(self, cfg: TrainingConfig, runtime: Runtime, dist_info: DistInfo) -> None:
        self.cfg, self.runtime, self.dist = cfg, runtime, dist_info
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"kubetrain-rank{dist_info.rank}-"))
        self.metrics = TrainerMetrics()
        self.metrics.world_size.set(dist_info.world_size)
        self.faults = FaultInjector(
            parse_faults(runtime.fault_spec), dist_info.rank, runtime.earlier_starts
        )
        self.checkpoints = Checkpointer(
            cfg, runtime, dist_info, self.scratch, faults=self.faults, metrics=self.metrics
        )
        resume = self.checkpoints.resume_point()
        saved = self.checkpoints.tokenizer_file(resume)
        tokenizer = (
            registry.TOKENIZERS.get(cfg.data.tokenizer.resolved_kind).load(saved) if saved else None
        )
        self.parts = parts = build_components(cfg, dist_info, tokenizer)
        self.total_steps = parts.total_steps
        self.trainable_parameters, self.parameters = parameter_counts(parts.raw_model)
        self.guard = NanGuard(cfg.recovery)
        self.step = 0
        self.loss_ema: float | None = None
        self.best_val = math.inf
        self.skip_ranges = list(runtime.skip_ranges)
        self.state = TrainerState(
            total_steps=self.total_steps,
            run_dir=self.run_dir,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
        )
        self.counters = {"nan_events": 0, "restores": 0}
        self._stop_signal: int | None = None
        self.sinks = build_sinks(
            cfg.metrics,
            run_dir=self.run_dir,
            is_main=dist_info.is_main,
            total_steps=self.total_steps,
            start_step=resume.info.step if resume else 0,
            prometheus=self.metrics,
            job_name=runtime.job_name,
            config=cfg.model_dump(mode="json"),
        )
        self.stage_tally = StageTally()
        self.sinks.sinks.append(self.stage_tally)
        self.generation = build_generation(
            cfg,
            dataset=parts.dataset,
            adapter=parts.adapter,
            dist_info=dist_info,
            synced=is_sharded(parts.model),
            run_dir=self.run_dir,
        )
        states = {"loop": self, "guard": self.guard, **parts.stateful()}
        self.checkpoints.attach(
            parts.raw_model, parts.optimizer, states, parts.dataset.tokenizer, self.sinks
        )
        if resume:
            self.checkpoints.load(resume, resuming=True)
            self.sinks.event("resume", self.step, uri=resume.info.uri)
            self.sinks.message(f"resumed from {resume.info.uri} at step {self.step}")
            if self.checkpoints.rolled_back and runtime.lr_scale != 1.0:
                # A rollback recipe (PaLM/OPT): lower the LR once, from the rollback point on.
                scale_lr(parts.scheduler, runtime.lr_scale)
        # Serve /progress only once resumed: a step of 0 while the checkpoint loads
        # would tell the operator that the job went backwards.
        self.server: MetricsServer | None = None
        if dist_info.is_main and cfg.metrics.port:
            self.server = MetricsServer(cfg.metrics.port, self.metrics, self.progress).start()

    # ------------------------------------------------------------------ the loop

    def train(self) -> RunSummary:
        start, tokens_seen, last_loss = time.monotonic(), 0, math.nan
        parts, callbacks = self.parts, self.parts.callbacks
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.metrics.total_steps.set(self.total_steps)
        self.sinks.event(
            "start",
            self.step,
            parameters=self.parameters,
            trainable_parameters=self.trainable_parameters,
        )
        callbacks.on_train_begin(self.state)
        callbacks.on_epoch_begin(self.state)
        step_start = time.monotonic()
        while self.step < self.total_steps and not self.state.should_stop:
            self.faults.maybe_fail(self.step)
            if step_in_ranges(self.step, self.skip_ranges):
                parts.strategy.discard_update()
                self.metrics.steps_skipped.inc()
                self.step += 1
                continue

            callbacks.on_batch_begin(self.state)
            out = parts.strategy.forward_backward(
                self.step,
                poison=self.faults.loss_fault(self.step),
                stop=self._stop_signal is not None,
            )
            verdict = self.guard.check(self.step, out.loss, out.grad_norm)
            if verdict is Verdict.RESTORE:
                self._restore_last_good()
                continue
            if verdict is Verdict.ABORT:
                raise NaNUnrecoverable(self.step, self._all_skip_ranges())
            if verdict is Verdict.OK:
                parts.strategy.apply_update()
                self.checkpoints.healthy(self.step + 1)
            else:
                parts.strategy.discard_update()
                self._record_nan("skip")
            self.step += 1

            now = time.monotonic()
            tokens_seen += out.tokens
            self._report_step(out, verdict, now - step_start)
            step_start, last_loss = now, out.loss
            callbacks.on_batch_end(self.state)
            if out.stop:  # on every rank after this same step: the flag rode its all-reduce
                self._preempt()
            if self.step % self.cfg.training.eval_steps == 0:
                self.validate()
            if self.step % self.cfg.checkpoint.interval_steps == 0:
                self.save_checkpoint()
            self._maybe_end_epoch()

        if self.state.metrics.get("val_step") != self.step:
            self.validate()
        test_loss = self.evaluate("test").loss
        self.checkpoints.ensure_saved(self.step)  # the final checkpoint, committed
        exported = self.export()
        callbacks.on_epoch_end(self.state)
        callbacks.on_train_end(self.state)
        self.sinks.event(
            "finished", self.step, steps=self.step, val_loss=self.state.metrics.get("val_loss")
        )
        seconds = time.monotonic() - start
        last = self.checkpoints.last
        return RunSummary(
            steps=self.step,
            total_steps=self.total_steps,
            seconds=seconds,
            train_loss=last_loss,
            val_loss=self.state.metrics.get("val_loss", math.nan),
            test_loss=test_loss,
            tokens_per_second=tokens_seen / seconds if seconds > 0 else 0.0,
            checkpoints=self.checkpoints.committed,
            nan_events=self.counters["nan_events"],
            restores=self.counters["restores"],
            resumed_from=resumed.step if (resumed := self.checkpoints.resumed_from) else None,
            run_dir=self.run_dir,
            last_checkpoint=last.uri if last else None,
            export=exported,
            parameters=self.parameters,
            trainable_parameters=self.trainable_parameters,
            stages=self.stage_tally.rows() or None,
        )

    # ------------------------------------------------------------------ verbs

    def evaluate(self, split: Literal["val", "test"]) -> EvalRecord:
        """The mean loss over `training.eval_batches` batches of a split and, for val, the
        scores of generated answers (evaluation.metrics), to the sinks."""
        parts = self.parts
        loss = parts.strategy.evaluate(split, self.cfg.training.eval_batches)
        scores = {}
        if split == "val" and self.generation is not None:
            scores = self.generation.evaluate(parts.raw_model, self.step, parts.strategy.autocast)
        record = EvalRecord(split, self.step, loss, scores)
        self.sinks.evaluation(record)
        return record

    def validate(self) -> float:
        self.parts.callbacks.on_validation_begin(self.state)
        record = self.evaluate("val")
        self.state.metrics.update(
            {k: v for k, v in record.fields().items() if k != "step"}, val_step=self.step
        )
        self.best_val = min(self.best_val, record.loss)
        self.parts.callbacks.on_validation_end(self.state)
        return record.loss

    def export(self) -> str | None:
        """Rank 0 writes the trained model as a loadable directory (export.py) and
        copies it into the checkpoint store; returns where it is. Every rank calls it:
        a sharded model's weights are gathered first."""
        parts = self.parts
        whole = full_state_dict(parts.raw_model)  # a collective
        if not self.dist.is_main:
            return None
        whole = parts.strategy.export_weights(parts.raw_model, self.cfg.training, whole)
        directory = write_export(
            parts.raw_model, parts.dataset.tokenizer, self.cfg, self.run_dir / "export", whole
        )
        parts.strategy.export_parts(whole or parts.raw_model.state_dict(), directory)
        return self.checkpoints.publish(directory) or str(directory)

    def save_checkpoint(self) -> None:
        self.parts.callbacks.on_checkpoint_begin(self.state)
        metrics = {k: v for k, v in self.state.metrics.items() if k.startswith("val_")}
        info = self.checkpoints.save(self.step, metrics)
        self.parts.callbacks.on_checkpoint_end(self.state, checkpoint=info)

    def progress(self) -> dict[str, Any]:
        """The JSON the operator reads from rank 0's /progress endpoint."""
        ckpt, resumed = self.checkpoints.last, self.checkpoints.resumed_from
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
            "resumedFrom": resumed.uri if resumed else None,
            "restarts": self.runtime.restart_count,
            "workerRestarts": self.runtime.worker_restarts,
            "worldSize": self.dist.world_size,
            "globalBatchSize": self.cfg.global_batch(self.dist.world_size),
        }

    def close(self) -> None:
        self.checkpoints.close()
        if self.server:
            self.server.stop()
        self.sinks.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ---- the loop's own state in a checkpoint (the Checkpointer's "loop") ----------

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self._epoch(),
            "loss_ema": self.loss_ema,
            "best_val": self.best_val,
            "metrics": {k: v for k, v in self.state.metrics.items() if isinstance(v, float)},
            "skip_ranges": [list(r) for r in self.skip_ranges],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.loss_ema = state.get("loss_ema")
        self.best_val = state.get("best_val", math.inf)
        self.state.metrics.update(state.get("metrics", {}))
        for lo, hi in state.get("skip_ranges", []):
            if (int(lo), int(hi)) not in self.skip_ranges:
                self.skip_ranges.append((int(lo), int(hi)))
        self.state.step, self.state.epoch = self.step, self._epoch()

    # ------------------------------------------------------------------ helpers

    def _restore_last_good(self) -> None:
        """Tier-1 rollback: reload the newest proven checkpoint and skip the bad batches."""
        self._record_nan("restore")
        self.counters["restores"] += 1
        self.parts.optimizer.zero_grad(set_to_none=True)  # the bad step's gradients must not leak
        bad = self.guard.batches_to_skip()
        self.parts.strategy.before_restore()
        point = self.checkpoints.restore()
        if point is None:
            raise NaNUnrecoverable(self.step, self._all_skip_ranges())
        self.skip_ranges.extend(r for r in bad if r not in self.skip_ranges)
        if self.cfg.recovery.lr_scale_percent != 100:
            scale_lr(self.parts.scheduler, self.cfg.recovery.lr_scale_percent / 100)
        self.metrics.rollbacks.inc()
        skip = format_step_ranges(self.skip_ranges)
        self.sinks.event("restore", self.step, uri=point.info.uri, skip=skip)

    def _all_skip_ranges(self) -> list[tuple[int, int]]:
        return sorted({*self.skip_ranges, *self.guard.batches_to_skip()})

    def _record_nan(self, action: str) -> None:
        self.counters["nan_events"] += 1
        self.metrics.nan_event(action)
        self.sinks.event(f"nan_{action}", self.step)

    def _report_step(self, out: StepOutput, verdict: Verdict, seconds: float) -> None:
        if verdict is Verdict.OK:
            decay, ema = self.cfg.training.loss_ema_decay, self.loss_ema
            self.loss_ema = out.loss if ema is None else decay * ema + (1 - decay) * out.loss
        self.state.step, self.state.epoch = self.step, self._epoch()
        record = StepRecord(
            step=self.step,
            epoch=round(self.state.epoch, 4),
            loss=out.loss,
            loss_ema=self.loss_ema,
            lr=current_lr(self.parts.scheduler),
            grad_norm=out.grad_norm,
            tokens_per_second=out.tokens / seconds if seconds > 0 else 0.0,
            samples_per_second=out.samples / seconds if seconds > 0 else 0.0,
            **self.parts.strategy.position(self.step - 1),
        )
        self.state.metrics.update(
            loss=record.loss, tokens_per_second=record.tokens_per_second, lr=record.lr
        )
        self.sinks.step(record)

    def _epoch(self) -> float:
        return float(
            self.parts.dataset.epoch_at(
                self.step,
                world_size=self.dist.world_size,
                accumulation_steps=self.cfg.optimization.accumulation_steps,
            )
        )

    def _maybe_end_epoch(self) -> None:
        if int(self._epoch()) > int(self.state.epoch - 1e-9) and self.step < self.total_steps:
            self.parts.callbacks.on_epoch_end(self.state)
            self.parts.callbacks.on_epoch_begin(self.state)

    def _on_sigterm(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = signum  # told to every rank by the next step's all-reduce

    def _preempt(self) -> None:
        self.sinks.message(f"SIGTERM at step {self.step}: saving a checkpoint before exit")
        try:
            self.checkpoints.ensure_saved(self.step)
        except CheckpointError as err:  # preempted all the same: the last commit stands
            self.sinks.message(str(err))
        raise Preempted(f"preempted at step {self.step}")
