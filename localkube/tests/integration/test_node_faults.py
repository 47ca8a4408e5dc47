"""Faults the harness injects reach the control plane the way real ones do."""

from __future__ import annotations

import json
import secrets
import signal
from typing import Any

import pytest

from localkube.cluster import Cluster, Kubectl
from localkube.kubelet import NodeSpec
from localkube.services import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

_SLEEP = ["python", "-c", "import time; time.sleep(3600)"]


def _pod(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "kubetrain/test:none", "command": _SLEEP}],
            **spec,
        },
    }


def _create(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input_text=json.dumps(obj))


def _node_ready_status(cluster: Cluster, name: str) -> str:
    node = cluster.api.get(f"/api/v1/nodes/{name}")
    for condition in node["status"].get("conditions", []):
        if condition["type"] == "Ready":
            status: str = condition["status"]
            return status
    return "Missing"


def test_stopped_node_turns_not_ready_and_its_pods_are_evicted(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    # A node of its own, so the session's three nodes stay healthy for other tests.
    node = f"victim-{secrets.token_hex(3)}"
    cluster.add_node(NodeSpec(node, labels={"kubetrain.io/test-node": node}))
    try:
        # Short tolerations instead of the default 300 s that admission adds.
        tolerations = [
            {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}
            for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
        ]
        _create(
            kubectl,
            namespace,
            _pod("doomed", nodeSelector={"kubetrain.io/test-node": node}, tolerations=tolerations),
        )
        pod = cluster.wait_for_pod(namespace, "doomed")
        assert pod["spec"]["nodeName"] == node

        cluster.stop_node(node)
        wait_until(
            lambda: _node_ready_status(cluster, node) != "True",
            timeout=60,
            what=f"node {node} to turn NotReady",
        )

        def evicted() -> bool:
            body = cluster.api.get_or_none(f"/api/v1/namespaces/{namespace}/pods/doomed")
            return body is None or body["metadata"].get("deletionTimestamp") is not None

        wait_until(evicted, timeout=60, what="the taint-eviction controller to delete the pod")
        taints = {t["key"] for t in cluster.api.get(f"/api/v1/nodes/{node}")["spec"]["taints"]}
        assert taints & {"node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"}
    finally:
        # The Node object outlives its kubelet; remove it so pod GC cleans up after it.
        cluster.api.request("DELETE", f"/api/v1/nodes/{node}")


def test_killed_pod_reports_the_signal(cluster: Cluster, namespace: str, kubectl: Kubectl) -> None:
    _create(kubectl, namespace, _pod("victim"))
    cluster.wait_for_pod(namespace, "victim")

    cluster.kill_pod(namespace, "victim", signal.SIGKILL)

    pod = cluster.wait_for_pod(namespace, "victim", phases=("Failed",))
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 128 + signal.SIGKILL


def test_deleting_an_owner_garbage_collects_its_dependents(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    _create(
        kubectl,
        namespace,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}, "data": {}},
    )
    owner = cluster.api.get(f"/api/v1/namespaces/{namespace}/configmaps/owner")
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    for name in ("dependent-a", "dependent-b"):
        _create(
            kubectl,
            namespace,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "ownerReferences": [reference]},
                "data": {},
            },
        )
    assert "dependent-a" in kubectl("get", "configmaps", "-n", namespace, "-o", "name").stdout

    kubectl("delete", "configmap", "owner", "-n", namespace, "--cascade=background")

    def collected() -> bool:
        names = kubectl("get", "configmaps", "-n", namespace, "-o", "name").stdout.split()
        return not {"configmap/dependent-a", "configmap/dependent-b"} & set(names)

    wait_until(collected, timeout=60, what="the garbage collector to delete the dependents")


def test_control_plane_works_after_an_apiserver_restart(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    _create(kubectl, namespace, _pod("before"))
    cluster.wait_for_pod(namespace, "before")

    cluster.restart_apiserver()

    # Stored state survived, and kubelets and the scheduler reconnected.
    assert cluster.api.get(f"/api/v1/namespaces/{namespace}/pods/before")["status"]["phase"] == (
        "Running"
    )
    _create(kubectl, namespace, _pod("after"))
    pod = cluster.wait_for_pod(namespace, "after", timeout=90)
    assert pod["spec"]["nodeName"]
