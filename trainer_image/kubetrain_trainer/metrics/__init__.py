"""Where the trainer's numbers go: one record per step to every sink (metrics.jsonl, the
console, Prometheus, TensorBoard), and rank 0's /metrics and /progress."""

from kubetrain_trainer.metrics.build import build_sinks
from kubetrain_trainer.metrics.console import ProgressReporter, print_summary, summary_table
from kubetrain_trainer.metrics.logger import MetricsLogger, read_metrics
from kubetrain_trainer.metrics.prometheus import TrainerMetrics
from kubetrain_trainer.metrics.records import EvalRecord, Sink, Sinks, StepRecord, perplexity
from kubetrain_trainer.metrics.server import MetricsServer
from kubetrain_trainer.metrics.tensorboard import TensorBoardWriter

__all__ = [
    "EvalRecord",
    "MetricsLogger",
    "MetricsServer",
    "ProgressReporter",
    "Sink",
    "Sinks",
    "StepRecord",
    "TensorBoardWriter",
    "TrainerMetrics",
    "build_sinks",
    "perplexity",
    "print_summary",
    "read_metrics",
    "summary_table",
]
