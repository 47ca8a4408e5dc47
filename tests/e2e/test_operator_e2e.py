"""The operator end to end on the local cluster: real API server, scheduler,
controller-manager (garbage collector), process kubelets, MinIO.

The operator runs as a subprocess authenticated as its own ServiceAccount (a
TokenRequest token bound by operator/deploy/rbac.yaml), never as cluster admin.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from kubetrain_devcluster.jobs import (
    ATTEMPT_LABEL,
    EXAMPLE,
    JOB_LABEL,
    apply_job,
    checkpoint_steps,
    example_job,
    get_job,
    job_pods,
    job_status,
    merge,
    resumed_at_or_after,
    short_job,
    wait_checkpoint,
    wait_state,
)
from kubetrain_devcluster.operator import OperatorProcess, create_s3_secret, install
from localkube.services import wait_until

if TYPE_CHECKING:
    from localkube.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


# --- tests -----------------------------------------------------------------------------


def test_invalid_job_is_rejected_naming_the_field(cluster: Cluster, namespace: str) -> None:
    install(cluster)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("spec.numNodes", {"numNodes": 0}),
        ("spec.trainer.data.seq_len", {"trainer": {"data": {"seq_len": 4096}}}),
        (
            "spec.numProcPerNode",
            {"numProcPerNode": 4, "resources": {"limits": {"nvidia.com/gpu": 2}}},
        ),
        (
            "spec.trainer.optimization.optimizer.lr",
            {"trainer": {"optimization": {"optimizer": {"lr": -1}}}},
        ),
        ("spec.checkpoint.uri", {"checkpoint": {"uri": "ftp://x/y"}}),
    ]
    for field, change in cases:
        job = example_job()
        merge(job["spec"], change)
        result = cluster.kubectl(
            "-n", namespace, "apply", "-f", "-", input_text=yaml.safe_dump(job), check=False
        )
        assert result.returncode != 0, f"{field}: accepted"
        assert field in result.stderr, f"{field}: {result.stderr}"
    assert cluster.kubectl("-n", namespace, "get", "tj", "-o", "name").stdout.strip() == ""


def test_example_trains_to_success_survives_an_operator_restart_and_cleans_up(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    name = example["metadata"]["name"]
    create_s3_secret(cluster, namespace)
    cluster.kubectl("-n", namespace, "apply", "-f", str(EXAMPLE))
    wait_state(cluster, operator, namespace, name, state="Running", timeout=120)
    wait_until(
        lambda: (job_status(cluster, namespace, name).get("progress") or {}).get("step", 0) > 0,
        timeout=180,
        what="progress in status",
        interval=1.0,
    )
    pods = job_pods(cluster, namespace, name)
    assert sorted(p["metadata"]["name"] for p in pods) == [f"{name}-0", f"{name}-1"]
    uids = {p["metadata"]["uid"] for p in pods}

    # kubectl get tj: the printer columns, via the short name.
    table = cluster.kubectl("-n", namespace, "get", "tj").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "NODES", "STEP", "LOSS", "RESTARTS", "AGE"]
    row = table[1].split()
    assert row[:3] == [name, "Running", "2"] and int(row[3]) > 0 and float(row[4]) > 0

    # The operator dies mid-run and comes back: same pods, no duplicates.
    operator.kill()
    operator.start()
    time.sleep(10)  # several reconciles (timer 3 s + pod events); then look
    pods = job_pods(cluster, namespace, name)
    assert {p["metadata"]["uid"] for p in pods} == uids
    # The operator writes the status only: no finalizer, no bookkeeping annotations.
    meta = get_job(cluster, namespace, name)["metadata"]
    assert not meta.get("finalizers"), meta
    assert not [k for k in meta.get("annotations") or {} if k.startswith("kubetrain.io/")]

    status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=900)
    assert status["completionTime"] and status["startTime"]
    total = example["spec"]["trainer"]["training"]["max_steps"]
    assert status["progress"]["step"] == total
    assert status["progress"]["lastCheckpoint"]["uri"].startswith(f"s3://{cluster.bucket}/")
    assert status["restarts"]["total"] == 0
    assert checkpoint_steps(cluster, namespace, name)[-1] == total
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Succeeded"]["status"] == "True"
    assert conditions["Running"]["status"] == "False"
    events = cluster.kubectl(
        "-n", namespace, "get", "events", "--field-selector", f"involvedObject.name={name}"
    ).stdout
    assert "Succeeded" in events

    metrics = operator.metrics()
    assert 'kubetrain_operator_jobs{state="Succeeded"}' in metrics
    assert "kubetrain_operator_reconcile_duration_seconds_count" in metrics

    # Deleting the job deletes its pods, Service and ConfigMap (ownerReferences + GC).
    cluster.kubectl("-n", namespace, "delete", "tj", name, "--wait=true", timeout=120)

    def children_gone() -> bool:
        left = cluster.kubectl(
            "-n", namespace, "get", "pods,svc,cm", "-l", f"{JOB_LABEL}={name}", "-o", "name"
        ).stdout.strip()
        return left == ""

    wait_until(children_gone, timeout=120, what="the job's children to be deleted", interval=1.0)


def test_killed_worker_restarts_the_gang_from_the_last_checkpoint(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    name = "kill-a-worker"
    create_s3_secret(cluster, namespace)
    apply_job(cluster, namespace, short_job(name))
    wait_state(cluster, operator, namespace, name, state="Running", timeout=120)
    checkpoint = wait_checkpoint(cluster, namespace, name, timeout=300)

    cluster.kill_pod(namespace, f"{name}-1", signal.SIGKILL)
    wait_until(
        lambda: job_status(cluster, namespace, name).get("restarts", {}).get("total", 0) >= 1,
        timeout=120,
        what="a gang restart",
        interval=0.5,
    )
    status = job_status(cluster, namespace, name)
    assert status["restarts"]["error"] == 1
    restarting = next(c for c in status["conditions"] if c["type"] == "Restarting")
    assert restarting["reason"] == "RestartError"
    resumed_at_or_after(cluster, namespace, name, attempt=1, step=checkpoint, timeout=300)
    # Old and new never mix: every pod left belongs to attempt 1.
    assert {p["metadata"]["labels"][ATTEMPT_LABEL] for p in job_pods(cluster, namespace, name)} == {
        "1"
    }
    status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    assert status["progress"]["step"] == 100
    assert 'kubetrain_operator_restarts_total{cause="Error"}' in operator.metrics()


def test_suspend_then_resume_continues_from_the_checkpoint(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    name = "suspend-resume"
    create_s3_secret(cluster, namespace)
    apply_job(cluster, namespace, short_job(name))
    wait_state(cluster, operator, namespace, name, state="Running", timeout=120)
    wait_checkpoint(cluster, namespace, name, timeout=300)

    patch = '{"spec": {"runPolicy": {"suspend": true}}}'
    cluster.kubectl("-n", namespace, "patch", "tj", name, "--type=merge", "-p", patch)
    wait_state(cluster, operator, namespace, name, state="Suspended", timeout=60)
    wait_until(
        lambda: not job_pods(cluster, namespace, name), timeout=120, what="pods deleted", interval=1
    )
    kept = max(checkpoint_steps(cluster, namespace, name))  # checkpoints survive suspension

    patch = '{"spec": {"runPolicy": {"suspend": false}}}'
    cluster.kubectl("-n", namespace, "patch", "tj", name, "--type=merge", "-p", patch)
    resumed_at_or_after(cluster, namespace, name, attempt=1, step=kept, timeout=300)
    status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    assert status["restarts"]["total"] == 0  # suspension is not a failure
    assert status["progress"]["step"] == 100


def test_config_the_trainer_rejects_fails_at_once_with_its_message(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """Valid for the API server, unusable for the trainer (exit 64): never retried."""
    name = "missing-corpus"
    create_s3_secret(cluster, namespace)
    job = short_job(name)
    job["spec"]["trainer"]["data"]["path"] = "examples/data/no-such-corpus.txt"
    apply_job(cluster, namespace, job)
    status = wait_state(cluster, operator, namespace, name, state="Failed", timeout=300)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ConfigInvalid"
    assert "data.path" in failed["message"] and "no-such-corpus.txt" in failed["message"]
    assert status["restarts"]["total"] == 0
    assert status["completionTime"]


def test_nan_on_every_attempt_fails_once_the_rollback_budget_is_spent(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    name = "nan-forever"
    create_s3_secret(cluster, namespace)
    job = short_job(name)
    job["spec"]["env"] = [{"name": "KUBETRAIN_FAULT_INJECT", "value": "nan@step=17"}]
    job["spec"]["faultTolerance"] = {"nan": {"maxRollbacks": 1}}
    job["spec"]["trainer"]["recovery"] |= {"max_consecutive_skips": 0, "max_restores": 0}
    apply_job(cluster, namespace, job)

    status = wait_state(cluster, operator, namespace, name, state="Failed", timeout=600)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "NaNRollbackBudgetExhausted", failed
    assert status["restarts"]["nan"] == 1  # the budget, spent
    assert status["recovery"]["rollbackBeforeStep"] == 17  # asked, never listed
    assert status["completionTime"]
    events = cluster.kubectl("-n", namespace, "get", "events").stdout
    assert "NaNRollbackBudgetExhausted" in events
