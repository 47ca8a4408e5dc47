"""Gang scheduling and the startup deadline (gang.py, builders, reconcile): pure."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from tests.unit.test_reconcile import NOW, SETTINGS, _job, _pod, _run, _status

from kubetrain_core.api import RecoveryStatus, TrainingJob
from kubetrain_core.pod_policy import fixed_problems
from kubetrain_operator import builders, gang
from kubetrain_operator.actions import CreateObject, DeletePods, Observed
from kubetrain_operator.reconcile import reconcile


def _gang_job(status: dict[str, Any] | None = None, **gang_spec: Any) -> TrainingJob:
    return _job(status, scheduling={"gang": gang_spec})


@pytest.mark.parametrize(
    ("pod_group", "api_version", "scheduler"),
    [
        ("Coscheduling", "scheduling.x-k8s.io/v1alpha1", "scheduler-plugins-scheduler"),
        ("Volcano", "scheduling.volcano.sh/v1beta1", "volcano"),
    ],
)
def test_the_pod_group_holds_the_whole_gang_and_every_pod_joins_it(
    pod_group: str, api_version: str, scheduler: str
) -> None:
    job = _gang_job(podGroup=pod_group, scheduleTimeoutSeconds=30, volcanoQueue="team-a")
    group = builders.build_pod_group(job)
    assert group is not None
    assert (group["apiVersion"], group["kind"]) == (api_version, "PodGroup")
    assert group["spec"]["minMember"] == job.spec.numNodes == 2
    assert group["metadata"]["ownerReferences"][0]["uid"] == "u1"  # deleted with the job
    if pod_group == "Coscheduling":
        assert group["spec"]["scheduleTimeoutSeconds"] == 30
    else:
        assert group["spec"]["queue"] == "team-a"
    for index in (0, 1):
        pod = builders.build_pod(job, index, RecoveryStatus(attempt=2), SETTINGS)
        meta = pod["metadata"]
        joined = {**meta["labels"], **meta["annotations"]}
        assert (
            joined.get("scheduling.x-k8s.io/pod-group", joined.get("scheduling.k8s.io/group-name"))
            == job.metadata.name
        )
        assert pod["spec"]["schedulerName"] == scheduler


def test_no_gang_no_group_and_a_single_pod_needs_none() -> None:
    plain = _job()
    assert builders.build_pod_group(plain) is None
    assert "schedulerName" not in builders.build_pod(plain, 0, RecoveryStatus(), SETTINGS)["spec"]
    single = _job(scheduling={"gang": {}}, numNodes=1)
    assert builders.build_pod_group(single) is None
    pod = builders.build_pod(single, 0, RecoveryStatus(), SETTINGS)
    assert "scheduling.x-k8s.io/pod-group" not in pod["metadata"]["labels"]


def test_a_scheduler_named_in_the_template_wins() -> None:
    job = _job(scheduling={"gang": {}}, template={"spec": {"schedulerName": "gang-b"}})
    assert (
        builders.build_pod(job, 1, RecoveryStatus(), SETTINGS)["spec"]["schedulerName"] == "gang-b"
    )


def test_the_pod_group_is_created_before_the_pods() -> None:
    observed = Observed(pods=[], service=False, config=None, now=NOW, signing_key="k")
    creates = [
        a.body["kind"]
        for a in reconcile(_gang_job(), observed, SETTINGS)
        if isinstance(a, CreateObject)
    ]
    assert creates.index("PodGroup") < creates.index("Pod")
    assert creates.count("PodGroup") == 1


def test_a_pod_group_label_in_the_template_is_refused_with_the_way_to_gang() -> None:
    spec = {"template": {"metadata": {"annotations": {"scheduling.k8s.io/group-name": "x"}}}}
    [problem] = fixed_problems(spec)
    assert "reserved for the operator" in problem and "spec.scheduling.gang" in problem


def test_a_missing_pod_group_api_says_what_to_install() -> None:
    group = builders.build_pod_group(_gang_job())
    assert group is not None
    message = gang.missing_api_message(group)
    assert "scheduling.x-k8s.io/v1alpha1" in message and "spec.scheduling.gang" in message


# --- the startup deadline ----------------------------------------------------------------


def _half_started(policy: dict[str, Any], restarts: int = 0) -> tuple[TrainingJob, list[Any]]:
    """Worker 0 running, worker 1 pending for an hour: a gang that did not fit."""
    status = {"state": "Created", "startTime": "2026-01-01T11:00:00Z",
              "restarts": {"total": restarts, "error": restarts}}  # fmt: skip
    job = _job(
        status, faultTolerance={"startupDeadlineSeconds": 60, "maxRestarts": restarts, **policy}
    )
    pending = _pod(1, "Pending", conditions=[{"type": "PodScheduled", "status": "False",
                   "reason": "Unschedulable", "message": "0/2 nodes are available"}])  # fmt: skip
    pending["metadata"]["creationTimestamp"] = (NOW - timedelta(hours=1)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    return job, [_pod(0, "Running"), pending]


def test_wait_reports_the_schedulers_words_and_keeps_the_gang() -> None:
    job, pods = _half_started({"onStartupTimeout": "Wait"})
    actions = _run(job, pods)
    running = next(c for c in _status(actions).conditions if c.type == "Running")
    assert (running.status, running.reason) == ("False", "PodsNotStarting")
    assert "0/2 nodes are available" in running.message
    assert not [a for a in actions if isinstance(a, DeletePods)]


def test_restart_releases_the_whole_gang_without_spending_the_restart_budget() -> None:
    job, pods = _half_started({"onStartupTimeout": "Restart"}, restarts=1)  # budget spent
    actions = _run(job, pods)
    st = _status(actions)
    [delete] = [a for a in actions if isinstance(a, DeletePods)]
    assert sorted(delete.names) == sorted(p["metadata"]["name"] for p in pods)
    assert st.restarts.startupTimeout == 1 and st.restarts.total == 2
    assert st.recovery.attempt == 1 and st.recovery.restartAfter is not None
    assert not any(c.type == "Failed" and c.status == "True" for c in st.conditions)
    restarting = next(c for c in st.conditions if c.type == "Restarting")
    assert restarting.reason == "RestartStartupTimeout" and "0/2 nodes" in restarting.message


def test_fail_fails_the_job_and_deletes_its_pods() -> None:
    job, pods = _half_started({"onStartupTimeout": "Fail"})
    actions = _run(job, pods)
    failed = next(c for c in _status(actions).conditions if c.type == "Failed")
    assert failed.reason == "StartupDeadlineExceeded"
    assert [a for a in actions if isinstance(a, DeletePods)]
