"""spec.notifications and status.notifications: the job-level events the operator posts
to a webhook (a restart and its cause, Failed, Succeeded), and what it already sent.

The webhook URL carries a token: it lives in a Secret of the job's namespace, read by
the operator when it sends, never in the spec, the status, an Event or a log line.
"""

from __future__ import annotations

import typing
from typing import Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubetrain_core import cel
from kubetrain_core.api.base import DNS1123, ApiModel
from kubetrain_core.notify import Format

JobEvent = Literal["Restarting", "Failed", "Succeeded"]
JOB_EVENTS: tuple[JobEvent, ...] = typing.get_args(JobEvent)
# The operator's RBAC may `get` Secrets of this one name only (operator/deploy/rbac.yaml);
# a cluster admin allows more names with the chart's notifications.extraSecretNames.
DEFAULT_SECRET = "kubetrain-notifications"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"  # a Secret's data key (core/v1)


class SecretKeyRef(ApiModel):
    """A key of a Secret in the job's namespace."""

    name: str = Field(DEFAULT_SECRET, min_length=1, max_length=253, pattern=DNS1123)
    """Secret name. The operator may read Secrets named kubetrain-notifications only,
    unless the cluster admin allowed more (the chart's notifications.extraSecretNames)."""
    key: str = Field("url", min_length=1, max_length=253, pattern=SECRET_KEY)
    """Key whose value is the webhook URL (https://discord.com/api/webhooks/...)."""


class WebhookRef(ApiModel):
    """Where the notifications go: an incoming webhook whose URL a Secret holds."""

    secretRef: SecretKeyRef = SecretKeyRef()


class NotificationsSpec(ApiModel):
    """Job-level notifications the operator posts to a webhook (Discord, Slack or any
    JSON receiver): a gang restart with its cause, Failed, Succeeded. Once per event,
    best effort: a failing webhook is reported in an Event, never affects the job. The
    trainer's own notifications (start, evaluations) are trainer.metrics.webhook."""

    webhook: WebhookRef
    format: Format = "discord"
    """Body of each POST: discord ({"content"}), slack ({"text"}) or generic ({"text",
    "event", "namespace", "name", "reason", "message", "restarts", "step"})."""
    events: list[JobEvent] = Field(default_factory=lambda: list(JOB_EVENTS), max_length=3)
    """What is sent: Restarting (each gang restart, with its cause), Failed, Succeeded."""

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                "!has(self.events) || self.events.all(e, self.events.exists_one(x, x == e))",
                "spec.notifications.events: each event at most once",
                fieldPath=".events",
                reason="FieldValueInvalid",  # Duplicate would drop the message
            )
        )
    )

    @model_validator(mode="after")
    def _events_once(self) -> Self:
        if len(set(self.events)) != len(self.events):
            raise ValueError("spec.notifications.events: each event at most once")
        return self


class NotificationStatus(ApiModel):
    """What spec.notifications was already done for (sent, or deliberately not sent):
    the operator notifies only beyond it, so a re-reconcile or an operator restart never
    sends an event twice. Set when notifications are first configured, from the job's
    state then: nothing earlier is sent."""

    restarts: int = Field(0, ge=0, le=1_000_000)
    """status.restarts.total that was notified up to."""
    outcome: Literal["Succeeded", "Failed"] | None = None
    """The final state that was notified; unset while the job runs."""
