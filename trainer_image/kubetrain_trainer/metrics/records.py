"""One record per step (and per evaluation), handed to every sink the same way.

The sinks are metrics.jsonl (logger.py), the console (console.py), Prometheus
(prometheus.py) and TensorBoard (tensorboard.py); a tracker to come is one more
`Sink`. The loop builds a record once and calls `Sinks.step(record)`; which steps a
sink takes is its own `every_step`: gauges and the progress bar take all of them,
files every `metrics.log_steps` (and the last).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Self


def perplexity(loss: float) -> float:
    """exp(loss), infinite instead of an OverflowError for huge losses."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class StepRecord:
    """What one optimizer step did; `step` counts the steps completed (1-based)."""

    step: int
    epoch: float
    loss: float
    loss_ema: float | None  # None until the first healthy step
    lr: float
    grad_norm: float | None
    tokens_per_second: float
    samples_per_second: float
    # Where the step is in a staged strategy (progressive): None for the others.
    stage: int | None = None
    active_stacks: int | None = None

    @property
    def perplexity(self) -> float:
        return perplexity(self.loss)

    def fields(self) -> dict[str, Any]:
        staged = ("stage", "active_stacks")
        own = {k: v for k, v in asdict(self).items() if k not in staged or v is not None}
        return {**own, "perplexity": self.perplexity}


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation of a split after `step` steps."""

    split: Literal["val", "test"]
    step: int
    loss: float
    # Metrics of generated text (evaluation.metrics): {"bleu": 31.2, "rougeL": 0.4, ...}
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def perplexity(self) -> float:
        return perplexity(self.loss)

    def fields(self) -> dict[str, Any]:
        """`{step, val_loss, val_perplexity, val_bleu, ...}` for the val split, and so on."""
        return {
            "step": self.step,
            f"{self.split}_loss": self.loss,
            f"{self.split}_perplexity": self.perplexity,
            **{f"{self.split}_{name}": value for name, value in self.scores.items()},
        }


class Sink:
    """Where records go; every method does nothing unless a sink needs it."""

    every_step = False  # False: only the logged steps (every metrics.log_steps, the last)

    def step(self, record: StepRecord) -> None:
        pass

    def evaluation(self, record: EvalRecord) -> None:
        pass

    def event(self, event: str, step: int, **fields: Any) -> None:
        """A discrete happening: nan_skip, restore, checkpoint, resume, ..."""

    def message(self, text: str) -> None:
        """A line for a person watching."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Sinks(Sink):
    """Hands each record to every sink; a step to those that take it."""

    def __init__(self, sinks: list[Sink], log_steps: int, total_steps: int) -> None:
        self.sinks = sinks
        self.log_steps = max(1, log_steps)
        self.total_steps = total_steps

    def logged(self, step: int) -> bool:
        return step % self.log_steps == 0 or step == self.total_steps

    def step(self, record: StepRecord) -> None:
        logged = self.logged(record.step)
        for sink in self.sinks:
            if logged or sink.every_step:
                sink.step(record)

    def evaluation(self, record: EvalRecord) -> None:
        for sink in self.sinks:
            sink.evaluation(record)

    def event(self, event: str, step: int, **fields: Any) -> None:
        for sink in self.sinks:
            sink.event(event, step, **fields)

    def message(self, text: str) -> None:
        for sink in self.sinks:
            sink.message(text)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
