"""Facts about the job's worker pods, read from their API objects (pure).

Labels the operator set, phases, exit codes and termination messages (parsed as
untrusted input: contract.TerminationMessage), why a pod fails or does not start.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from kubetrain_core.api import WorkerCounts
from kubetrain_core.contract import TerminationMessage
from kubetrain_core.policy import Cause, classify
from kubetrain_operator import builders
from kubetrain_operator.status import parse_time

Obj = dict[str, Any]
NODE_FAILURE_REASONS = {"Evicted", "NodeLost", "NodeShutdown", "Shutdown", "Terminated"}
# Why a pod is going away, when it was asked to (DisruptionTarget: the scheduler, the
# Eviction API; TerminationTarget: Kueue stopping an evicted or preempted workload's pods).
# The taint manager's and the kubelet's reasons mean the node: NODE_FAILURE.
PREEMPTION_REASONS = {"PreemptionByScheduler", "PreemptionByKubeScheduler", "EvictionByEvictionAPI"}
STUCK_TERMINATING = timedelta(seconds=30)  # past the grace period: force-delete


def labels_of(pod: Obj) -> dict[str, str]:
    labels: dict[str, str] = pod.get("metadata", {}).get("labels") or {}
    return labels


def _int_label(pod: Obj, key: str) -> int:
    """A numeric label of ours; -1 when absent or not a number (never an exception)."""
    value = labels_of(pod).get(key, "")
    return int(value) if value.isdigit() and len(value) < 10 else -1


def attempt_of(pod: Obj) -> int:
    return _int_label(pod, builders.ATTEMPT_LABEL)


def index_of(pod: Obj) -> int:
    return _int_label(pod, builders.INDEX_LABEL)


def phase_of(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def is_deleting(pod: Obj) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def name_of(pod: Obj) -> str:
    return str(pod["metadata"]["name"])


def node_of(pod: Obj) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def finished_at(pod: Obj) -> datetime | None:
    return parse_time(terminated(pod).get("finishedAt"))


def terminated(pod: Obj) -> Obj:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == builders.CONTAINER:
            state = cs.get("state") or {}
            last: Obj = state.get("terminated") or {}
            return last
    return {}


def failure_of(pod: Obj) -> tuple[Cause, int, TerminationMessage | None]:
    """Why one worker pod failed: node trouble, or the trainer's exit code and message."""
    status = pod.get("status") or {}
    term = terminated(pod)
    code = int(term.get("exitCode", 1))
    message = TerminationMessage.from_json(term["message"]) if term.get("message") else None
    cause = classify(code, message) if term else None
    preempted = preemption_of(pod)
    if preempted is not None and cause in (None, Cause.ERROR, Cause.PREEMPTED):
        # Asked to go: whatever the trainer did on the way out (saved, or was cut off).
        return Cause.PREEMPTED, code, message or TerminationMessage("Preempted", preempted)
    if status.get("reason") in NODE_FAILURE_REASONS or (is_deleting(pod) and not term):
        text = status.get("message") or f"pod {name_of(pod)} lost its node or was evicted"
        return Cause.NODE_FAILURE, code, TerminationMessage("NodeFailure", str(text))
    return cause or classify(code, message), code, message


def preemption_of(pod: Obj) -> str | None:
    """Who asked the pod to go, when it was preempted or evicted on purpose: the text of
    its DisruptionTarget (scheduler, Eviction API) or TerminationTarget (Kueue) condition."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        kind, reason = cond.get("type"), str(cond.get("reason") or "")
        if (kind == "DisruptionTarget" and reason in PREEMPTION_REASONS) or (
            kind == "TerminationTarget"
        ):
            return f"{reason}: {cond.get('message') or 'preempted'}"[:1024]
    return None


def pick_failure(pods: list[Obj]) -> tuple[Obj, Cause, TerminationMessage | None]:
    """The most telling failure: a specific trainer reason beats a generic error."""
    ranked = []
    for pod in sorted(pods, key=index_of):
        cause, code, message = failure_of(pod)
        if message is None:
            message = TerminationMessage("Error", f"pod {name_of(pod)} exited with code {code}")
        ranked.append((cause is Cause.ERROR, pod, cause, message))
    _, pod, cause, message = min(ranked, key=lambda r: r[0])
    return pod, cause, message


def fingerprint(pod: Obj) -> tuple[object, ...]:
    """What of a pod the reconcile decides on: phase, deletion, node, IP and each
    container's state, exit code and restarts. Pod events that change none of it (the
    scheduler retrying an unschedulable pod, a condition's heartbeat, the ADDED event of
    a pod just created) need no reconcile; a waiting reason matters only once the startup
    deadline passed, and the resync loop looks then."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    containers = tuple(
        (
            cs.get("name"),
            tuple(sorted(cs.get("state") or {})),
            ((cs.get("state") or {}).get("terminated") or {}).get("exitCode"),
            cs.get("restartCount"),
        )
        for cs in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]
    )
    return (
        phase_of(pod),
        bool(meta.get("deletionTimestamp")),
        node_of(pod),
        status.get("podIP"),
        containers,
    )


def pending_reason(pod: Obj) -> str:
    """Why a pod is Pending, in its own words: the scheduler's or a container's reason."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}".strip()
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return f"{waiting['reason']}: {waiting.get('message', '')}".strip()
    return "still Pending (no reason reported yet)"


def counts(pods: list[Obj]) -> WorkerCounts:
    phases = [phase_of(p) for p in pods]
    return WorkerCounts(
        pending=phases.count("Pending"),
        running=phases.count("Running"),
        succeeded=phases.count("Succeeded"),
        failed=phases.count("Failed"),
    )


def overdue(pod: Obj, now: datetime) -> bool:
    when = parse_time(pod["metadata"].get("deletionTimestamp"))
    return when is not None and now - when > STUCK_TERMINATING
