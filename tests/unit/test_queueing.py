"""A TrainingJob through Kueue's pod groups (queueing.py, builders, reconcile): pure."""

from __future__ import annotations

from typing import Any

from tests.unit.test_reconcile import NOW, SETTINGS, _job, _pod, _status

from kubetrain_core.api import RecoveryStatus, TrainingJob
from kubetrain_core.pod_policy import fixed_problems
from kubetrain_operator import builders, queueing
from kubetrain_operator.actions import Observed
from kubetrain_operator.reconcile import reconcile


def _queued_job(status: dict[str, Any] | None = None) -> TrainingJob:
    job = _job(status)
    extra = job.metadata.model_extra or {}
    extra["labels"] = {queueing.QUEUE_LABEL: "team-a"}
    return job


def test_each_attempts_gang_is_one_pod_group_of_its_size() -> None:
    job = _queued_job()
    pods = [builders.build_pod(job, i, RecoveryStatus(attempt=3), SETTINGS) for i in (0, 1)]
    for pod in pods:
        labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
        assert labels[queueing.QUEUE_LABEL] == "team-a"
        assert labels[queueing.GROUP_LABEL] == f"{job.metadata.name}-3"  # a new group per attempt
        assert annotations[queueing.GROUP_COUNT_ANNOTATION] == "2"
        assert annotations[queueing.RETRIABLE_ANNOTATION] == "false"
    plain = builders.build_pod(_job(), 0, RecoveryStatus(), SETTINGS)
    assert not [k for k in plain["metadata"]["labels"] if k.startswith("kueue.x-k8s.io/")]


def test_a_gated_gang_is_queued_not_failing_to_start_and_admission_clears_it() -> None:
    job = _queued_job({"state": "Created", "startTime": "2026-01-01T11:00:00Z"})
    gated = [_pod(i, "Pending") for i in (0, 1)]
    for pod in gated:  # long past the startup deadline: still only waiting its turn
        pod["metadata"]["creationTimestamp"] = "2026-01-01T10:00:00Z"
        pod["spec"]["schedulingGates"] = [{"name": queueing.ADMISSION_GATE}]
    config = builders.build_configmap(job, SETTINGS)["data"]
    why = "couldn't assign flavors to pod set main: insufficient unused quota for cpu"
    observed = Observed(pods=gated, service=True, config=config, now=NOW, queued=why)
    st = _status(reconcile(job, observed, SETTINGS))
    queued = next(c for c in st.conditions if c.type == "Queued")
    assert (queued.status, queued.reason) == ("True", "WaitingForAdmission")
    assert why in queued.message and st.state == "Queued"
    assert not any(c.reason == "PodsNotStarting" for c in st.conditions)

    running = [_pod(i, "Running") for i in (0, 1)]
    later = _queued_job(st.model_dump(mode="json"))
    observed = Observed(pods=running, service=True, config=config, now=NOW)
    st = _status(reconcile(later, observed, SETTINGS))
    queued = next(c for c in st.conditions if c.type == "Queued")
    assert (queued.status, queued.reason) == ("False", "Admitted") and st.state == "Running"


def test_the_workloads_words_say_why_it_waits() -> None:
    workload = {"status": {"conditions": [
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "no quota"}
    ]}}  # fmt: skip
    assert queueing.waiting_reason(workload) == "no quota"
    assert "Workload" in queueing.waiting_reason(None)


def test_kueues_labels_in_the_pod_template_are_refused_with_the_way_to_queue() -> None:
    spec = {"template": {"metadata": {"labels": {queueing.GROUP_LABEL: "mine"}}}}
    [problem] = fixed_problems(spec)
    assert "reserved for the operator" in problem and queueing.QUEUE_LABEL in problem
