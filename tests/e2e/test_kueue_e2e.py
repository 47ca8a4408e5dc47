"""TrainingJobs queued by the real Kueue (localkube/kueue.py, v0.17.0 from its Go
module): each attempt's gang is one Kueue pod group, admitted all or nothing. Quota for
one job's gang, two jobs: the second waits `Queued`, in Kueue's words, with every pod
gated, until the first finished; then it runs to the end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from kubetrain_devcluster.jobs import (
    apply_job,
    checkpoint_steps,
    job_pods,
    job_status,
    short_job,
    wait_state,
)
from kubetrain_devcluster.operator import OperatorProcess, create_s3_secret
from localkube.kueue import ADMISSION_GATE, QUEUE_LABEL, Kueue
from localkube.services import wait_until

if TYPE_CHECKING:
    from localkube.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLUSTER_QUEUE = "kubetrain-e2e"


@pytest.fixture(scope="module")
def kueue(cluster: Cluster) -> Iterator[Kueue]:
    with Kueue.beside(cluster) as running:
        running.resource_flavor()
        # The example's gang: 2 workers x (1 CPU, 2Gi): quota for one gang, not two.
        running.cluster_queue(CLUSTER_QUEUE, cpu="3", memory="6Gi")
        yield running


def _queued(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    conditions = job_status(cluster, namespace, name).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Queued"), None)


def test_a_second_job_waits_queued_until_the_first_has_finished(
    cluster: Cluster, operator: OperatorProcess, namespace: str, kueue: Kueue
) -> None:
    kueue.local_queue(namespace, cluster_queue=CLUSTER_QUEUE)
    create_s3_secret(cluster, namespace)
    first, second = short_job("first"), short_job("second")
    for job in (first, second):
        job["metadata"]["labels"] = {QUEUE_LABEL: "default"}
    apply_job(cluster, namespace, first)
    wait_state(cluster, operator, namespace, "first", state="Running", timeout=180)
    apply_job(cluster, namespace, second)

    def queued_for_quota() -> bool:
        # Kueue writes its reason on the Workload a moment after making it; the operator
        # copies it at its next pass (a queued job is resynced every 10 s).
        cond = _queued(cluster, namespace, "second") or {}
        return cond.get("status") == "True" and "quota" in cond.get("message", "")

    wait_until(queued_for_quota, timeout=120, what="the second job Queued for quota")
    assert job_status(cluster, namespace, "second")["state"] == "Queued"
    pods = job_pods(cluster, namespace, "second")
    assert len(pods) == 2 and all(  # the whole gang held back, not half of it
        ADMISSION_GATE in [g["name"] for g in p["spec"].get("schedulingGates") or []] for p in pods
    )

    done = wait_state(cluster, operator, namespace, "first", state="Succeeded", timeout=600)
    status = wait_state(cluster, operator, namespace, "second", state="Succeeded", timeout=600)
    admitted = _queued(cluster, namespace, "second")
    assert admitted is not None and admitted["status"] == "False", admitted
    assert admitted["reason"] == "Admitted"
    assert status["allRunningTime"] >= done["completionTime"]  # it ran after the first
    assert status["progress"]["step"] == second["spec"]["trainer"]["training"]["max_steps"]
    assert status["restarts"]["total"] == 0


@pytest.fixture
def priorities(cluster: Cluster) -> Iterator[dict[str, str]]:
    names = {"low": "kubetrain-e2e-low", "high": "kubetrain-e2e-high"}
    for key, value in (("low", 10), ("high", 1000)):
        body = {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": names[key]},
            "value": value,
        }
        cluster.api.request("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", body)
    yield names
    for name in names.values():
        cluster.api.request("DELETE", f"/apis/scheduling.k8s.io/v1/priorityclasses/{name}")


def test_a_higher_priority_job_preempts_and_the_preempted_one_resumes_from_its_save(
    cluster: Cluster,
    operator: OperatorProcess,
    namespace: str,
    kueue: Kueue,
    priorities: dict[str, str],
) -> None:
    queue = f"{CLUSTER_QUEUE}-preempting"
    kueue.cluster_queue(
        queue, cpu="3", memory="6Gi", preemption={"withinClusterQueue": "LowerPriority"}
    )
    kueue.local_queue(namespace, cluster_queue=queue)
    create_s3_secret(cluster, namespace)
    low, high = short_job("low"), short_job("high")
    low["spec"]["trainer"]["training"]["max_steps"] = 300
    low["spec"]["checkpoint"]["intervalSteps"] = 10_000  # only a SIGTERM saves before the end
    for job, priority in ((low, priorities["low"]), (high, priorities["high"])):
        job["metadata"]["labels"] = {QUEUE_LABEL: "default"}
        job["spec"].setdefault("template", {}).setdefault("spec", {})
        job["spec"]["template"]["spec"]["priorityClassName"] = priority
    apply_job(cluster, namespace, low)
    wait_state(cluster, operator, namespace, "low", state="Running", timeout=180)
    wait_until(
        lambda: (job_status(cluster, namespace, "low").get("progress") or {}).get("step", 0) >= 20,
        timeout=300,
        what="the low-priority job at step 20",
    )
    apply_job(cluster, namespace, high)

    wait_state(cluster, operator, namespace, "high", state="Succeeded", timeout=600)
    status = wait_state(cluster, operator, namespace, "low", state="Succeeded", timeout=900)
    assert status["restarts"]["preempted"] == 1 and status["restarts"]["total"] == 1, status
    assert "Preempted" in status["recovery"]["lastFailure"], status["recovery"]
    assert status["progress"]["step"] == 300
    # The first attempt's only checkpoint is its SIGTERM save; the second resumed there.
    saved = checkpoint_steps(cluster, namespace, "low")
    assert len(saved) == 2 and 20 <= saved[0] < 300 and saved[-1] == 300, saved
    log = cluster.pod_log_path(namespace, "low-0", "trainer").read_text(errors="replace")
    assert f"at step {saved[0]}" in log and "resumed from" in log, log[-2000:]
