"""Condition helpers (Kubernetes API conventions): one condition per type, the
transition time changes only when the status does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from kubetrain_core.api import STATE_PRECEDENCE, Condition, ConditionType, JobState


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def get_condition(conditions: list[Condition], kind: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == kind), None)


def is_true(conditions: list[Condition], kind: ConditionType) -> bool:
    cond = get_condition(conditions, kind)
    return cond is not None and cond.status == "True"


def set_condition(
    conditions: list[Condition],
    kind: ConditionType,
    status: bool,
    *,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> tuple[list[Condition], bool]:
    """The new list and whether the condition's status changed (a transition)."""
    value = "True" if status else "False"
    old = get_condition(conditions, kind)
    changed = old is None or old.status != value
    new = Condition(
        type=kind,
        status=value,
        reason=reason,
        message=message[:4096],
        lastTransitionTime=timestamp(now) if changed or old is None else old.lastTransitionTime,
        observedGeneration=generation,
    )
    others = [c for c in conditions if c.type != kind]
    return [*others, new], changed


def state_of(conditions: list[Condition]) -> JobState:
    """The printer column: the most decisive true condition."""
    for state in STATE_PRECEDENCE:
        if is_true(conditions, cast(ConditionType, state)):
            return state
    return "Pending"
