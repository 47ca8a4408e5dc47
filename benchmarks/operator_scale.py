"""Apply many TrainingJobs at once on the local cluster: time until all their pods exist.

    make benchmark NAME=operator_scale ARGS="--jobs 200"

Runs on the harness cluster (real API server, scheduler, controller-manager)
with the operator from source under its own RBAC identity. The nodes are
cordoned, so pods are created but never run: what is measured is the
operator's reconcile path (job -> Service, ConfigMap, Pod), not training.
The baseline, side by side in the same cluster: the same number of bare Pods
created with one `kubectl apply` of a List, i.e. the API server's own cost.
Also prints the operator's peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from kubetrain_devcluster import operator as operator_process
from kubetrain_devcluster.project import REPO_ROOT
from kubetrain_devcluster.project import cluster as kubetrain_cluster
from localkube.cluster import Cluster, default_nodes

JOB_LABEL = "kubetrain.io/job-name"


def training_job(i: int) -> dict[str, Any]:
    job: dict[str, Any] = yaml.safe_load((REPO_ROOT / "examples" / "trainingjob.yaml").read_text())
    job["metadata"] = {"name": f"bench-{i:04d}"}
    job["spec"]["numNodes"] = 1
    return job


def bare_pod(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"bare-{i:04d}", "labels": {"bench": "bare"}},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["true"]}]},
    }


def apply_and_wait(
    cluster: Cluster, namespace: str, docs: list[dict[str, Any]], selector: str
) -> float:
    """Seconds from `kubectl apply` of a List until `len(docs)` pods match `selector`."""
    start = time.monotonic()
    cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", timeout=600,
        input_text=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs}),
    )  # fmt: skip
    path = f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}"
    while len(cluster.api.get(path)["items"]) < len(docs):
        time.sleep(0.2)
    return time.monotonic() - start


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    with kubetrain_cluster(default_nodes(3), prometheus=False) as cluster:
        for node in cluster.node_specs:
            cluster.kubectl("cordon", node.name)
        operator_process.install(cluster)
        for ns in ("bench-jobs", "bench-pods"):
            cluster.kubectl("create", "namespace", ns)
        operator_process.create_s3_secret(cluster, "bench-jobs")
        op = operator_process.OperatorProcess(cluster, Path(tempfile.mkdtemp()))
        op.write_kubeconfig()
        op.start()
        assert op.proc is not None
        idle_rss = peak_rss_mib(op.proc.pid)
        bare = apply_and_wait(
            cluster, "bench-pods", [bare_pod(i) for i in range(args.jobs)], "bench%3Dbare"
        )
        jobs = apply_and_wait(
            cluster, "bench-jobs", [training_job(i) for i in range(args.jobs)], JOB_LABEL
        )
        time.sleep(5)  # let the resync timers of all jobs run once more
        peak = peak_rss_mib(op.proc.pid)
        op.kill()
    print(f"{args.jobs} objects each, 3 cordoned nodes, 2-core machine")
    print(f"bare Pods via one kubectl apply (baseline): {bare:7.1f} s until all exist")
    print(f"TrainingJobs via the operator             : {jobs:7.1f} s until all pods exist")
    print(f"ratio operator / baseline                 : {jobs / bare:7.2f}")
    print(f"operator peak RSS: {peak:.0f} MiB (idle after start-up: {idle_rss:.0f} MiB)")


if __name__ == "__main__":
    main()
