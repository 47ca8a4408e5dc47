"""The sinks one process writes to, from the config's `metrics` section."""

from __future__ import annotations

from pathlib import Path

from kubetrain_core.config import MetricsConfig
from kubetrain_trainer.metrics.console import ProgressReporter
from kubetrain_trainer.metrics.logger import MetricsLogger
from kubetrain_trainer.metrics.prometheus import TrainerMetrics
from kubetrain_trainer.metrics.records import Sink, Sinks
from kubetrain_trainer.metrics.tensorboard import TensorBoardWriter


def build_sinks(
    cfg: MetricsConfig,
    *,
    run_dir: Path,
    is_main: bool,
    total_steps: int,
    start_step: int,
    prometheus: TrainerMetrics,
) -> Sinks:
    """Prometheus on every rank (rank 0 serves it); files and the console on rank 0 only."""
    sinks: list[Sink] = [prometheus]
    if is_main and cfg.jsonl:
        sinks.append(MetricsLogger(run_dir))
    if is_main and cfg.console:
        sinks.append(
            ProgressReporter(
                total_steps=total_steps, log_steps=cfg.log_steps, start_step=start_step
            )
        )
    if is_main and cfg.tensorboard:
        sinks.append(TensorBoardWriter(run_dir))
    return Sinks(sinks, cfg.log_steps, total_steps)
