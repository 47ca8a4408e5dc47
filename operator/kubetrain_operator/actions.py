"""What reconcile sees (Observed) and what it asks for (the actions): plain data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kubetrain_core.api import Progress

Obj = dict[str, Any]


@dataclass(frozen=True)
class CreateObject:
    body: Obj


@dataclass(frozen=True)
class UpdateConfig:
    """Replace the data of the job's ConfigMap (the trainer config every worker reads)."""

    name: str
    data: dict[str, str]


@dataclass(frozen=True)
class DeletePods:
    names: tuple[str, ...]
    reason: str
    grace_seconds: int | None = None  # None: the pod's own grace period; 0: at once


@dataclass(frozen=True)
class PatchStatus:
    status: Obj


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class DeleteJob:
    reason: str


@dataclass(frozen=True)
class Observe:
    """A metric observation: restarts (value 1, label cause), time_to_running, recovery."""

    metric: str
    value: float
    label: str = ""


@dataclass(frozen=True)
class Notify:
    """Post one job-level notification (spec.notifications) to the webhook whose URL the
    Secret `secret`'s key `key` holds. Handed to a background sender after the status
    patch that records it: never sent twice, never on the reconcile path."""

    event: str  # Restarting, Failed, Succeeded
    text: str
    fields: dict[str, Any]  # the generic format's structured body
    format: str
    secret: str
    key: str


Action = (
    CreateObject
    | UpdateConfig
    | DeletePods
    | PatchStatus
    | EmitEvent
    | DeleteJob
    | Observe
    | Notify
)


@dataclass(frozen=True)
class Observed:
    pods: list[Obj]
    service: bool  # the headless Service exists (looked up for multi-node jobs only)
    config: dict[str, str] | None  # the ConfigMap's data; None: it does not exist
    now: datetime
    progress: Progress | None = None  # rank 0's /progress; None when not reachable
    progress_error: str | None = None  # why the read failed (None: it worked or nothing serves)
    lost_nodes: frozenset[str] = frozenset()  # nodes of these pods that are not Ready
    signing_key: str = ""  # fresh random text, for the job's signing Secret if it is created
    queued: str | None = None  # Kueue holds the current gang back: why, in its words
