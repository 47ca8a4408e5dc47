"""TensorBoard event files under ``<run_dir>/tensorboard`` (metrics.tensorboard: true).

A sink like the others: the logged steps' records and every evaluation, as scalars
named like the metrics.jsonl fields (``train/loss``, ``val/loss``, ...). Rank 0 only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetrain_trainer.metrics.records import EvalRecord, Sink, StepRecord

LOG_DIR = "tensorboard"


class TensorBoardWriter(Sink):
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # the trainer extra installs it; a bare torch does not
            raise RuntimeError(
                "metrics.tensorboard needs the tensorboard package (pip install tensorboard)"
            ) from err
        self.log_dir = Path(run_dir) / LOG_DIR
        self._writer: Any = SummaryWriter(log_dir=str(self.log_dir))

    def step(self, record: StepRecord) -> None:
        for name, value in record.fields().items():
            if name != "step" and value is not None:
                self._writer.add_scalar(f"train/{name}", value, record.step)
        self._writer.flush()

    def evaluation(self, record: EvalRecord) -> None:
        self._writer.add_scalar(f"{record.split}/loss", record.loss, record.step)
        self._writer.add_scalar(f"{record.split}/perplexity", record.perplexity, record.step)
        for name, value in record.scores.items():  # evaluation.metrics: val/bleu, ...
            self._writer.add_scalar(f"{record.split}/{name}", value, record.step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
