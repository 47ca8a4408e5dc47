"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field

PREFIX = "kubetrain.io"
TORCHRUN = ("python", "-m", "torch.distributed.run")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class Settings:
    default_image: str = "ghcr.io/kubetrain/kubetrain-trainer:0.1.0"
    """Trainer image for jobs whose spec.image is empty."""
    torchrun: list[str] = field(default_factory=lambda: list(TORCHRUN))
    """How the worker container starts torchrun (KUBETRAIN_TORCHRUN, shell-split). The module
    form needs only `python` on PATH, so it works in any image with torch installed."""
    working_dir: str | None = None
    """workingDir of trainer containers (KUBETRAIN_WORKING_DIR); None keeps the image's
    WORKDIR, which holds examples/ so relative data paths resolve."""
    default_checkpoint_uri: str | None = None
    """Base URI for jobs without spec.checkpoint.uri; the job gets <base>/<namespace>/<name>."""
    default_s3_endpoint: str | None = None
    """S3 endpoint used with the default checkpoint URI."""
    default_credentials_secret: str | None = None
    """Secret (in the job's namespace) with S3 credentials for the default checkpoint URI."""
    annotation_prefix: str = PREFIX
    """kopf keeps its handler progress in annotations under this prefix."""
    finalizer: str = f"{PREFIX}/finalizer"
    reconcile_interval_seconds: float = 5.0
    """Level-based resync period of every job (pod events trigger reconciles in between)."""
    restart_backoff_seconds: int = 5
    """First gang-restart delay; doubles with each restart up to restart_backoff_max_seconds."""
    restart_backoff_max_seconds: int = 300
    progress_timeout_seconds: float = 2.0
    """Timeout of one read of rank 0's /progress."""
    failure_settle_seconds: int = 50
    """After a worker fails with a plain error while its peers still look alive, wait up to
    this long (KUBETRAIN_FAILURE_SETTLE_SECONDS) for the peers to exit or their node to turn
    NotReady, so a dead node is recorded as NodeFailure and not as the peer's error. Match
    the controller-manager's --node-monitor-grace-period (50 s by default)."""

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            default_image=env.get("KUBETRAIN_DEFAULT_IMAGE", cls.default_image),
            torchrun=shlex.split(env.get("KUBETRAIN_TORCHRUN", shlex.join(TORCHRUN))),
            working_dir=env.get("KUBETRAIN_WORKING_DIR") or None,
            default_checkpoint_uri=env.get("KUBETRAIN_DEFAULT_CHECKPOINT_URI") or None,
            default_s3_endpoint=env.get("KUBETRAIN_DEFAULT_S3_ENDPOINT") or None,
            default_credentials_secret=env.get("KUBETRAIN_DEFAULT_CREDENTIALS_SECRET") or None,
            reconcile_interval_seconds=float(env.get("KUBETRAIN_RECONCILE_INTERVAL", "5")),
            restart_backoff_seconds=_env_int("KUBETRAIN_RESTART_BACKOFF_SECONDS", 5),
            restart_backoff_max_seconds=_env_int("KUBETRAIN_RESTART_BACKOFF_MAX_SECONDS", 300),
            failure_settle_seconds=_env_int("KUBETRAIN_FAILURE_SETTLE_SECONDS", 50),
        )
