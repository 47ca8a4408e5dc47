"""Kueue beside the session's cluster: quota for one pod admits one pod at a time, and
stopping Kueue leaves no webhook, CRD or finalizer behind."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from localkube.api import condition, is_true
from localkube.cluster import Cluster, Kubectl
from localkube.kueue import (
    ADMISSION_GATE,
    GROUP,
    MANAGED_LABEL,
    POD_FINALIZER,
    QUEUE_LABEL,
    WEBHOOK_CONFIGS,
    Kueue,
)
from localkube.services import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

_RUN_SECONDS = 12  # how long the first pod holds the quota


def _pod(name: str, seconds: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {QUEUE_LABEL: "default"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["sleep", str(seconds)],
                    "resources": {"requests": {"cpu": "1"}},
                }
            ],
        },
    }


def _gates(pod: dict[str, Any]) -> list[str]:
    return [g["name"] for g in pod["spec"].get("schedulingGates") or []]


def _workload_of(kueue: Kueue, namespace: str, pod: str) -> dict[str, Any] | None:
    for workload in kueue.workloads(namespace):
        owners = workload["metadata"].get("ownerReferences") or []
        if any(o["kind"] == "Pod" and o["name"] == pod for o in owners):
            return workload
    return None


def test_quota_for_one_pod_admits_the_second_when_the_first_finishes(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    pods = f"/api/v1/namespaces/{namespace}/pods"
    queue = f"cq-{namespace}"
    kueue = Kueue.beside(cluster)
    with kueue:
        kueue.resource_flavor()
        kueue.cluster_queue(queue, cpu="1", cohort=f"cohort-{namespace}")
        kueue.local_queue(namespace, cluster_queue=queue)

        kubectl(
            "create", "-n", namespace, "-f", "-", input_text=json.dumps(_pod("first", _RUN_SECONDS))
        )
        first = cluster.wait_for_pod(namespace, "first", timeout=60)
        assert ADMISSION_GATE not in _gates(first)
        assert first["metadata"]["labels"][MANAGED_LABEL] == "true"
        assert POD_FINALIZER in first["metadata"]["finalizers"]
        assert is_true(_workload_of(kueue, namespace, "first"), "Admitted")
        # A v1beta1 read goes through Kueue's conversion webhook: v1beta2 (stored) renamed
        # `cohort` to `cohortName`.
        old = cluster.api.get(f"/apis/{GROUP}/v1beta1/clusterqueues/{queue}")
        assert old["spec"]["cohort"] == f"cohort-{namespace}"

        kubectl("create", "-n", namespace, "-f", "-", input_text=json.dumps(_pod("second", 5)))
        # Its Workload is made, tried and found without quota while the first runs.
        wait_until(
            lambda: (
                condition(_workload_of(kueue, namespace, "second") or {}, "QuotaReserved")
                is not None
            ),
            timeout=30,
            what="the second pod's Workload to be tried",
            processes=[kueue.process] if kueue.process else [],
        )
        while True:
            second = cluster.api.get(f"{pods}/second")
            workload = _workload_of(kueue, namespace, "second")
            # Read after the second: if the first still runs, the quota was in use.
            if cluster.api.get(f"{pods}/first")["status"]["phase"] != "Running":
                break
            assert ADMISSION_GATE in _gates(second), "admitted while the quota was in use"
            assert not second["spec"].get("nodeName")
            assert not is_true(workload, "QuotaReserved")
            assert not is_true(workload, "Admitted")
            pending = condition(workload or {}, "QuotaReserved") or {}
            assert pending.get("reason") == "Pending", pending
            assert "insufficient unused quota for cpu" in pending.get("message", ""), pending
            time.sleep(0.5)

        cluster.wait_for_pod(namespace, "first", phases=("Succeeded",), timeout=60)
        second = cluster.wait_for_pod(
            namespace, "second", phases=("Running", "Succeeded"), timeout=60
        )
        assert ADMISSION_GATE not in _gates(second)
        assert is_true(_workload_of(kueue, namespace, "second"), "Admitted")
        cluster.wait_for_pod(namespace, "second", phases=("Succeeded",), timeout=60)
        # A finished pod's Workload is Finished; Kueue then lets the pod go.
        wait_until(
            lambda: is_true(_workload_of(kueue, namespace, "first"), "Finished"),
            timeout=30,
            what="the first Workload to be Finished",
        )

    # Nothing of Kueue is left in the session's cluster.
    for collection in WEBHOOK_CONFIGS.values():
        configs = cluster.api.get(f"/apis/admissionregistration.k8s.io/v1/{collection}")
        assert not [c for c in configs["items"] if c["metadata"]["name"].startswith("kueue-")]
    crds = cluster.api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")["items"]
    assert not [c for c in crds if c["spec"]["group"] == GROUP]
    for pod in cluster.api.get(pods)["items"]:
        assert POD_FINALIZER not in (pod["metadata"].get("finalizers") or [])
    # And pods are created as before: no webhook stands in the way.
    kubectl("create", "-n", namespace, "-f", "-", input_text=json.dumps(_pod("after", 1)))
    after = cluster.wait_for_pod(namespace, "after", phases=("Running", "Succeeded"), timeout=60)
    assert not _gates(after)
