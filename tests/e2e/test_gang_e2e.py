"""Gang scheduling of TrainingJobs by the real coscheduling scheduler (scheduler-plugins
v0.31.8 from its Go module, localkube/coscheduling.py), and the startup deadline that
releases a gang without it. A node of its own with room for one gang of two (3 CPUs,
1 per worker): a second gang gets no pod bound, though one of its pods would fit,
until the first is gone; a gang without gang scheduling binds the pod that fits, and
`onStartupTimeout: Restart` releases it when the other never starts."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from kubetrain_devcluster.jobs import (
    apply_job,
    job_pods,
    job_status,
    short_job,
    wait_state,
)
from kubetrain_devcluster.operator import OperatorProcess, create_s3_secret
from localkube.api import MERGE_PATCH
from localkube.coscheduling import POD_GROUP_LABEL, SCHEDULER_NAME, Coscheduler
from localkube.kubelet import NodeSpec
from localkube.services import wait_until

if TYPE_CHECKING:
    from localkube.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODE_LABEL = "kubetrain.io/gang-test-node"
HELD_SECONDS = 8  # longer than the scheduler's permit wait: a gang held that long is held


@pytest.fixture(scope="module")
def gang_node(cluster: Cluster) -> Iterator[str]:
    """3 CPUs, tainted so that only this module's jobs land there; removed afterwards."""
    node = f"gang-{secrets.token_hex(3)}"
    cluster.add_node(NodeSpec(node, cpu="3", labels={NODE_LABEL: node}))
    try:
        taint = {"key": NODE_LABEL, "value": node, "effect": "NoSchedule"}
        body = {"spec": {"taints": [taint]}}
        cluster.api.request("PATCH", f"/api/v1/nodes/{node}", body, content_type=MERGE_PATCH)
        yield node
    finally:
        cluster.stop_node(node)
        cluster.api.request("DELETE", f"/api/v1/nodes/{node}")


@pytest.fixture(scope="module")
def coscheduler(cluster: Cluster) -> Iterator[Coscheduler]:
    # A 1 s backoff: once there is room, a held gang is tried again within a second.
    with Coscheduler.beside(cluster, permit_waiting_seconds=5, max_pod_backoff_seconds=1) as c:
        yield c


def _on_the_node(name: str, node: str, **spec: Any) -> dict[str, Any]:
    job = short_job(name)
    job["spec"]["template"] = {
        "spec": {
            "nodeSelector": {NODE_LABEL: node},
            "tolerations": [{"key": NODE_LABEL, "operator": "Equal", "value": node}],
        }
    }
    job["spec"].update(spec)
    return job


def _bound(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return [
        p["metadata"]["name"]
        for p in job_pods(cluster, namespace, name)
        if p["spec"].get("nodeName")
    ]


def test_a_second_gang_gets_no_pod_until_the_first_is_gone(
    cluster: Cluster,
    operator: OperatorProcess,
    namespace: str,
    gang_node: str,
    coscheduler: Coscheduler,
) -> None:
    create_s3_secret(cluster, namespace)
    first = _on_the_node("first", gang_node, scheduling={"gang": {}})
    first["spec"]["trainer"]["training"]["max_steps"] = 100_000  # runs until deleted
    apply_job(cluster, namespace, first)
    wait_state(cluster, operator, namespace, "first", state="Running", timeout=180)
    pod = job_pods(cluster, namespace, "first")[0]
    assert pod["spec"]["schedulerName"] == SCHEDULER_NAME
    assert pod["metadata"]["labels"][POD_GROUP_LABEL] == "first"

    # With a /dev/shm of its own (an emptyDir in memory): the workers train all the same.
    second = _on_the_node("second", gang_node, scheduling={"gang": {}}, shmSize="256Mi")
    apply_job(cluster, namespace, second)
    wait_until(
        lambda: len(job_pods(cluster, namespace, "second")) == 2,
        timeout=60,
        what="the second gang's pods",
    )
    held_until = time.monotonic() + HELD_SECONDS
    while time.monotonic() < held_until:  # one CPU is free: one pod would fit, none binds
        assert _bound(cluster, namespace, "second") == []
        time.sleep(0.5)

    cluster.kubectl("-n", namespace, "delete", "trainingjob", "first", "--wait=false")
    status = wait_state(cluster, operator, namespace, "second", state="Succeeded", timeout=600)
    assert status["progress"]["step"] == second["spec"]["trainer"]["training"]["max_steps"]
    assert status["restarts"]["total"] == 0
    volumes = job_pods(cluster, namespace, "second")[0]["spec"]["volumes"]
    assert {"medium": "Memory", "sizeLimit": "256Mi"} in [v.get("emptyDir") for v in volumes]


def test_without_gang_scheduling_the_startup_deadline_releases_a_half_placed_gang(
    cluster: Cluster,
    operator: OperatorProcess,
    namespace: str,
    gang_node: str,
) -> None:
    create_s3_secret(cluster, namespace)
    # Two CPUs taken by a pod of no job: one worker fits, the other never does.
    blocker = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "blocker"},
        "spec": {
            "nodeSelector": {NODE_LABEL: gang_node},
            "tolerations": [{"key": NODE_LABEL, "operator": "Equal", "value": gang_node}],
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["sleep", "3600"],
                    "resources": {"requests": {"cpu": "2"}},
                }
            ],
        },
    }
    cluster.api.request("POST", f"/api/v1/namespaces/{namespace}/pods", blocker)
    cluster.wait_for_pod(namespace, "blocker", timeout=60)
    policy = {"startupDeadlineSeconds": 30, "onStartupTimeout": "Restart"}
    apply_job(cluster, namespace, _on_the_node("half", gang_node, faultTolerance=policy))

    def released() -> bool:
        return (job_status(cluster, namespace, "half").get("restarts") or {}).get(
            "startupTimeout", 0
        ) >= 1

    wait_until(released, timeout=120, what="the half-placed gang released")
    status = job_status(cluster, namespace, "half")
    restarting = next(c for c in status["conditions"] if c["type"] == "Restarting")
    assert restarting["reason"] == "RestartStartupTimeout", restarting
    assert "Insufficient cpu" in restarting["message"], restarting
    assert status["restarts"]["total"] == status["restarts"]["startupTimeout"]
    assert status["state"] != "Failed"
