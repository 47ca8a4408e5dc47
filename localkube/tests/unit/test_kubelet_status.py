"""Pod phase, conditions and container statuses built by the process kubelet."""

from __future__ import annotations

import pytest

from localkube.kubelet.status import (
    RUNNING,
    TERMINATED,
    WAITING,
    ContainerRecord,
    PodView,
    build_status,
    condition_list,
    container_will_restart,
    exit_code_of,
    pod_phase,
    termination_message,
)

NOW = "2026-01-01T00:00:10Z"


def _rec(state: str, exit_code: int = 0, started: bool = True, **kw: object) -> ContainerRecord:
    rec = ContainerRecord("main", state=state, exit_code=exit_code, **kw)  # type: ignore[arg-type]
    rec.started_at = "2026-01-01T00:00:00Z" if started else ""
    if state == TERMINATED:
        rec.reason = "Completed" if exit_code == 0 else "Error"
        rec.finished_at = "2026-01-01T00:00:05Z"
    return rec


@pytest.mark.parametrize(
    ("policy", "state", "code", "phase"),
    [
        ("Never", RUNNING, 0, "Running"),
        ("Never", TERMINATED, 0, "Succeeded"),
        ("Never", TERMINATED, 3, "Failed"),
        ("OnFailure", TERMINATED, 0, "Succeeded"),
        ("OnFailure", TERMINATED, 1, "Running"),  # will be restarted
        ("Always", TERMINATED, 0, "Running"),
        ("Always", TERMINATED, 137, "Running"),
    ],
)
def test_pod_phase(policy: str, state: str, code: int, phase: str) -> None:
    assert pod_phase(policy, False, True, [_rec(state, code)]) == phase


def test_pod_phase_pending_until_started_and_initialized() -> None:
    assert pod_phase("Always", False, True, [_rec(WAITING, started=False)]) == "Pending"
    assert pod_phase("Always", False, False, [_rec(RUNNING)]) == "Pending"
    # Waiting between restarts (CrashLoopBackOff) is still a running pod.
    assert pod_phase("Always", False, True, [_rec(WAITING, restart_count=1)]) == "Running"
    assert pod_phase("Never", True, False, [_rec(WAITING, started=False)]) == "Failed"


def test_pod_phase_waits_for_all_containers() -> None:
    done, running = _rec(TERMINATED, 1), _rec(RUNNING)
    assert pod_phase("Never", False, True, [done, running]) == "Running"
    assert pod_phase("Never", False, True, [done, _rec(TERMINATED, 0)]) == "Failed"


def test_exit_codes() -> None:
    assert exit_code_of(0) == (0, 0)
    assert exit_code_of(3) == (3, 0)
    assert exit_code_of(-9) == (137, 9)
    assert exit_code_of(-15) == (143, 15)


def test_restart_policy() -> None:
    assert container_will_restart("Always", 0)
    assert container_will_restart("OnFailure", 1)
    assert not container_will_restart("OnFailure", 0)
    assert not container_will_restart("Never", 1)


def test_termination_message_prefers_file_then_logs_on_error() -> None:
    log = b"".join(f"line {i}\n".encode() for i in range(200))
    assert termination_message(b'{"reason":"nan"}', log, 1, "FallbackToLogsOnError") == (
        '{"reason":"nan"}'
    )
    fallback = termination_message(b"", log, 1, "FallbackToLogsOnError")
    assert fallback.endswith("line 199\n")
    assert "line 119\n" not in fallback  # only the last 80 lines
    assert termination_message(b"", log, 0, "FallbackToLogsOnError") == ""
    assert termination_message(b"", log, 1, "File") == ""
    assert len(termination_message(b"x" * 10000, b"", 1, None)) == 4096


def test_condition_transition_time_kept_while_status_unchanged() -> None:
    first = condition_list([], {"Ready": (False, "ContainersNotReady")}, "T1")
    same = condition_list(first, {"Ready": (False, "ContainersNotReady")}, "T2")
    flipped = condition_list(same, {"Ready": (True, "")}, "T3")
    assert first[0]["lastTransitionTime"] == "T1"
    assert same[0]["lastTransitionTime"] == "T1"
    assert first[0]["reason"] == "ContainersNotReady"
    assert flipped[0] == {
        "type": "Ready",
        "status": "True",
        "reason": None,  # clears the old reason in the API object
        "lastProbeTime": None,
        "lastTransitionTime": "T3",
    }


def _conds(status: dict[str, object]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}  # type: ignore[attr-defined]


def test_build_status_running_ready() -> None:
    rec = _rec(RUNNING)
    rec.ready = True
    view = PodView("Never", host_ip="10.213.0.1", pod_ip="10.213.0.4", sandbox_ready=True)
    view.containers = [rec]
    status = build_status(view, [], NOW)
    assert status["phase"] == "Running"
    assert status["podIP"] == "10.213.0.4"
    assert status["podIPs"] == [{"ip": "10.213.0.4"}]
    assert status["hostIP"] == "10.213.0.1"
    assert _conds(status) == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }
    [cs] = status["containerStatuses"]
    assert cs["state"] == {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    assert cs["ready"] is True
    assert cs["restartCount"] == 0


def test_build_status_failed_with_message_and_last_state() -> None:
    rec = _rec(TERMINATED, 137, signal=9, message="killed")
    rec.restart_count = 2
    rec.last_terminated = {"exitCode": 1, "reason": "Error"}
    view = PodView("Never", host_ip="10.213.0.1", pod_ip="10.213.0.4")
    view.containers = [rec]
    status = build_status(view, [], NOW)
    assert status["phase"] == "Failed"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "False"
    assert conds["Ready"]["reason"] == "PodCompleted"
    [cs] = status["containerStatuses"]
    term = cs["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term["signal"], term["message"]) == (
        137,
        "Error",
        9,
        "killed",
    )
    assert cs["lastState"] == {"terminated": {"exitCode": 1, "reason": "Error"}}
    assert cs["restartCount"] == 2


def test_build_status_pending_with_init_containers() -> None:
    init = _rec(RUNNING)
    main = ContainerRecord("main", reason="PodInitializing")
    view = PodView("Always", host_ip="10.213.0.1", pod_ip="10.213.0.4", sandbox_ready=True)
    view.init_containers, view.containers = [init], [main]
    status = build_status(view, [], NOW)
    assert status["phase"] == "Pending"
    assert _conds(status)["Initialized"] == "False"
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert status["initContainerStatuses"][0]["ready"] is False
