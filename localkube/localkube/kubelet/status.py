"""Pod status as the kubelet reports it: container states, phase, conditions.

Pure functions over small records; the pod worker keeps the records current.
"""

from __future__ import annotations

import datetime as dt
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

WAITING = "waiting"
RUNNING = "running"
TERMINATED = "terminated"

# Limits the kubelet applies to termination messages.
MAX_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRecord:
    """What the kubelet knows of one container (one element of containerStatuses)."""

    name: str
    state: str = WAITING
    reason: str = "ContainerCreating"
    message: str = ""
    exit_code: int = 0
    signal: int = 0
    started_at: str = ""
    finished_at: str = ""
    restart_count: int = 0
    ready: bool = False
    pid: int = 0
    last_terminated: dict[str, Any] | None = None
    # Invented but stable: tools that key on containerID want one once started.
    container_id: str = ""

    def state_dict(self) -> dict[str, Any]:
        if self.state == RUNNING:
            return {RUNNING: {"startedAt": self.started_at}}
        if self.state == TERMINATED:
            return {TERMINATED: self.terminated_dict()}
        waiting: dict[str, Any] = {"reason": self.reason}
        if self.message:
            waiting["message"] = self.message
        return {WAITING: waiting}

    def terminated_dict(self) -> dict[str, Any]:
        term: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at or None,
            "finishedAt": self.finished_at or None,
        }
        if self.signal:
            term["signal"] = self.signal
        if self.message:
            term["message"] = self.message
        if self.container_id:
            term["containerID"] = self.container_id
        return term


def exit_code_of(returncode: int) -> tuple[int, int]:
    """(exitCode, signal) from a Popen returncode: death by signal N is 128+N, as in a shell."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, 0


def terminated_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


def termination_message(written: bytes, log_tail: bytes, exit_code: int, policy: str | None) -> str:
    """The message the kubelet reports for a terminated container.

    The file at terminationMessagePath wins; with FallbackToLogsOnError an empty
    file and a failed container take the tail of the log instead.
    """
    if written.strip():
        return written[:MAX_MESSAGE_BYTES].decode(errors="replace")
    if policy == "FallbackToLogsOnError" and exit_code != 0:
        lines = log_tail.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
        return b"".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")
    return ""


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def pod_phase(
    restart_policy: str, failed: bool, initialized: bool, containers: Sequence[ContainerRecord]
) -> str:
    """Pending until every container has started once; then Running until the policy ends it.

    `failed`: the pod as a whole failed (an init container under restartPolicy
    Never, or activeDeadlineSeconds passed).
    """
    if failed:
        return "Failed"
    if not initialized or not containers:
        return "Pending"
    if any(c.state == WAITING and not c.started_at for c in containers):
        return "Pending"  # some container never started yet
    all_done = all(c.state == TERMINATED for c in containers)
    if restart_policy == "Always" or not all_done:
        return "Running"
    if all(c.exit_code == 0 for c in containers):
        return "Succeeded"
    return "Failed" if restart_policy == "Never" else "Running"


def container_will_restart(restart_policy: str, exit_code: int) -> bool:
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


def condition_list(
    previous: Sequence[Mapping[str, Any]],
    wanted: Mapping[str, tuple[bool, str]],
    now: str,
) -> list[dict[str, Any]]:
    """Conditions with lastTransitionTime kept where the status did not change."""
    before = {c.get("type"): c for c in previous}
    out: list[dict[str, Any]] = []
    for kind, (ok, reason) in wanted.items():
        status = "True" if ok else "False"
        old = before.get(kind)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        # reason is always sent: null clears a stale one under a strategic merge patch.
        cond: dict[str, Any] = {
            "type": kind,
            "status": status,
            "reason": reason or None,
            "lastProbeTime": None,
            "lastTransitionTime": since or now,
        }
        out.append(cond)
    return out


@dataclass
class PodView:
    """Everything that goes into one pod's status."""

    restart_policy: str
    host_ip: str
    pod_ip: str = ""
    start_time: str = ""
    sandbox_ready: bool = False
    init_containers: list[ContainerRecord] = field(default_factory=list)
    containers: list[ContainerRecord] = field(default_factory=list)
    failed: bool = False
    message: str = ""
    reason: str = ""


def _initialized(view: PodView) -> bool:
    return all(c.state == TERMINATED and c.exit_code == 0 for c in view.init_containers)


def _status_list(records: Sequence[ContainerRecord], init: bool) -> list[dict[str, Any]]:
    out = []
    for rec in records:
        item: dict[str, Any] = {
            "name": rec.name,
            "state": rec.state_dict(),
            "lastState": {TERMINATED: rec.last_terminated} if rec.last_terminated else {},
            "ready": rec.ready and not init,
            "restartCount": rec.restart_count,
            "image": "process",
            "imageID": "",
            "started": rec.state == RUNNING,
        }
        if rec.container_id:
            item["containerID"] = rec.container_id
        if init:
            item["ready"] = rec.state == TERMINATED and rec.exit_code == 0
        out.append(item)
    return out


def build_status(
    view: PodView, previous_conditions: Sequence[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    """The pod's whole status (phase, conditions, container statuses, addresses)."""
    initialized = _initialized(view)
    phase = pod_phase(view.restart_policy, view.failed, initialized, view.containers)
    terminal = phase in ("Succeeded", "Failed")
    containers_ready = (
        initialized and bool(view.containers) and all(c.ready for c in view.containers)
    )
    if terminal:
        not_ready_reason = "PodCompleted"
    elif not initialized:
        not_ready_reason = "ContainersNotInitialized"
    else:
        not_ready_reason = "ContainersNotReady"
    ready_ok = containers_ready and not terminal
    wanted = {
        "PodReadyToStartContainers": (view.sandbox_ready and not terminal, ""),
        "Initialized": (initialized, "" if initialized else "ContainersNotInitialized"),
        "Ready": (ready_ok, "" if ready_ok else not_ready_reason),
        "ContainersReady": (ready_ok, "" if ready_ok else not_ready_reason),
        "PodScheduled": (True, ""),
    }
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": condition_list(previous_conditions, wanted, now),
        "hostIP": view.host_ip,
        "hostIPs": [{"ip": view.host_ip}],
        "containerStatuses": _status_list(view.containers, init=False),
    }
    if view.init_containers:
        status["initContainerStatuses"] = _status_list(view.init_containers, init=True)
    if view.pod_ip:
        status["podIP"] = view.pod_ip
        status["podIPs"] = [{"ip": view.pod_ip}]
    if view.start_time:
        status["startTime"] = view.start_time
    if view.reason:
        status["reason"] = view.reason
    if view.message:
        status["message"] = view.message
    return status
