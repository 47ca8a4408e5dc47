"""Recovery end to end on the local cluster: a dead node, NaN rollbacks, an S3 outage
during a checkpoint upload, a hung trainer. Each job must still finish with the exact
step count, resuming from a committed checkpoint and saying what happened.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.e2e.jobs import (
    ATTEMPT_LABEL,
    apply_job,
    checkpoint_steps,
    example_job,
    job_pods,
    job_status,
    merge,
    wait_checkpoint,
    wait_state,
)
from tests.harness.kubelet import NodeSpec
from tests.harness.operator_process import OperatorProcess, create_s3_secret
from tests.harness.services import wait_until

if TYPE_CHECKING:
    from tests.harness.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 60


def recovery_job(name: str, fault: str | None = None, **spec: Any) -> dict[str, Any]:
    """The example, short: 60 steps, a checkpoint every 10, good after 5 healthy steps."""
    job = example_job(name, max_steps=STEPS, eval_steps=30, eval_batches=2)
    job["spec"]["checkpoint"]["intervalSteps"] = 10
    job["spec"]["trainer"]["recovery"]["good_after_steps"] = 5
    if fault:
        job["spec"]["env"] = [{"name": "KUBETRAIN_FAULT_INJECT", "value": fault}]
    merge(job["spec"], spec)
    return job


def wait_restart(cluster: Cluster, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def restarted() -> bool:
        found.update(job_status(cluster, namespace, name))
        return int((found.get("restarts") or {}).get("total", 0)) >= 1

    wait_until(restarted, timeout=timeout, what=f"a gang restart of {name}", interval=0.5)
    return found


def trainer_log(cluster: Cluster, namespace: str, name: str) -> str:
    """Rank 0's log of the current pod (pod names are fixed across attempts)."""
    return cluster.pod_log_path(namespace, f"{name}-0", "trainer").read_text(errors="replace")


def resume_uri(cluster: Cluster, namespace: str, name: str, step: int) -> str:
    return f"s3://{cluster.bucket}/{namespace}/{name}/step-{step:08d}"


def wait_resumed(cluster: Cluster, namespace: str, name: str, step: int, timeout: float) -> None:
    """Rank 0 of the next attempt logs the checkpoint it resumed from: exactly `step`."""
    expected = f"resumed from {resume_uri(cluster, namespace, name, step)}"

    def resumed() -> bool:
        try:
            return expected in trainer_log(cluster, namespace, name)
        except (OSError, RuntimeError):  # the new pod is not bound or has no log yet
            return False

    wait_until(resumed, timeout=timeout, what=f"{name} to log '{expected}'", interval=1.0)


def events(cluster: Cluster, namespace: str, name: str) -> str:
    selector = f"involvedObject.name={name}"
    return cluster.kubectl("-n", namespace, "get", "events", "--field-selector", selector).stdout


def assert_finished(status: dict[str, Any]) -> None:
    assert status["state"] == "Succeeded", status
    assert status["progress"]["step"] == STEPS
    assert 0 < status["goodputPercent"] < 100  # some work was redone or waited for


def test_a_stopped_node_moves_the_gang_and_resumes_from_the_last_checkpoint(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    name = "node-failure"
    create_s3_secret(cluster, namespace)
    apply_job(cluster, namespace, recovery_job(name))
    wait_state(cluster, operator, namespace, name, state="Running", timeout=120)
    wait_checkpoint(cluster, namespace, name, timeout=300)
    victim = cluster.pod_node(namespace, f"{name}-1")

    cluster.stop_node(victim)  # heartbeats stop, its pods die, the API still lists them
    try:
        status = wait_restart(cluster, namespace, name, timeout=180)
        # No worker of the dead gang can commit after this: resume must pick the newest.
        committed = max(checkpoint_steps(cluster, namespace, name))
        assert status["restarts"]["nodeFailure"] == 1, status
        assert status["restarts"]["error"] == 0
        assert f"node {victim}" in status["recovery"]["lastFailure"]
        wait_resumed(cluster, namespace, name, committed, timeout=300)
        status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    finally:
        # Later tests expect three Ready nodes; the stopped one stays NotReady.
        cluster.add_node(NodeSpec(f"{victim}-replacement"))
    assert_finished(status)
    assert status["restarts"] == {"total": 1, "nodeFailure": 1, "nan": 0, "error": 0, "hang": 0}
    nodes = {p["spec"]["nodeName"] for p in job_pods(cluster, namespace, name)}
    assert victim not in nodes, "the new gang was scheduled on the dead node"
    assert "RestartNodeFailure" in events(cluster, namespace, name)
    metrics = operator.metrics()
    assert 'kubetrain_operator_restarts_total{cause="NodeFailure"}' in metrics
    assert "kubetrain_operator_recovery_seconds_count" in metrics
    labels = f'cause="nodeFailure",namespace="{namespace}",trainingjob="{name}"'
    assert f"kubetrain_operator_job_restarts{{{labels}}} 1.0" in metrics


def test_nan_past_the_in_process_budget_rolls_back_to_an_older_checkpoint(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """Steps 32-35 give NaN on every attempt. The trainer skips 32, gives up at 33 (exit
    65); the operator rolls back to the newest good checkpoint (20: step 30 never saw 5
    healthy steps) and has the next attempt skip batches 32-35."""
    name = "nan-rollback"
    create_s3_secret(cluster, namespace)
    job = recovery_job(name, fault="nan@step=32,times=4")
    job["spec"]["trainer"]["recovery"] |= {"max_consecutive_skips": 1, "max_restores": 0}
    apply_job(cluster, namespace, job)

    status = wait_restart(cluster, namespace, name, timeout=400)
    assert status["restarts"]["nan"] == 1, status
    assert status["recovery"]["resumeFrom"] == resume_uri(cluster, namespace, name, 20)
    assert status["recovery"]["skipBatches"] == "32-35"
    assert status["recovery"]["lrScale"] == 0.5
    wait_resumed(cluster, namespace, name, 20, timeout=300)
    status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    assert_finished(status)
    assert status["restarts"]["total"] == 1
    assert "RollbackNaN" in events(cluster, namespace, name)


def test_nan_on_every_attempt_fails_once_the_rollback_budget_is_spent(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    name = "nan-forever"
    create_s3_secret(cluster, namespace)
    job = recovery_job(name, fault="nan@step=17", faultTolerance={"nan": {"maxRollbacks": 1}})
    job["spec"]["trainer"]["recovery"] |= {"max_consecutive_skips": 0, "max_restores": 0}
    apply_job(cluster, namespace, job)

    status = wait_state(cluster, operator, namespace, name, state="Failed", timeout=600)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "NaNRollbackBudgetExhausted", failed
    assert status["restarts"]["nan"] == 1  # the budget, spent
    assert status["completionTime"]
    assert "NaNRollbackBudgetExhausted" in events(cluster, namespace, name)


def test_an_s3_outage_during_an_upload_never_commits_a_broken_checkpoint(
    cluster: Cluster,
    operator: OperatorProcess,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "s3-outage"
    create_s3_secret(cluster, namespace)
    apply_job(cluster, namespace, recovery_job(name))
    wait_state(cluster, operator, namespace, name, state="Running", timeout=120)
    before = wait_checkpoint(cluster, namespace, name, timeout=300)

    cluster.stop_minio()
    time.sleep(15)  # a checkpoint every ~10 steps: at least one upload meets the outage
    cluster.start_minio()
    wait_until(
        lambda: max(checkpoint_steps(cluster, namespace, name)) > before,
        timeout=300,
        what="a checkpoint committed after the outage",
        interval=1.0,
    )
    assert "failed (attempt" in trainer_log(cluster, namespace, name)  # the outage was met

    # Restart the gang: it must resume from the newest committed checkpoint and finish.
    status = job_status(cluster, namespace, name)
    attempt = status["recovery"]["attempt"]
    cluster.kill_pod(namespace, f"{name}-1", signal.SIGKILL)
    status = wait_restart(cluster, namespace, name, timeout=180)
    committed = max(checkpoint_steps(cluster, namespace, name))
    wait_resumed(cluster, namespace, name, committed, timeout=300)
    status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    assert_finished(status)
    assert status["recovery"]["attempt"] == attempt + 1

    # Every checkpoint with a manifest is whole: each file there, with its sha256.
    from kubetrain_trainer.checkpoint import CheckpointManager
    from kubetrain_trainer.config import S3Config

    assert cluster.minio is not None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", cluster.minio.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", cluster.minio.secret_key)
    uri = f"s3://{cluster.bucket}/{namespace}/{name}"
    manager = CheckpointManager(uri, S3Config(endpoint=cluster.minio.endpoint))
    infos = manager.list()
    assert infos and infos[-1].step == STEPS
    for info in infos:
        manager.load(info, tmp_path / f"step-{info.step}")  # raises on a missing/bad file


def test_a_hung_trainer_is_restarted_after_the_progress_deadline(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    name = "hang"
    create_s3_secret(cluster, namespace)
    job = recovery_job(
        name, fault="hang@step=25,times=1", faultTolerance={"progressDeadlineSeconds": 60}
    )
    apply_job(cluster, namespace, job)

    status = wait_restart(cluster, namespace, name, timeout=400)
    assert status["restarts"]["hang"] == 1, status
    restarting = next(c for c in status["conditions"] if c["type"] == "Restarting")
    assert restarting["reason"] == "RestartHang"
    assert "no step progress for 60 s" in restarting["message"]
    wait_resumed(cluster, namespace, name, 20, timeout=300)
    status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    assert_finished(status)
    assert status["restarts"]["total"] == 1
    assert {p["metadata"]["labels"][ATTEMPT_LABEL] for p in job_pods(cluster, namespace, name)} <= {
        "1"
    }
