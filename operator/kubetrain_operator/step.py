"""The mutable state of one reconcile: the new status and the actions gathered so far,
by kind, so that reconcile can emit them in a safe order."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetrain_core.api import ConditionType, TrainingJob, TrainingJobStatus
from kubetrain_operator.actions import Action, DeletePods, EmitEvent
from kubetrain_operator.pod_facts import name_of
from kubetrain_operator.status import set_condition

Obj = dict[str, Any]


@dataclass
class Step:
    """One reconcile in the making: the status being written and the actions, by kind."""

    job: TrainingJob
    generation: int | None
    now: datetime
    status: TrainingJobStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Action] = field(default_factory=list)  # EmitEvent and Observe
    deletes: list[Action] = field(default_factory=list)
    creates: list[Action] = field(default_factory=list)

    def condition(self, kind: ConditionType, value: bool, reason: str, message: str) -> bool:
        conds, changed = set_condition(
            self.status.conditions,
            kind,
            value,
            reason=reason,
            message=message,
            now=self.now,
            generation=self.generation,
        )
        self.status.conditions = conds
        if changed and value:  # one Event per transition into a state
            warn = kind in ("Failed", "Restarting")
            self.events.append(EmitEvent("Warning" if warn else "Normal", reason, message))
        return changed

    def delete(self, pods: list[Obj], reason: str, grace_seconds: int | None = None) -> None:
        if pods:
            names = tuple(name_of(p) for p in pods)
            self.deletes.append(DeletePods(names, reason, grace_seconds))
