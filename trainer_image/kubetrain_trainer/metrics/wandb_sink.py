"""Weights & Biases (metrics.wandb): the logged steps and every evaluation in a W&B run.

A sink like the others, rank 0 only. Metrics keep their metrics.jsonl names (``loss``,
``lr``, ``grad_norm``, ..., ``val_loss``, ``val_perplexity``, ``val_bleu``) and are
plotted against ``step``, a logged metric rather than W&B's own ``_step``: W&B drops any
row whose ``_step`` is below one already logged, and the trainer's step goes back after
an in-process rollback and on resume, so with the trainer's step as the x-axis the
replayed steps are kept (the chart shows the rollback) instead of dropped.

Events (nan_skip, restore, checkpoint, resume, ...) become ``event/<name>`` markers of
value 1 at their step; their string fields stay in metrics.jsonl. A ``failed`` event
finishes the run with exit code 1 (W&B shows it failed) and its reason in the summary.
Messages are not sent (W&B captures the console anyway).

The run id is derived from the run name and directory, and resume="allow": every attempt
of a job (same name, same run dir) continues the same W&B run. Offline, the run's files
stay under ``<run_dir>/wandb`` for ``wandb sync`` to upload. The API key comes only from
WANDB_API_KEY; online without it is a ConfigError before training starts. wandb is
imported here only, lazily: the operator and the core never import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubetrain_core.config import ConfigError, WandbConfig
from kubetrain_trainer.metrics.records import EvalRecord, Sink, StepRecord

log = logging.getLogger(__name__)

API_KEY_ENV = "WANDB_API_KEY"
STEP = "step"  # the x-axis of every chart (define_metric), the trainer's step


def run_id(run_dir: Path, run_name: str) -> str:
    """The W&B run id of a run: its name for people, then a hash of the resolved run
    directory and the name, so that runs of one name in other directories differ."""
    digest = hashlib.sha256(f"{Path(run_dir).resolve()}\0{run_name}".encode()).hexdigest()
    slug = re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-")[:40]
    return f"{slug}-{digest[:12]}" if slug else digest[:16]


class WandbSink(Sink):
    """Logs the logged steps, evaluations and event markers to one W&B run."""

    def __init__(
        self,
        cfg: WandbConfig,
        run_dir: Path,
        run_name: str,
        config: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        if cfg.mode == "online" and not env.get(API_KEY_ENV, "").strip():
            raise ConfigError(
                "environment",
                [
                    f"metrics.wandb: mode online needs the W&B API key in the {API_KEY_ENV}"
                    " environment variable (on a cluster, a Secret exposed as env), never in"
                    " the config; set it, or use mode: offline and `wandb sync` the files"
                    " under <run_dir>/wandb later"
                ],
            )
        try:
            import wandb
        except ImportError as err:  # the trainer extra installs it
            raise RuntimeError("metrics.wandb needs the wandb package (pip install wandb)") from err
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        name = run_name or run_dir.name
        self.run_id = run_id(run_dir, name)
        self._exit_code = 0
        self._broken = False
        try:
            self._run: Any = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group,
                name=name,
                id=self.run_id,
                resume="allow",  # a later attempt continues the run
                mode=cfg.mode,
                dir=str(run_dir),  # wandb adds the "wandb" directory
                config=dict(config),
                tags=list(cfg.tags),
                reinit="create_new",  # this sink's own run; never the global wandb.run
            )
        except Exception as err:
            raise RuntimeError(f"metrics.wandb: could not start the W&B run: {err}") from err
        self._run.define_metric(STEP)
        self._run.define_metric("*", step_metric=STEP)

    def _log(self, values: dict[str, Any]) -> None:
        # A tracker must not end a long training: the first failure is logged, then the
        # sink stops (metrics.jsonl still has everything).
        if self._broken or self._run is None:
            return
        try:
            self._run.log(values)
        except Exception as err:
            self._broken = True
            log.warning("metrics.wandb: logging failed, W&B logging stops: %s", err)

    def step(self, record: StepRecord) -> None:
        fields = {k: v for k, v in record.fields().items() if v is not None}
        self._log(fields)  # fields() has `step`

    def evaluation(self, record: EvalRecord) -> None:
        self._log(record.fields())

    def event(self, event: str, step: int, **fields: Any) -> None:
        self._log({STEP: step, f"event/{event}": 1})
        if event == "failed":
            self._exit_code = 1
            if self._run is not None and fields.get("reason") is not None:
                with contextlib.suppress(Exception):  # a summary is not worth a failure
                    self._run.summary["failed_reason"] = str(fields["reason"])[:2000]

    def close(self) -> None:
        if self._run is None:
            return
        run, self._run = self._run, None
        try:
            run.finish(exit_code=self._exit_code)
        except Exception as err:
            log.warning("metrics.wandb: finishing the W&B run failed: %s", err)
