"""Experiment tracking (Weights & Biases) and notifications (a Discord or Slack webhook).

Both are sections of ``metrics`` and sinks on rank 0 only. Neither ever holds a secret:
the W&B API key comes from WANDB_API_KEY and the webhook URL from the environment
variable that ``url_env`` names, both set from a Secret on a cluster, so that the config
(a ConfigMap, the TrainingJob spec, the checkpoints' saved config) can be shown to anyone.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kubetrain_core.config.base import Section

# W&B names (project, entity, group): no path separators or URL syntax, no control
# characters; 128 is W&B's own limit for project names.
_WANDB_NAME = r"^[^/\\#?%:\x00-\x1f]+$"
WandbName = Annotated[str, Field(min_length=1, max_length=128, pattern=_WANDB_NAME)]
# W&B limits a tag to 64 characters.
WandbTag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]

NotifyEvent = Literal["start", "evaluation", "rollback", "failed", "finished"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("start", "evaluation", "rollback", "failed", "finished")


class WandbConfig(Section):
    """Log the training and evaluation metrics to a Weights & Biases run (rank 0). The API
    key is never in the config: it comes from the WANDB_API_KEY environment variable (on a
    cluster, a Secret exposed as env); WANDB_BASE_URL selects a self-hosted server."""

    enabled: bool = False
    """Create a W&B run and log to it."""
    project: WandbName = "kubetrain"
    """W&B project the run goes to."""
    entity: WandbName | None = None
    """W&B team or user owning the project; null uses the API key's default entity."""
    group: WandbName | None = None
    """W&B run group (e.g. one sweep or experiment); null: no group."""
    mode: Literal["online", "offline"] = "online"
    """online: stream to the server (needs WANDB_API_KEY). offline: write files under
    <run_dir>/wandb only, for `wandb sync` to upload later; needs no key or network."""
    tags: list[WandbTag] = Field(default_factory=list, max_length=32)
    """Tags on the run."""


class WebhookConfig(Section):
    """Post notifications (start, evaluations, rollbacks, the outcome) to a Discord or Slack
    incoming webhook from rank 0. The URL is a secret and never in the config: it is read
    from the environment variable named by url_env (on a cluster, a Secret exposed as env).
    Delivery is best effort: a failing webhook is logged, never stops training."""

    enabled: bool = False
    """Send notifications; the variable named by url_env must then hold the URL."""
    url_env: str = Field(
        "KUBETRAIN_WEBHOOK_URL", min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"
    )
    """Name of the environment variable holding the webhook URL (not the URL itself)."""
    format: Literal["discord", "slack"] = "discord"
    """Payload format: discord ({"content": text}) or slack ({"text": text})."""
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS), max_length=5)
    """What is notified: start, evaluation (each one), rollback (an in-process restore
    after a NaN), failed, finished."""
    timeout_seconds: float = Field(5.0, ge=0.1, le=60.0)
    """Timeout of one POST."""
    max_attempts: int = Field(3, ge=1, le=10)
    """Tries per notification (exponential backoff between them) before it is dropped."""
