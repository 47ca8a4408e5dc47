"""Where the trainer's numbers go: metrics.jsonl, Prometheus, /progress, the console."""

from kubetrain_trainer.metrics.console import (
    ProgressReporter,
    print_summary,
    summary_table,
)
from kubetrain_trainer.metrics.logger import MetricsLogger, perplexity, read_metrics
from kubetrain_trainer.metrics.prometheus import TrainerMetrics
from kubetrain_trainer.metrics.server import MetricsServer

__all__ = [
    "MetricsLogger",
    "MetricsServer",
    "ProgressReporter",
    "TrainerMetrics",
    "perplexity",
    "print_summary",
    "read_metrics",
    "summary_table",
]
