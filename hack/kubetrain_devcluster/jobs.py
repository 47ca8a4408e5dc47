"""Helpers shared by the e2e tests: TrainingJobs from the example, waiting on their
status, their pods and their committed checkpoints in MinIO."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kubetrain_trainer.checkpoint import parse_checkpoint_dir
from localkube.services import wait_until

if TYPE_CHECKING:
    from kubetrain_devcluster.operator import OperatorProcess
    from localkube.cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "trainingjob.yaml"
JOB_LABEL = "kubetrain.io/job-name"
ATTEMPT_LABEL = "kubetrain.io/attempt"


def example_job(name: str | None = None, **trainer_training: Any) -> dict[str, Any]:
    job: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    if name:
        job["metadata"]["name"] = name
    job["spec"]["trainer"]["training"] |= trainer_training
    return job


def short_job(name: str) -> dict[str, Any]:
    """The example, shorter: checkpoints every 20 steps, 100 steps in all."""
    job = example_job(name, max_steps=100, eval_steps=50)
    job["spec"]["checkpoint"]["intervalSteps"] = 20
    return job


def merge(base: dict[str, Any], change: dict[str, Any]) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def apply_job(cluster: Cluster, namespace: str, job: dict[str, Any]) -> None:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input_text=yaml.safe_dump(job))


def get_job(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.api.get(
        f"/apis/kubetrain.io/v1alpha1/namespaces/{namespace}/trainingjobs/{name}"
    )
    return body


def job_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = get_job(cluster, namespace, name).get("status") or {}
    return status


def job_pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    path = f"/api/v1/namespaces/{namespace}/pods?labelSelector={JOB_LABEL}%3D{name}"
    pods: list[dict[str, Any]] = cluster.api.get(path)["items"]
    return pods


def wait_state(
    cluster: Cluster, op: OperatorProcess, namespace: str, name: str, *, state: str, timeout: float
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        op.ready()  # fail fast if the operator died
        status = job_status(cluster, namespace, name)
        if status.get("state") == "Failed" and state != "Failed":
            raise AssertionError(f"job failed: {json.dumps(status, indent=1)}")
        found.update(status)
        return status.get("state") == state

    wait_until(reached, timeout=timeout, what=f"{name} to be {state}", interval=1.0)
    return found


def job_uid(cluster: Cluster, namespace: str, name: str) -> str:
    uid: str = get_job(cluster, namespace, name)["metadata"]["uid"]
    return uid


def store_uri(cluster: Cluster, namespace: str, name: str) -> str:
    """The job's default checkpoint URI: <base>/<namespace>/<name>/<uid>."""
    return f"s3://{cluster.bucket}/{namespace}/{name}/{job_uid(cluster, namespace, name)}"


def checkpoint_steps(cluster: Cluster, namespace: str, name: str) -> list[int]:
    """Steps of the job's committed checkpoints (manifest present) in MinIO, any term."""
    assert cluster.minio is not None
    prefix = store_uri(cluster, namespace, name).removeprefix(f"s3://{cluster.bucket}/") + "/"
    pages = cluster.minio.client().get_paginator("list_objects_v2")
    keys = [
        o["Key"]
        for p in pages.paginate(Bucket=cluster.bucket, Prefix=prefix)
        for o in p.get("Contents", [])
    ]
    parsed = [
        parse_checkpoint_dir(k[len(prefix) :].split("/")[0])
        for k in keys
        if k.endswith("/manifest.json")
    ]
    return sorted(p[0] for p in parsed if p is not None)


def rank0_progress(cluster: Cluster, namespace: str, name: str, attempt: int) -> int | None:
    """Step reported by rank 0 of `attempt` itself (its /progress endpoint)."""
    for pod in job_pods(cluster, namespace, name):
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


def wait_checkpoint(cluster: Cluster, namespace: str, name: str, timeout: float) -> int:
    wait_until(
        lambda: bool(checkpoint_steps(cluster, namespace, name)),
        timeout=timeout,
        what=f"a committed checkpoint of {name}",
        interval=1.0,
    )
    return max(checkpoint_steps(cluster, namespace, name))


def resumed_at_or_after(
    cluster: Cluster, namespace: str, name: str, *, attempt: int, step: int, timeout: float
) -> int:
    """The first step rank 0 of the new attempt reports once it trains (it serves step 0
    while it resumes); a run that started over would report 1, 2, ... here."""
    seen: list[int] = []

    def reported() -> bool:
        value = rank0_progress(cluster, namespace, name, attempt)
        if value:
            seen.append(value)
        return bool(seen)

    wait_until(
        reported, timeout=timeout, what=f"attempt {attempt} of {name} to report", interval=0.5
    )
    assert seen[0] >= step, f"attempt {attempt} started at step {seen[0]}, checkpoint {step}"
    log = cluster.pod_log_path(namespace, f"{name}-0", "trainer").read_text(errors="replace")
    assert f"resumed from {store_uri(cluster, namespace, name)}/step-" in log
    return seen[0]


def rank0_logs(cluster: Cluster, namespace: str, name: str) -> list[str]:
    """The trainer log of every rank-0 pod the job ever had, on any node, oldest first."""
    paths: list[Path] = []
    for kubelet in cluster.kubelets.values():
        pod_dir = kubelet.pod_log_path(namespace, f"{name}-0", "trainer").parent
        paths.extend(pod_dir.glob("trainer*.log"))
    return [p.read_text(errors="replace") for p in sorted(paths, key=lambda p: p.stat().st_mtime)]


def evict_pod(cluster: Cluster, namespace: str, pod: str) -> None:
    """What `kubectl drain` does to a pod: the Eviction API (no PodDisruptionBudget), which
    marks it DisruptionTarget/EvictionByEvictionAPI and deletes it gracefully."""
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": namespace},
    }
    cluster.api.request("POST", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", body)
