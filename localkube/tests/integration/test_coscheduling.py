"""Coscheduling beside the session's cluster: on a node with room for one gang of two,
a second gang gets no pod bound, though one of its pods would fit, until the first
gang is gone; the default scheduler binds that one pod."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from localkube.api import MERGE_PATCH
from localkube.cluster import Cluster
from localkube.coscheduling import CRD_NAME, POD_GROUP_LABEL, SCHEDULER_NAME, Coscheduler
from localkube.kubelet import NodeSpec
from localkube.services import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

_NODE_LABEL = "kubetrain.io/test-node"
# Each pod asks for one CPU of the node's three: a gang of two fits, two gangs do not.
_NODE_CPU = "3"
# A pod of the second gang that fits waits at Permit until its sibling is found not to
# fit (the gang is rejected then, and tried again every few seconds) or until this
# times out; the test watches for longer than that, and none is bound all the while.
_PERMIT_SECONDS = 5
_HELD_SECONDS = 6


@pytest.fixture
def gang_node(cluster: Cluster) -> Iterator[str]:
    """A node of its own with 3 CPUs, tainted, so the session's nodes and its other
    tests stay out of the way; removed afterwards."""
    node = f"gang-{secrets.token_hex(3)}"
    cluster.add_node(NodeSpec(node, cpu=_NODE_CPU, labels={_NODE_LABEL: node}))
    try:
        taint = {"key": _NODE_LABEL, "value": node, "effect": "NoSchedule"}
        patch = {"spec": {"taints": [taint]}}
        cluster.api.request("PATCH", f"/api/v1/nodes/{node}", patch, content_type=MERGE_PATCH)
        yield node
    finally:
        cluster.stop_node(node)
        cluster.api.request("DELETE", f"/api/v1/nodes/{node}")


def _pod(name: str, node: str, group: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "nodeSelector": {_NODE_LABEL: node},
        "tolerations": [{"key": _NODE_LABEL, "operator": "Equal", "value": node}],
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {
                "name": "main",
                "image": "busybox",
                "command": ["sleep", "3600"],
                "resources": {"requests": {"cpu": "1"}},
            }
        ],
    }
    labels = {}
    if group is not None:
        spec["schedulerName"] = SCHEDULER_NAME
        labels[POD_GROUP_LABEL] = group
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }


def _bound(cluster: Cluster, namespace: str, names: list[str]) -> list[str]:
    pods = [cluster.api.get(f"/api/v1/namespaces/{namespace}/pods/{n}") for n in names]
    return [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName")]


def _unschedulable(cluster: Cluster, namespace: str, name: str) -> bool:
    """The scheduler tried the pod and found no place for it (PodScheduled False)."""
    pod = cluster.api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "PodScheduled" and c["status"] == "False" for c in conditions)


def test_a_gang_is_bound_whole_or_not_at_all(
    cluster: Cluster, namespace: str, gang_node: str
) -> None:
    pods = f"/api/v1/namespaces/{namespace}/pods"

    def create(name: str, group: str | None = None) -> None:
        cluster.api.request("POST", pods, _pod(name, gang_node, group))

    def nodes_of(*names: str) -> list[str]:  # once they run
        return [cluster.wait_for_pod(namespace, n, timeout=60)["spec"]["nodeName"] for n in names]

    # Backoff of 1 s: once there is room, gang b is tried again within a second.
    options = {"permit_waiting_seconds": _PERMIT_SECONDS, "max_pod_backoff_seconds": 1}
    with Coscheduler.beside(cluster, **options) as gang:
        # Both groups first: the scheduler must know b before b's pods come.
        gang.pod_group(namespace, "a", min_member=2)
        gang.pod_group(namespace, "b", min_member=2)
        for name in ("a-0", "a-1"):
            create(name, "a")
        assert nodes_of("a-0", "a-1") == [gang_node, gang_node]

        # One CPU is left: b-0 or b-1 would fit alone, the gang does not.
        b = ["b-0", "b-1"]
        for name in b:
            create(name, "b")
        watched = [gang.process] if gang.process else []
        wait_until(
            lambda: all(_unschedulable(cluster, namespace, n) for n in b),
            timeout=30,
            what="the scheduler to try gang b",
            processes=watched,
        )
        held_until = time.monotonic() + _HELD_SECONDS
        while time.monotonic() < held_until:
            assert _bound(cluster, namespace, b) == [], "a pod of gang b was bound alone"
            time.sleep(0.5)

        # Not a capacity mistake: the default scheduler puts one of two pods in that CPU.
        solo = ["solo-0", "solo-1"]
        for name in solo:
            create(name)
        wait_until(
            lambda: (
                len(_bound(cluster, namespace, solo)) == 1
                and any(_unschedulable(cluster, namespace, n) for n in solo)
            ),
            timeout=30,
            what="the default scheduler to bind one of two pods",
        )
        assert _bound(cluster, namespace, b) == []

        # Room for gang b: both its pods are bound, together.
        for name in (*solo, "a-0", "a-1"):
            cluster.api.request("DELETE", f"{pods}/{name}")
        assert nodes_of(*b) == [gang_node, gang_node]

    # The CRD went with the scheduler.
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    assert cluster.api.get_or_none(f"{crds}/{CRD_NAME}") is None
