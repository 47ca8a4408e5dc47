"""The operator end to end on the local cluster: real API server, scheduler,
controller-manager (garbage collector), process kubelets, MinIO.

The operator runs as a subprocess authenticated as its own ServiceAccount (a
TokenRequest token bound by operator/deploy/rbac.yaml), never as cluster admin.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from tests.harness.operator_process import OperatorProcess, create_s3_secret, install
from tests.harness.services import wait_until

if TYPE_CHECKING:
    from tests.harness.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "trainingjob.yaml"
JOB_LABEL = "kubetrain.io/job-name"
ATTEMPT_LABEL = "kubetrain.io/attempt"


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install(cluster)
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"))
    op.write_kubeconfig()
    op.start()
    yield op
    op.kill()


# --- helpers ---------------------------------------------------------------------------


def _job(name: str | None = None, **trainer_training: Any) -> dict[str, Any]:
    job: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    if name:
        job["metadata"]["name"] = name
    job["spec"]["trainer"]["training"] |= trainer_training
    return job


def _short_job(name: str) -> dict[str, Any]:
    """The example, shorter: checkpoints every 20 steps, 100 steps in all."""
    job = _job(name, max_steps=100, eval_steps=50)
    job["spec"]["checkpoint"]["intervalSteps"] = 20
    return job


def _merge(base: dict[str, Any], change: dict[str, Any]) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _apply(cluster: Cluster, namespace: str, job: dict[str, Any]) -> None:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input_text=yaml.safe_dump(job))


def _get_job(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.api.get(
        f"/apis/kubetrain.io/v1alpha1/namespaces/{namespace}/trainingjobs/{name}"
    )
    return body


def _status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = _get_job(cluster, namespace, name).get("status") or {}
    return status


def _pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    path = f"/api/v1/namespaces/{namespace}/pods?labelSelector={JOB_LABEL}%3D{name}"
    pods: list[dict[str, Any]] = cluster.api.get(path)["items"]
    return pods


def _wait_state(
    cluster: Cluster, op: OperatorProcess, namespace: str, name: str, *, state: str, timeout: float
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        op.ready()  # fail fast if the operator died
        status = _status(cluster, namespace, name)
        if status.get("state") == "Failed" and state != "Failed":
            raise AssertionError(f"job failed: {json.dumps(status, indent=1)}")
        found.update(status)
        return status.get("state") == state

    wait_until(reached, timeout=timeout, what=f"{name} to be {state}", interval=1.0)
    return found


def _checkpoint_steps(cluster: Cluster, namespace: str, name: str) -> list[int]:
    """Committed checkpoints (manifest present) of the job in MinIO."""
    assert cluster.minio is not None
    prefix = f"{namespace}/{name}/"
    listing = cluster.minio.client().list_objects_v2(Bucket=cluster.bucket, Prefix=prefix)
    keys = [o["Key"] for o in listing.get("Contents", [])]
    return sorted(
        int(k[len(prefix) :].split("/")[0].removeprefix("step-"))
        for k in keys
        if k.endswith("/manifest.json")
    )


def _rank0_progress(cluster: Cluster, namespace: str, name: str, attempt: int) -> int | None:
    """Step reported by rank 0 of `attempt` itself (its /progress endpoint)."""
    for pod in _pods(cluster, namespace, name):
        labels = pod["metadata"]["labels"]
        ip = pod.get("status", {}).get("podIP")
        if labels.get(ATTEMPT_LABEL) == str(attempt) and pod["metadata"]["name"].endswith("-0"):
            try:
                with urllib.request.urlopen(f"http://{ip}:9090/progress", timeout=2) as resp:
                    step: int = json.loads(resp.read())["step"]
                    return step
            except (OSError, ValueError, KeyError):
                return None
    return None


def _wait_checkpoint(cluster: Cluster, namespace: str, name: str, timeout: float) -> int:
    wait_until(
        lambda: bool(_checkpoint_steps(cluster, namespace, name)),
        timeout=timeout,
        what=f"a committed checkpoint of {name}",
        interval=1.0,
    )
    return max(_checkpoint_steps(cluster, namespace, name))


def _resumed_at_or_after(
    cluster: Cluster, namespace: str, name: str, *, attempt: int, step: int, timeout: float
) -> int:
    """The first step rank 0 of the new attempt reports once it trains (it serves step 0
    while it resumes); a run that started over would report 1, 2, ... here."""
    seen: list[int] = []

    def reported() -> bool:
        value = _rank0_progress(cluster, namespace, name, attempt)
        if value:
            seen.append(value)
        return bool(seen)

    wait_until(
        reported, timeout=timeout, what=f"attempt {attempt} of {name} to report", interval=0.5
    )
    assert seen[0] >= step, f"attempt {attempt} started at step {seen[0]}, checkpoint {step}"
    log = cluster.pod_log_path(namespace, f"{name}-0", "trainer").read_text(errors="replace")
    assert f"resumed from s3://{cluster.bucket}/{namespace}/{name}/step-" in log
    return seen[0]


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
        job = _job()
        _merge(job["spec"], change)
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
    _wait_state(cluster, operator, namespace, name, state="Running", timeout=120)
    wait_until(
        lambda: (_status(cluster, namespace, name).get("progress") or {}).get("step", 0) > 0,
        timeout=180,
        what="progress in status",
        interval=1.0,
    )
    pods = _pods(cluster, namespace, name)
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
    pods = _pods(cluster, namespace, name)
    assert {p["metadata"]["uid"] for p in pods} == uids

    status = _wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=900)
    assert status["completionTime"] and status["startTime"]
    total = example["spec"]["trainer"]["training"]["max_steps"]
    assert status["progress"]["step"] == total
    assert status["progress"]["lastCheckpoint"]["uri"].startswith(f"s3://{cluster.bucket}/")
    assert status["restarts"]["total"] == 0
    assert _checkpoint_steps(cluster, namespace, name)[-1] == total
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
    _apply(cluster, namespace, _short_job(name))
    _wait_state(cluster, operator, namespace, name, state="Running", timeout=120)
    checkpoint = _wait_checkpoint(cluster, namespace, name, timeout=300)

    cluster.kill_pod(namespace, f"{name}-1", signal.SIGKILL)
    wait_until(
        lambda: _status(cluster, namespace, name).get("restarts", {}).get("total", 0) >= 1,
        timeout=120,
        what="a gang restart",
        interval=0.5,
    )
    status = _status(cluster, namespace, name)
    assert status["restarts"]["error"] == 1
    restarting = next(c for c in status["conditions"] if c["type"] == "Restarting")
    assert restarting["reason"] == "RestartError"
    _resumed_at_or_after(cluster, namespace, name, attempt=1, step=checkpoint, timeout=300)
    # Old and new never mix: every pod left belongs to attempt 1.
    assert {p["metadata"]["labels"][ATTEMPT_LABEL] for p in _pods(cluster, namespace, name)} == {
        "1"
    }
    status = _wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    assert status["progress"]["step"] == 100
    assert 'kubetrain_operator_restarts_total{cause="Error"}' in operator.metrics()


def test_suspend_then_resume_continues_from_the_checkpoint(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    name = "suspend-resume"
    create_s3_secret(cluster, namespace)
    _apply(cluster, namespace, _short_job(name))
    _wait_state(cluster, operator, namespace, name, state="Running", timeout=120)
    _wait_checkpoint(cluster, namespace, name, timeout=300)

    patch = '{"spec": {"runPolicy": {"suspend": true}}}'
    cluster.kubectl("-n", namespace, "patch", "tj", name, "--type=merge", "-p", patch)
    _wait_state(cluster, operator, namespace, name, state="Suspended", timeout=60)
    wait_until(
        lambda: not _pods(cluster, namespace, name), timeout=120, what="pods deleted", interval=1
    )
    kept = max(_checkpoint_steps(cluster, namespace, name))  # checkpoints survive suspension

    patch = '{"spec": {"runPolicy": {"suspend": false}}}'
    cluster.kubectl("-n", namespace, "patch", "tj", name, "--type=merge", "-p", patch)
    _resumed_at_or_after(cluster, namespace, name, attempt=1, step=kept, timeout=300)
    status = _wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    assert status["restarts"]["total"] == 0  # suspension is not a failure
    assert status["progress"]["step"] == 100


def test_config_the_trainer_rejects_fails_at_once_with_its_message(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """Valid for the API server, unusable for the trainer (exit 64): never retried."""
    name = "missing-corpus"
    create_s3_secret(cluster, namespace)
    job = _short_job(name)
    job["spec"]["trainer"]["data"]["path"] = "examples/data/no-such-corpus.txt"
    _apply(cluster, namespace, job)
    status = _wait_state(cluster, operator, namespace, name, state="Failed", timeout=300)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ConfigInvalid"
    assert "data.path" in failed["message"] and "no-such-corpus.txt" in failed["message"]
    assert status["restarts"]["total"] == 0
    assert status["completionTime"]
