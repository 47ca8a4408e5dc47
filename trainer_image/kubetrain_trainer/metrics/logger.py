"""``<run_dir>/metrics.jsonl``: one JSON object per line, the run's durable record.

Each line has a ``kind``: ``train`` (a logged training step), ``val``,
``test``, or ``event`` (nan_skip, restore, checkpoint, ...), plus ``time``
(Unix seconds). Lines are strict JSON: non-finite numbers (a NaN loss) are
written as ``null`` so that any JSON reader (jq, pandas) takes the file.
Only rank 0 writes; the file is appended to, so a resumed run keeps the lines
of earlier attempts, and each line is flushed as it is written, so a crash
loses at most the line being written.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from kubetrain_trainer.metrics.records import EvalRecord, Sink, StepRecord

METRICS_FILE = "metrics.jsonl"


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class MetricsLogger(Sink):
    """Appends metric records to ``<run_dir>/metrics.jsonl`` (rank 0 only)."""

    def __init__(self, run_dir: str | Path, rank: int = 0, enabled: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self._file: IO[str] | None = None
        if enabled and rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    @property
    def active(self) -> bool:
        """Whether this process writes (rank 0, enabled, not closed)."""
        return self._file is not None

    def write(self, kind: str, **fields: Any) -> None:
        """Append one record: ``{"kind": kind, "time": now, **fields}``."""
        if self._file is None:
            return
        record = {"kind": kind, "time": time.time(), **fields}
        self._file.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self._file.flush()

    def step(self, record: StepRecord) -> None:
        self.write("train", **record.fields())

    def evaluation(self, record: EvalRecord) -> None:
        self.write(record.split, **record.fields())

    def event(self, event: str, step: int, **fields: Any) -> None:
        """A discrete happening: ``nan_skip``, ``restore``, ``checkpoint``, ``early_stop``, ..."""
        self.write("event", event=event, step=step, **fields)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl (optionally of one ``kind``); skips a torn last line."""
    records: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a crash mid-write leaves at most one partial line
            if kind is None or record.get("kind") == kind:
                records.append(record)
    return records
