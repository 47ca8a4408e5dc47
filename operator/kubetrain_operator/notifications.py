"""Which job-level notifications a reconcile owes (pure; notifier.py sends them).

Level-based like the rest of reconcile: status.notifications records how far the
notifications went (restarts.total and the outcome already notified). A reconcile
compares the new status with that mark, owes a notification for what lies beyond
it, and moves the mark in the same status patch. The Notify actions come right after
the patch (a queue hand-off that cannot fail), so a patch that fails sends nothing and
the next reconcile owes it again; a re-reconcile or a restarted operator finds the mark
moved and owes nothing. The cost: an operator that dies between the patch and the POST
loses that one notification (at most once, never twice).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kubetrain_core.api import (
    NotificationsSpec,
    NotificationStatus,
    TrainingJobStatus,
)
from kubetrain_operator.actions import Notify
from kubetrain_operator.status import get_condition

MAX_MESSAGE = 1000  # of a condition's message in the text (the whole text: notify.MAX_TEXT)


def level(status: TrainingJobStatus) -> NotificationStatus:
    """The mark for a job whose past is not notified: everything up to now counts as done."""
    final = status.state if status.state in ("Succeeded", "Failed") else None
    return NotificationStatus(restarts=status.restarts.total, outcome=final)


def owed(
    spec: NotificationsSpec | None,
    before: TrainingJobStatus,
    after: TrainingJobStatus,
    namespace: str,
    name: str,
) -> tuple[NotificationStatus | None, list[Notify]]:
    """The new mark and the notifications that moving to `after` owes. Without
    spec.notifications there is no mark: configuring them later notifies nothing
    that happened before. Events left out of spec.notifications.events move the mark
    too (adding one later does not replay the past)."""
    if spec is None:
        return None, []
    mark = before.notifications or level(before)
    notes: list[Notify] = []
    if after.restarts.total > mark.restarts:
        notes.append(_restarting(spec, after, namespace, name))
    outcome = after.state if after.state in ("Succeeded", "Failed") else None
    if outcome is not None and mark.outcome != outcome:
        notes.append(_finished(spec, after, namespace, name))
    new = NotificationStatus(
        restarts=max(mark.restarts, after.restarts.total), outcome=outcome or mark.outcome
    )
    return new, [n for n in notes if n.event in spec.events]


def from_body(body: dict[str, Any]) -> NotificationsSpec | None:
    """spec.notifications of a stored job that may not parse as a whole (a job failed
    for an invalid spec still notifies, when this part of it is valid)."""
    raw = (body.get("spec") or {}).get("notifications")
    if raw is None:
        return None
    try:
        return NotificationsSpec.model_validate(raw)
    except ValidationError:
        return None


def _note(spec: NotificationsSpec, event: str, text: str, fields: dict[str, Any]) -> Notify:
    ref = spec.webhook.secretRef
    return Notify(
        event=event,
        text=text,
        fields={"event": event, **fields},
        format=spec.format,
        secret=ref.name,
        key=ref.key,
    )


def _common(status: TrainingJobStatus, namespace: str, name: str) -> dict[str, Any]:
    step = status.progress.step if status.progress else 0
    return {
        "namespace": namespace,
        "name": name,
        "restarts": status.restarts.total,
        "step": step,
    }


def _restarting(
    spec: NotificationsSpec, status: TrainingJobStatus, namespace: str, name: str
) -> Notify:
    cond = get_condition(status.conditions, "Restarting")
    reason = cond.reason if cond else "Restarting"
    message = (cond.message if cond else status.recovery.lastFailure)[:MAX_MESSAGE]
    fields = _common(status, namespace, name) | {"reason": reason, "message": message}
    text = (
        f"TrainingJob {namespace}/{name} is restarting ({reason}, restart"
        f" {status.restarts.total}, step {fields['step']}): {message}"
    )
    return _note(spec, "Restarting", text, fields)


def _finished(
    spec: NotificationsSpec, status: TrainingJobStatus, namespace: str, name: str
) -> Notify:
    event = status.state
    cond = get_condition(status.conditions, "Failed" if event == "Failed" else "Succeeded")
    reason = cond.reason if cond else event
    message = (cond.message if cond else "")[:MAX_MESSAGE]
    fields = _common(status, namespace, name) | {"reason": reason, "message": message}
    counts = f"step {fields['step']}, {status.restarts.total} restart(s)"
    if event == "Failed":
        text = f"TrainingJob {namespace}/{name} failed ({reason}, {counts}): {message}"
    else:
        goodput = status.goodputPercent
        extra = f", goodput {goodput:.0f}%" if goodput is not None else ""
        text = f"TrainingJob {namespace}/{name} succeeded ({counts}{extra})"
    return _note(spec, event, text, fields)
