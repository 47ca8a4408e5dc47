"""Apply many TrainingJobs at once on the local cluster: time until all their pods exist.

    make benchmark NAME=operator_scale ARGS="--jobs 200"
    make benchmark NAME=operator_scale ARGS="--jobs 1000 --kwok --json"

Harness mode (default): the harness cluster (real API server, scheduler,
controller-manager) with 3 cordoned process-kubelet nodes, so pods are created but
never run: what is measured is the operator's reconcile path (job -> Service,
ConfigMap, Secret, NetworkPolicy, Pod, status), not training. The baseline, side by
side in the same cluster and run: the same number of bare Pods created with one
`kubectl apply` of a List, i.e. the API server's own cost.

Kwok mode (--kwok): the same control plane with no process kubelets; kwok
(localkube/localkube/kwok.py) plays the kubelet of fake nodes, moving every pod to
Running at once and to Succeeded (exit code 0) --complete-after seconds later. Measured
from the `kubectl apply` of the TrainingJobs: until every job has a status (the
operator reconciled it), every pod exists, every pod reached Running, every job is
Succeeded.

Both modes report the operator's peak resident memory (VmHWM), its reconcile latency
(p50/p99 from its own histogram), and its API requests per job: `api_requests_per_job`
counts every request of the operator's ServiceAccount that the API server dispatched
(its flow-control metric for the `service-accounts` flow schema: kopf's own watches and
patches included), `reconciler_requests_per_job` those of the reconciler alone (the
operator's kubetrain_operator_api_requests_total). `--json` prints one JSON object
(keys in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from kubetrain_devcluster import operator as operator_process
from kubetrain_devcluster.project import REPO_ROOT
from kubetrain_devcluster.project import cluster as kubetrain_cluster
from localkube.cluster import Cluster, default_nodes
from localkube.kwok import Kwok

JOB_LABEL = "kubetrain.io/job-name"
JOBS_NS, PODS_NS = "bench-jobs", "bench-pods"
ALONE_NS = "bench-alone"  # the jobs applied once with no operator running
TJ_PATH = f"/apis/kubetrain.io/v1alpha1/namespaces/{JOBS_NS}/trainingjobs"
# The API server's count of dispatched requests by flow schema: the operator's
# ServiceAccount is the only client of `service-accounts` here (controllers run as
# kube-system ServiceAccounts, kubectl and kwok as admins, both other schemas).
APF_METRIC = "apiserver_flowcontrol_dispatched_requests_total"
OPERATOR_FLOW = "service-accounts"


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


def apply(cluster: Cluster, namespace: str, docs: list[dict[str, Any]]) -> None:
    cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", timeout=900,
        input_text=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs}),
    )  # fmt: skip


def apply_and_wait(
    cluster: Cluster, namespace: str, docs: list[dict[str, Any]], selector: str
) -> tuple[float, float]:
    """Seconds from `kubectl apply` of a List until it returned, and until `len(docs)`
    pods match `selector`."""
    start = time.monotonic()
    apply(cluster, namespace, docs)
    applied = time.monotonic() - start
    path = f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}"
    while len(cluster.api.get(path)["items"]) < len(docs):
        time.sleep(0.2)
    return applied, time.monotonic() - start


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- metrics ---------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([^ ]+)")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric `name` in a Prometheus text page."""
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            yield labels, float(match.group(3))


def quantile(text: str, name: str, q: float) -> float | None:
    """histogram_quantile over the cumulative buckets of `name` (linear in a bucket)."""
    buckets = sorted(
        (float(labels["le"]), value) for labels, value in samples(text, f"{name}_bucket")
    )
    if not buckets or buckets[-1][1] == 0:
        return None
    rank, below, lower = q * buckets[-1][1], 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        below, lower = count, upper
    return lower


WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


def writes_by_resource(cluster: Cluster) -> dict[str, float]:
    """Writes the API server answered so far, by resource (`apiserver_request_total`; all
    clients: in the jobs' phase that is kubectl, the operator and the controllers)."""
    counts: dict[str, float] = {}
    for labels, value in samples(cluster.api.get("/metrics"), "apiserver_request_total"):
        if labels.get("verb") in WRITE_VERBS:
            key = labels.get("resource", "?") + (
                "/" + labels["subresource"] if labels.get("subresource") else ""
            )
            counts[key] = counts.get(key, 0.0) + value
    return counts


def operator_requests(cluster: Cluster) -> float:
    text = cluster.api.get("/metrics")
    return sum(
        v for labels, v in samples(text, APF_METRIC) if labels.get("flow_schema") == OPERATOR_FLOW
    )


# --- kwok mode: when each object got where ---------------------------------------------


class Tracker:
    """Watches the jobs' pods and the TrainingJobs; records when each first existed,
    first ran, first had a status, first Succeeded (seconds after `start`)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.start = time.monotonic()
        self.seen: dict[str, dict[str, float]] = {
            k: {} for k in ("pod", "running", "status", "succeeded")
        }
        self._stop = threading.Event()
        self._lock = threading.Lock()
        for path, on in ((f"/api/v1/namespaces/{JOBS_NS}/pods", self._pod), (TJ_PATH, self._job)):
            threading.Thread(target=self._watch, args=(path, on), daemon=True).start()

    def _mark(self, what: str, name: str) -> None:
        with self._lock:
            self.seen[what].setdefault(name, time.monotonic() - self.start)

    def _pod(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        self._mark("pod", name)
        if (pod.get("status") or {}).get("phase") in ("Running", "Succeeded"):
            self._mark("running", name)

    def _job(self, job: dict[str, Any]) -> None:
        status, name = job.get("status") or {}, job["metadata"]["name"]
        if status:
            self._mark("status", name)
        if status.get("state") == "Succeeded":
            self._mark("succeeded", name)

    def _watch(self, path: str, on: Callable[[dict[str, Any]], None]) -> None:
        while not self._stop.is_set():
            try:
                for event in self.cluster.api.watch(path, {}, timeout_seconds=60):
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        on(event["object"])
            except Exception:  # a dropped watch: start over (ADDED events again)
                time.sleep(0.5)

    def all_after(self, what: str, count: int) -> float | None:
        with self._lock:
            times = list(self.seen[what].values())
        return max(times) if len(times) >= count else None

    def stop(self) -> None:
        self._stop.set()


def wait_for(check: Callable[[], float | None], timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while (found := check()) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


# --- the run ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    nodes = [] if args.kwok else default_nodes(3)
    result: dict[str, Any] = {"jobs": args.jobs, "mode": "kwok" if args.kwok else "harness"}
    with kubetrain_cluster(nodes, prometheus=False) as cluster:
        kwok = None
        if args.kwok:
            kwok = Kwok(
                cluster.kubeconfig,
                cluster.logs_dir / "kwok",
                complete_after_seconds=args.complete_after,
            ).start()
            kwok.add_nodes(cluster.api, args.kwok_nodes)
        for node in cluster.node_specs:
            cluster.kubectl("cordon", node.name)
        operator_process.install(cluster)
        for ns in (JOBS_NS, PODS_NS, ALONE_NS):
            cluster.create_namespace(ns)
        operator_process.create_s3_secret(cluster, JOBS_NS)
        if not args.kwok:
            # What the API server alone takes to accept the jobs (CRD schema, CEL, the
            # admission policy): the part of all_pods_seconds that is not the operator's.
            start = time.monotonic()
            apply(cluster, ALONE_NS, [training_job(i) for i in range(args.jobs)])
            result["jobs_apply_alone_seconds"] = round(time.monotonic() - start, 2)
            cluster.kubectl("-n", ALONE_NS, "delete", "trainingjobs", "--all", timeout=300)
        op = operator_process.OperatorProcess(cluster, Path(tempfile.mkdtemp()))
        op.write_kubeconfig()
        op.start()
        assert op.proc is not None
        try:
            pid = op.proc.pid
            time.sleep(2)  # start-up done: the first watches listed
            result["operator_idle_rss_mib"] = round(rss_mib(pid), 1)
            _, bare = apply_and_wait(
                cluster, PODS_NS, [bare_pod(i) for i in range(args.jobs)], "bench%3Dbare"
            )
            result["bare_pods_seconds"] = round(bare, 2)
            requests_before = operator_requests(cluster)
            writes_before = writes_by_resource(cluster)
            reconciler_before = _reconciler_requests(op.metrics())
            cpu_before = cpu_seconds(pid)
            docs = [training_job(i) for i in range(args.jobs)]
            if args.kwok:
                _measure_kwok(cluster, docs, args, result)
            else:
                applied, jobs = apply_and_wait(cluster, JOBS_NS, docs, JOB_LABEL)
                result.update(jobs_apply_seconds=round(applied, 2), all_pods_seconds=round(jobs, 2))
                result["ratio"] = round(jobs / bare, 2)
                time.sleep(5)  # let the resync timers of all jobs run once more
            metrics = op.metrics()
            requests = operator_requests(cluster) - requests_before
            reconciler = _reconciler_requests(metrics) - reconciler_before
            result["api_requests_per_job"] = round(requests / args.jobs, 1)
            writes = writes_by_resource(cluster)
            result["writes_per_job"] = {
                key: round((value - writes_before.get(key, 0.0)) / args.jobs, 2)
                for key, value in sorted(writes.items())
                if value > writes_before.get(key, 0.0)
            }
            result["reconciler_requests_per_job"] = round(reconciler / args.jobs, 1)
            name = "kubetrain_operator_reconcile_duration_seconds"
            for q, key in ((0.5, "reconcile_p50_seconds"), (0.99, "reconcile_p99_seconds")):
                value = quantile(metrics, name, q)
                result[key] = None if value is None else round(value, 4)
            result["reconciles"] = sum(v for _, v in samples(metrics, f"{name}_count"))
            result["operator_peak_rss_mib"] = round(rss_mib(pid), 1)
            result["operator_cpu_seconds"] = round(cpu_seconds(pid) - cpu_before, 1)
        finally:
            op.kill()
            if kwok is not None:
                kwok.stop()
    return result


def _reconciler_requests(metrics: str) -> float:
    return sum(v for _, v in samples(metrics, "kubetrain_operator_api_requests_total"))


def _measure_kwok(
    cluster: Cluster, docs: list[dict[str, Any]], args: argparse.Namespace, result: dict[str, Any]
) -> None:
    count = len(docs)
    tracker = Tracker(cluster)
    try:
        apply(cluster, JOBS_NS, docs)
        result["jobs_apply_seconds"] = round(time.monotonic() - tracker.start, 2)
        timeout = args.timeout

        def measure(what: str) -> float | None:
            found = wait_for(lambda: tracker.all_after(what, count), timeout)
            return None if found is None else round(found, 2)

        result["all_reconciled_seconds"] = measure("status")
        result["all_pods_seconds"] = measure("pod")
        result["all_running_seconds"] = measure("running")
        result["all_succeeded_seconds"] = measure("succeeded")
        reconciled = result["all_reconciled_seconds"]
        result["jobs_reconciled_per_second"] = round(count / reconciled, 1) if reconciled else None
        result["ratio"] = (
            round(result["all_pods_seconds"] / result["bare_pods_seconds"], 2)
            if result["all_pods_seconds"]
            else None
        )
        result["succeeded"] = len(tracker.seen["succeeded"])
    finally:
        tracker.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--kwok", action="store_true", help="fake nodes managed by kwok")
    parser.add_argument("--kwok-nodes", type=int, default=10)
    parser.add_argument(
        "--complete-after", type=float, default=10.0, help="kwok: seconds Running -> Succeeded"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="kwok: per phase")
    args = parser.parse_args()
    result = run(args)
    result["loadavg"] = Path("/proc/loadavg").read_text().split()[0]
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:30} {value}")


if __name__ == "__main__":
    main()
