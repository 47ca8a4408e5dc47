"""What the operator (or `kubetrain run`) tells this attempt through the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from kubetrain_core.config import ConfigError
from kubetrain_core.contract import DEFAULT_TERMINATION_LOG, Env, parse_step_ranges
from kubetrain_trainer.checkpoint.lineage import Owner


def _int(env: dict[str, str] | os._Environ[str], name: str, default: int | None) -> int | None:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, [f"{name}: expected an integer (got {raw!r})"]) from None


@dataclass(frozen=True)
class Runtime:
    job_name: str = ""
    namespace: str = ""
    job_uid: str = ""
    restart_count: int = 0
    worker_restarts: int = 0  # in-place restarts of this attempt's workers (torchrun's)
    rollback_before: int | None = None  # resume from a good checkpoint before this step
    rollback_id: str | None = None
    skip_ranges: list[tuple[int, int]] = field(default_factory=list)
    lr_scale: float = 1.0
    fault_spec: str = ""
    termination_log: str = DEFAULT_TERMINATION_LOG
    checkpoint_key: bytes | None = field(default=None, repr=False)
    overrides: dict[str, Any] = field(default_factory=dict)  # typed config values

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Runtime:
        """Read the contract's variables; ConfigError names a malformed one."""
        e = os.environ if env is None else env
        try:
            skip = parse_step_ranges(e.get(Env.SKIP_BATCHES, ""))
            lr_scale = float(e.get(Env.LR_SCALE, "1") or 1)
        except ValueError as err:
            raise ConfigError("environment", [str(err)]) from None
        # Strings stay strings: a path is never parsed as YAML.
        overrides: dict[str, Any] = {}
        if e.get(Env.RUN_DIR):
            overrides["run_dir"] = e[Env.RUN_DIR]
        key = e.get(Env.CHECKPOINT_KEY, "")
        return cls(
            job_name=e.get(Env.JOB_NAME, ""),
            namespace=e.get(Env.NAMESPACE, ""),
            job_uid=e.get(Env.JOB_UID, ""),
            restart_count=_int(e, Env.RESTART_COUNT, 0) or 0,
            worker_restarts=_int(e, Env.WORKER_RESTARTS, 0) or 0,
            rollback_before=_int(e, Env.ROLLBACK_BEFORE, None),
            rollback_id=e.get(Env.ROLLBACK_ID) or None,
            skip_ranges=skip,
            lr_scale=lr_scale,
            fault_spec=e.get(Env.FAULT_INJECT, ""),
            termination_log=e.get(Env.TERMINATION_LOG, DEFAULT_TERMINATION_LOG),
            checkpoint_key=key.encode() if key else None,
            overrides=overrides,
        )

    @property
    def earlier_starts(self) -> int:
        """How often this job's workers started before: the operator's attempts plus
        torchrun's in-place restarts of this attempt."""
        return self.restart_count + self.worker_restarts

    @property
    def owner(self) -> Owner:
        """The job whose checkpoint store this attempt writes."""
        return Owner(self.namespace, self.job_name, self.job_uid)
