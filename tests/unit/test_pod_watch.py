"""The pod watch hands a job to the reconciler only for pod events that change what the
reconcile decides on (pod_facts.fingerprint), and for deletions: at 200 jobs, the
scheduler's status updates of unschedulable pods were a reconcile each."""

from __future__ import annotations

from typing import Any

from kubetrain_operator.pod_watch import PodWatch

LABEL = "kubetrain.io/job-name"


def _pod(uid: str = "u1", phase: str = "Pending", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "namespace": "ns", "labels": {LABEL: "job-a"}},
        "status": {"phase": phase, **status},
    }


def _watch() -> tuple[PodWatch, list[tuple[str, str]]]:
    calls: list[tuple[str, str]] = []
    return PodWatch(LABEL, ["ns"], lambda ns, job: calls.append((ns, job))), calls


def test_only_events_that_change_a_decision_reconcile() -> None:
    watch, calls = _watch()
    watch._notify(_pod())  # ADDED: the pass that created it counted it Pending
    unschedulable = {"conditions": [{"type": "PodScheduled", "status": "False"}]}
    watch._notify(_pod(**unschedulable))  # the scheduler's verdict, retried
    watch._notify(_pod(**unschedulable))
    assert calls == []
    watch._notify(_pod(phase="Running", podIP="10.0.0.5"))
    assert calls == [("ns", "job-a")]
    terminated = {"name": "trainer", "state": {"terminated": {"exitCode": 65}}, "restartCount": 0}
    watch._notify(_pod(phase="Failed", podIP="10.0.0.5", containerStatuses=[terminated]))
    assert len(calls) == 2
    watch._notify(_pod(phase="Failed", podIP="10.0.0.5", containerStatuses=[terminated]))
    assert len(calls) == 2


def test_a_pod_first_seen_placed_reconciles() -> None:
    watch, calls = _watch()
    placed = _pod(phase="Running", podIP="10.0.0.5")
    placed["spec"] = {"nodeName": "node-0"}
    watch._notify(placed)  # e.g. listed after the operator started
    assert calls == [("ns", "job-a")]


def test_a_deletion_always_reconciles_and_a_pod_back_under_its_uid_is_new() -> None:
    watch, calls = _watch()
    watch._notify(_pod())
    deleting = _pod()
    deleting["metadata"]["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    watch._notify(deleting)
    watch._notify(deleting, deleted=True)
    watch._notify(_pod())  # listed again after a gap, unplaced: nothing to decide on
    assert len(calls) == 2  # the deletion's start and its end


def test_a_relist_forgets_pods_deleted_while_nobody_watched() -> None:
    watch, calls = _watch()
    watch._notify(_pod("gone"))
    watch._notify(_pod("kept"))
    watch._forget_gone("ns", [_pod("kept")])
    assert set(watch._seen) == {"kept"}
    watch._notify(_pod("kept", phase="Running"))
    watch._notify(_pod("kept", phase="Running"))  # unchanged: no pass
    assert len(calls) == 1
