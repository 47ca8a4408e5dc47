"""The Helm chart end to end on the local cluster (issue #6).

`helm install` into a namespace that enforces the restricted Pod Security
Standard; the chart's Deployment runs the operator under its own ServiceAccount
and RBAC; the operator trains the example to its last step in that namespace;
`helm test` passes; Prometheus scrapes the operator and rank 0, and every query
of the chart's Grafana dashboards returns data; `helm uninstall` removes the
operator and keeps the CRD.

`helm lint`, `helm template` and `promtool check rules` on the chart's alerts
need no cluster: they are tests/unit/test_chart.py and tests/unit/test_alerts.py.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from kubetrain_devcluster.jobs import checkpoint_steps, store_uri
from kubetrain_devcluster.operator import S3_SECRET, create_s3_secret
from localkube.binaries import binary
from localkube.services import wait_until

if TYPE_CHECKING:
    from localkube.cluster import Cluster
    from localkube.services import PrometheusServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kubetrain"
EXAMPLE = ROOT / "examples" / "trainingjob.yaml"
CRD_NAME = "trainingjobs.kubetrain.io"
RELEASE = "kubetrain-e2e"  # contains the chart name: resources are named exactly this
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
MAX_STEPS = 60  # the example's 300, cut: checkpoints at 20, 40, 60, validation at 30, 60
TRAINER_UID = 65532  # the Dockerfile's user
# Grafana's $__rate_interval is at least four scrape intervals (the harness scrapes every 2 s).
RATE_INTERVAL = "10s"


# --- helpers ---------------------------------------------------------------------------


def _helm(
    cluster: Cluster, home: Path, *args: str, timeout: float = 300, check: bool = True
) -> str:
    env = {
        "KUBECONFIG": str(cluster.kubeconfig),
        "PATH": "/usr/bin:/bin",
        # helm keeps its cache and config under HOME; nothing of the user's.
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run(
        [str(binary("helm")), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _restricted_namespace(cluster: Cluster) -> str:
    name = f"helm-e2e-{secrets.token_hex(3)}"
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    cluster.create_namespace(name, labels)
    return name


def _adopt_existing_crd(cluster: Cluster, namespace: str) -> None:
    """The session's cluster may hold the CRD already (the operator e2e tests apply
    crds/): mark it as the release's, the documented way Helm adopts an object."""
    found = cluster.kubectl("get", "crd", CRD_NAME, "--ignore-not-found", "-o", "name").stdout
    if not found.strip():
        return
    cluster.kubectl("label", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    cluster.kubectl(
        "annotate",
        "crd",
        CRD_NAME,
        f"meta.helm.sh/release-name={RELEASE}",
        f"meta.helm.sh/release-namespace={namespace}",
        "--overwrite",
    )


def _values(cluster: Cluster, namespace: str) -> dict[str, Any]:
    assert cluster.minio is not None
    return {
        "operator": {
            "watchNamespaces": [namespace],
            "defaultCheckpointUri": f"s3://{cluster.bucket}",
            "defaultS3Endpoint": cluster.minio.endpoint,
            "defaultCredentialsSecret": S3_SECRET,
            "reconcileIntervalSeconds": 3,
            "restartBackoffSeconds": 2,
            # The harness has no images: the repo root stands in for the trainer image's
            # WORKDIR, which holds examples/ (the job's relative data path).
            "extraEnv": [{"name": "KUBETRAIN_WORKING_DIR", "value": str(ROOT)}],
            # The harness's Prometheus discovers pods by these annotations.
            "podAnnotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
        },
        "dashboards": {"enabled": True},
    }


def _short_example() -> dict[str, Any]:
    job: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    job["spec"]["trainer"]["training"] |= {"max_steps": MAX_STEPS, "eval_steps": 30}
    job["spec"]["checkpoint"]["intervalSteps"] = 20
    return job


def _status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    path = f"/apis/kubetrain.io/v1alpha1/namespaces/{namespace}/trainingjobs/{name}"
    status: dict[str, Any] = cluster.api.get(path).get("status") or {}
    return status


def _wait_state(cluster: Cluster, namespace: str, name: str, state: str, timeout: float) -> None:
    def reached() -> bool:
        status = _status(cluster, namespace, name)
        if status.get("state") == "Failed" and state != "Failed":
            raise AssertionError(f"job failed: {json.dumps(status, indent=1)}")
        return status.get("state") == state

    wait_until(reached, timeout=timeout, what=f"{name} to be {state}", interval=1.0)


def _pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    path = f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}"
    pods: list[dict[str, Any]] = cluster.api.get(path)["items"]
    return pods


def _names(cluster: Cluster, namespace: str, kinds: str) -> list[str]:
    out = cluster.kubectl("-n", namespace, "get", kinds, "-l", INSTANCE, "-o", "name").stdout
    return out.split()


def _dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel or variable, expression) for every query of every dashboard."""
    found: list[tuple[str, str, str]] = []

    def walk(node: Any, dashboard: str) -> None:
        if isinstance(node, dict):
            for target in node.get("targets") or []:
                if "expr" in target:
                    found.append((dashboard, node.get("title", "?"), target["expr"]))
            for child in node.values():
                walk(child, dashboard)
        elif isinstance(node, list):
            for child in node:
                walk(child, dashboard)

    for path in sorted((CHART / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        walk(board.get("panels", []), path.name)
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                query: Any = variable["query"]
                expr = str(query["query"] if isinstance(query, dict) else query)
                found.append((path.name, f"${variable['name']}", expr))
    return found


def _substitute(expr: str, namespace: str, job: str, window: float) -> str:
    """Grafana's template variables, as a user who picked this job would have them."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    expr = expr.replace("$__range", f"{math.ceil(window)}s")
    # Namespace and job names are DNS labels: as regexes (=~) they match themselves.
    expr = expr.replace("$namespace", namespace).replace("$trainingjob", job)
    # A variable's label_values(selector, label) asks for that selector's series.
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", expr)
    return match.group(1) if match else expr


def _values_of(result: list[dict[str, Any]]) -> list[float]:
    return [float(v) for series in result for _, v in series["values"]]


def _check_dashboards(
    prometheus: PrometheusServer, namespace: str, job: str, start: float, end: float
) -> None:
    """Every dashboard query returns data over the job's run (as a panel's range query)."""
    empty, nan_only = [], []
    queries = _dashboard_queries()
    assert len(queries) > 20, queries
    for dashboard, panel, raw in queries:
        expr = _substitute(raw, namespace, job, end - start)
        assert "$" not in expr, f"{dashboard} {panel}: unsubstituted variable in {expr}"
        result = prometheus.query_range(expr, start, end, 2.0)
        values = _values_of(result)
        if panel.startswith("$"):  # a variable offers this job's namespace and name
            label = re.fullmatch(r"label_values\(.*,\s*(\w+)\)", raw)
            assert label, raw
            offered = {series["metric"].get(label.group(1)) for series in result}
            assert {"namespace": namespace, "trainingjob": job}[panel[1:]] in offered, offered
        if not values:
            empty.append(f"{dashboard} / {panel}: {expr}")
        # NaN is what histogram_quantile gives while nothing was observed (no recoveries
        # in a clean run); anything else must have a number.
        elif all(math.isnan(v) for v in values) and "histogram_quantile" not in expr:
            nan_only.append(f"{dashboard} / {panel}: {expr}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    assert not nan_only, "dashboard queries with only NaN:\n" + "\n".join(nan_only)


# --- the test --------------------------------------------------------------------------


def test_chart_installs_runs_the_example_in_a_restricted_namespace_and_uninstalls(
    cluster: Cluster, tmp_path: Path
) -> None:
    assert cluster.prometheus is not None and cluster.minio is not None
    prometheus = cluster.prometheus
    namespace = _restricted_namespace(cluster)
    try:
        _run(cluster, prometheus, namespace, tmp_path)
    finally:
        # After a failure the release may still be there; its ClusterRole(Binding) too.
        releases = _helm(cluster, tmp_path, "list", "-q", "--namespace", namespace, check=False)
        if RELEASE in releases.split():
            _helm(cluster, tmp_path, "uninstall", RELEASE, "--namespace", namespace, check=False)
        cluster.api.request("DELETE", f"/api/v1/namespaces/{namespace}")


def _run(cluster: Cluster, prometheus: PrometheusServer, namespace: str, home: Path) -> None:
    # The namespace enforces the restricted standard: a root pod is refused.
    root_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "x", "command": ["true"]}]},
    }
    refused = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input_text=json.dumps(root_pod), check=False
    )
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr

    # --- helm install: the operator runs from the chart's Deployment ---------------------
    _adopt_existing_crd(cluster, namespace)
    values = home / "values.yaml"
    values.write_text(yaml.safe_dump(_values(cluster, namespace)))
    _helm(
        cluster, home, "install", RELEASE, str(CHART), "--namespace", namespace,
        "--values", str(values), "--wait", "--timeout", "5m",
    )  # fmt: skip
    operator_pods = _pods(cluster, namespace, f"app.kubernetes.io/instance%3D{RELEASE}")
    assert len(operator_pods) == 1, [p["metadata"]["name"] for p in operator_pods]
    operator_pod = operator_pods[0]
    assert operator_pod["status"]["phase"] == "Running"
    assert operator_pod["spec"]["serviceAccountName"] == RELEASE
    assert operator_pod["spec"]["securityContext"]["runAsUser"] == TRAINER_UID
    owner = operator_pod["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ReplicaSet"
    replica_set = cluster.api.get(
        f"/apis/apps/v1/namespaces/{namespace}/replicasets/{owner['name']}"
    )
    assert replica_set["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert replica_set["metadata"]["ownerReferences"][0]["name"] == RELEASE

    # --- the example, shortened, trains to its last step --------------------------------
    create_s3_secret(cluster, namespace)
    job = _short_example()
    name = job["metadata"]["name"]
    started = time.time()
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input_text=yaml.safe_dump(job))
    _wait_state(cluster, namespace, name, "Running", timeout=180)
    workers = _pods(cluster, namespace, f"kubetrain.io/job-name%3D{name}")
    assert sorted(p["metadata"]["name"] for p in workers) == [f"{name}-0", f"{name}-1"]
    for pod in workers:  # admitted by the restricted standard, as the image's user
        assert pod["spec"]["securityContext"]["runAsUser"] == TRAINER_UID
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
    _wait_state(cluster, namespace, name, "Succeeded", timeout=900)
    finished = time.time()
    status = _status(cluster, namespace, name)
    assert status["progress"]["step"] == MAX_STEPS
    assert status["restarts"]["total"] == 0
    assert checkpoint_steps(cluster, namespace, name)[-1] == MAX_STEPS
    assert status["progress"]["lastCheckpoint"]["uri"].startswith(
        f"{store_uri(cluster, namespace, name)}/"
    )

    # --- helm test: the chart's hook pod -------------------------------------------------
    _helm(cluster, home, "test", RELEASE, "--namespace", namespace, "--timeout", "3m")

    # --- Prometheus: both targets were up; every dashboard query has data ----------------
    # The scrape after the last step may land a few seconds after Succeeded.
    time.sleep(6)
    end = time.time()
    window = f"{math.ceil(end - started) + 30}s"
    for target in (operator_pod["metadata"]["name"], f"{name}-0"):
        selector = f'up{{namespace="{namespace}", pod="{target}"}}'
        result = prometheus.query(f"max_over_time({selector}[{window}])")
        assert [float(r["value"][1]) for r in result] == [1.0], (target, result)
    _check_dashboards(prometheus, namespace, name, started, max(end, finished))

    # --- helm uninstall: the operator goes, the CRD and the job stay -----------------------
    assert _names(cluster, namespace, "configmaps"), "dashboards ConfigMaps were not installed"
    _helm(cluster, home, "uninstall", RELEASE, "--namespace", namespace, "--wait")
    kinds = "deployments,replicasets,pods,services,serviceaccounts,configmaps,secrets"

    def left_behind() -> list[str]:
        left = _names(cluster, namespace, kinds)
        for kind in ("clusterrole", "clusterrolebinding"):
            found = cluster.kubectl("get", kind, RELEASE, "--ignore-not-found", "-o", "name")
            left += found.stdout.split()
        return left

    # The ReplicaSet and its pod go through the garbage collector, a moment later.
    wait_until(
        lambda: not left_behind(), timeout=120, what="the release's objects to go", interval=1.0
    )
    assert left_behind() == []
    crd = cluster.api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert _status(cluster, namespace, name)["state"] == "Succeeded"  # the job survives too
