"""Per-stage figures of a staged strategy (progressive) for the end-of-run summary.

A sink like the others: it reads the stage off each step record and the validation
loss off each evaluation, and keeps, per stage, the steps it ran, its throughput and
the first and last validation loss within it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kubetrain_trainer.metrics.records import EvalRecord, Sink, StepRecord


@dataclass
class StageFigures:
    stage: int
    active_stacks: int | None
    first_step: int
    last_step: int
    tokens_per_second: float  # mean over the stage's steps
    first_val_loss: float | None = None
    last_val_loss: float | None = None


class StageTally(Sink):
    """Collects `StageFigures` per stage this process trained (a resumed run: from the
    resume on)."""

    every_step = True

    def __init__(self) -> None:
        self.stages: dict[int, StageFigures] = {}
        self._rates: dict[int, list[float]] = {}
        self._current: int | None = None

    def step(self, record: StepRecord) -> None:
        if record.stage is None:
            return
        figures = self.stages.get(record.stage)
        rates = self._rates.setdefault(record.stage, [])
        rates.append(record.tokens_per_second)
        rate = sum(rates) / len(rates)
        if figures is None:
            self.stages[record.stage] = StageFigures(
                record.stage, record.active_stacks, record.step, record.step, rate
            )
        else:
            figures.last_step, figures.tokens_per_second = record.step, rate
        self._current = record.stage

    def evaluation(self, record: EvalRecord) -> None:
        figures = self.stages.get(self._current) if self._current is not None else None
        if figures is None or record.split != "val":
            return
        if figures.first_val_loss is None:
            figures.first_val_loss = record.loss
        figures.last_val_loss = record.loss

    def rows(self) -> list[dict[str, Any]]:
        return [asdict(f) for _, f in sorted(self.stages.items())]
