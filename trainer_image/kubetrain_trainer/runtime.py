"""What the operator (or `kubetrain run`) tells this attempt through the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kubetrain_trainer.contract import DEFAULT_TERMINATION_LOG, Env, parse_step_ranges


@dataclass(frozen=True)
class Runtime:
    job_name: str = ""
    namespace: str = ""
    restart_count: int = 0
    resume_from: str | None = None  # rollback target chosen by the operator
    skip_ranges: list[tuple[int, int]] = field(default_factory=list)
    lr_scale: float = 1.0
    fault_spec: str = ""
    termination_log: str = DEFAULT_TERMINATION_LOG

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Runtime:
        e = os.environ if env is None else env
        return cls(
            job_name=e.get(Env.JOB_NAME, ""),
            namespace=e.get(Env.NAMESPACE, ""),
            restart_count=int(e.get(Env.RESTART_COUNT, "0") or 0),
            resume_from=e.get(Env.RESUME_FROM) or None,
            skip_ranges=parse_step_ranges(e.get(Env.SKIP_BATCHES, "")),
            lr_scale=float(e.get(Env.LR_SCALE, "1") or 1),
            fault_spec=e.get(Env.FAULT_INJECT, ""),
            termination_log=e.get(Env.TERMINATION_LOG, DEFAULT_TERMINATION_LOG),
        )

    def config_overrides(self, env: dict[str, str] | None = None) -> list[str]:
        """Env values that override config keys (dotted overrides, applied before validation)."""
        e = os.environ if env is None else env
        pairs = {
            Env.CHECKPOINT_URI: "checkpoint.uri",
            Env.RUN_DIR: "run_dir",
            Env.METRICS_PORT: "metrics.port",
        }
        return [f"{key}={e[var]}" for var, key in pairs.items() if e.get(var)]
