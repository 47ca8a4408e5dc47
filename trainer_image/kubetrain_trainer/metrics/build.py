"""The sinks one process writes to, from the config's `metrics` section."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    job_name: str = "",
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Sinks:
    """Prometheus on every rank (rank 0 serves it); files, the console, W&B and the webhook
    on rank 0 only. `job_name` names the W&B run and the notifications (default: the run
    directory's name); `config` is the trainer config dict W&B records; `env` (default
    os.environ) holds WANDB_API_KEY and the webhook URL's variable."""
    env = os.environ if env is None else env
    name = job_name or Path(run_dir).name
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
    if is_main and cfg.webhook.enabled:
        from kubetrain_trainer.metrics.webhook import WebhookSink

        sinks.append(WebhookSink(cfg.webhook, name, env.get(cfg.webhook.url_env)))
    if is_main and cfg.wandb.enabled:
        from kubetrain_trainer.metrics.wandb_sink import WandbSink

        try:
            sinks.append(WandbSink(cfg.wandb, Path(run_dir), name, config or {}, env=env))
        except BaseException:
            for sink in sinks[1:]:  # ours: the webhook's thread, open files
                sink.close()
            raise
    return Sinks(sinks, cfg.log_steps, total_steps)
