"""The trainer's Prometheus metrics (``kubetrain_`` prefix), in a registry of their own.

A private ``CollectorRegistry`` keeps the process collectors and anything
else in the default registry out of the scrape, and lets tests create many
instances. Every series carries the TrainingJob's name and namespace when the
operator set them (KUBETRAIN_JOB_NAME / KUBETRAIN_NAMESPACE). The label is
``trainingjob``, not ``job``: Prometheus sets ``job`` on every scraped
target itself and would rename ours to ``exported_job``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kubetrain_core.contract import Env
from kubetrain_trainer.metrics.records import EvalRecord, Sink, StepRecord

PREFIX = "kubetrain_"
LABEL_JOB = "trainingjob"
LABEL_NAMESPACE = "namespace"
NAN_ACTIONS = ("skip", "restore", "abort")

# Checkpoint saves range from well under a second (tiny models, local disk)
# to minutes (large models to S3).
_SAVE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def job_labels(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Constant labels from the operator's env; only those that are set."""
    env = os.environ if environ is None else environ
    labels = {LABEL_JOB: env.get(Env.JOB_NAME, ""), LABEL_NAMESPACE: env.get(Env.NAMESPACE, "")}
    return {k: v for k, v in labels.items() if v}


class TrainerMetrics(Sink):
    """Gauges, counters and a histogram describing one trainer process (rank 0 serves them)."""

    every_step = True  # a scrape sees the latest step, not the latest logged one

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = dict(job_labels() if labels is None else labels)
        names = list(self.labels)

        def gauge(name: str, doc: str) -> Gauge:
            metric = Gauge(PREFIX + name, doc, names, registry=self.registry)
            return metric.labels(**self.labels) if names else metric

        self.step_gauge = gauge("step", "Optimizer steps completed.")
        self.total_steps = gauge("total_steps", "Optimizer steps the run will take.")
        self.world_size = gauge(
            "world_size", "Processes training now (an elastic gang's present size)."
        )
        self.epoch = gauge("epoch", "Current pass over the training split.")
        self.stage = gauge("stage", "Stage of a staged strategy (progressive: the stack grown).")
        self.active_stacks = gauge("active_stacks", "Stacks the model runs (strategy progressive).")
        self.loss = gauge("loss", "Training loss of the last logged step.")
        self.loss_ema = gauge("loss_ema", "Exponential moving average of the training loss.")
        self.val_loss = gauge("val_loss", "Loss of the last validation.")
        self.eval_metric = Gauge(
            PREFIX + "eval_metric",
            "Score of the last validation's generated text (evaluation.metrics), by name.",
            [*names, "name"],
            registry=self.registry,
        )
        self.learning_rate = gauge("learning_rate", "Learning rate of the last step.")
        self.tokens_per_second = gauge("tokens_per_second", "Training throughput, all ranks.")
        self.samples_per_second = gauge("samples_per_second", "Sequences per second, all ranks.")
        self.grad_norm = gauge("grad_norm", "Global gradient norm before clipping.")
        self.last_checkpoint_step = gauge(
            "last_checkpoint_step", "Step of the newest committed checkpoint."
        )
        self.last_checkpoint_timestamp = gauge(
            "last_checkpoint_timestamp_seconds", "Unix time the newest checkpoint was committed."
        )
        self.good_checkpoint_step = gauge(
            "good_checkpoint_step",
            "Step of the newest checkpoint followed by enough healthy steps to roll back to.",
        )

        histogram = Histogram(
            PREFIX + "checkpoint_save_seconds",
            "Time the training loop was blocked by one checkpoint (the stall).",
            names,
            registry=self.registry,
            buckets=_SAVE_BUCKETS,
        )
        self.checkpoint_save_seconds = histogram.labels(**self.labels) if names else histogram
        upload = Histogram(
            PREFIX + "checkpoint_upload_seconds",
            "Wall time to upload and commit one checkpoint (in the background when async).",
            names,
            registry=self.registry,
            buckets=_SAVE_BUCKETS,
        )
        self.checkpoint_upload_seconds = upload.labels(**self.labels) if names else upload

        nan_events = Counter(
            PREFIX + "nan_events",
            "Bad steps (non-finite or spiking loss/grad norm) by the action taken.",
            [*names, "action"],
            registry=self.registry,
        )
        # Children for every action up front, so each series exists at 0 from the start
        # (rate() and alerts see the first increment).
        self.nan_events = {a: nan_events.labels(**self.labels, action=a) for a in NAN_ACTIONS}

        def counter(name: str, doc: str) -> Counter:
            metric = Counter(PREFIX + name, doc, names, registry=self.registry)
            return metric.labels(**self.labels) if names else metric

        self.rollbacks = counter("rollbacks", "In-process restores of the last good state.")
        self.checkpoint_failures = counter(
            "checkpoint_failures", "Checkpoint saves that did not commit (upload or commit failed)."
        )
        self.steps_skipped = counter(
            "steps_skipped", "Steps whose batch or update was skipped (NaN guard, skip ranges)."
        )

    # The loop's verbs; each sets what one happening changes.

    def step(self, record: StepRecord) -> None:
        self.step_gauge.set(record.step)
        self.epoch.set(record.epoch)
        if record.stage is not None:
            self.stage.set(record.stage)
        if record.active_stacks is not None:
            self.active_stacks.set(record.active_stacks)
        self.loss.set(record.loss)
        if record.loss_ema is not None:  # None until the first healthy step
            self.loss_ema.set(record.loss_ema)
        self.learning_rate.set(record.lr)
        if record.grad_norm is not None:
            self.grad_norm.set(record.grad_norm)
        self.tokens_per_second.set(record.tokens_per_second)
        self.samples_per_second.set(record.samples_per_second)

    def evaluation(self, record: EvalRecord) -> None:
        if record.split == "val":
            self.val_loss.set(record.loss)
            for name, value in record.scores.items():
                self.eval_metric.labels(**self.labels, name=name).set(value)

    def checkpoint_stalled(self, seconds: float) -> None:
        """The loop was blocked `seconds` by a checkpoint (snapshot, waiting, and the
        upload itself when uploads are synchronous)."""
        self.checkpoint_save_seconds.observe(seconds)

    def checkpoint_committed(
        self, step: int, upload_seconds: float, timestamp: float | None = None
    ) -> None:
        self.last_checkpoint_step.set(step)
        self.last_checkpoint_timestamp.set(time.time() if timestamp is None else timestamp)
        self.checkpoint_upload_seconds.observe(upload_seconds)

    def checkpoint_failed(self) -> None:
        self.checkpoint_failures.inc()

    def checkpoint_good(self, step: int) -> None:
        self.good_checkpoint_step.set(step)

    def nan_event(self, action: str) -> None:
        """Count a bad step by what was done about it: skip, restore or abort.

        Only ``nan_events_total``: rollbacks and skipped steps are counted where they
        happen (``rollbacks.inc()``, ``steps_skipped.inc()``), so nothing is counted twice.
        """
        if action not in self.nan_events:
            raise ValueError(f"unknown NaN action {action!r}; expected one of {NAN_ACTIONS}")
        self.nan_events[action].inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
