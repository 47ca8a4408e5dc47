"""The local cluster runs real pods: processes, volumes, service-account tokens, RBAC, names."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kubetrain_devcluster.project import REPO_ROOT
from localkube.cluster import Cluster, Kubectl
from localkube.services import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# Serves the value of $TOKEN on port 8080 and says so on stdout.
_HTTP_SERVER = """
import http.server, os
token = os.environ["TOKEN"]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = token.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
print("serving", token, flush=True)
http.server.HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""

# Reads its mounted ConfigMap and token, then asks the API server (as its own
# service account) for pods (granted) and secrets (not granted).
_API_PROBE = """
import json, os, ssl, urllib.error, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(f"{sa}/token").read()
namespace = open(f"{sa}/namespace").read()
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
base = f"https://{host}:{port}"
def status(path):
    req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
print(json.dumps({
    "greeting": open("/etc/kubetrain-test/greeting").read(),
    "token": token,
    "namespace": namespace,
    "pods": status(f"/api/v1/namespaces/{namespace}/pods"),
    "secrets": status(f"/api/v1/namespaces/{namespace}/secrets"),
}), flush=True)
"""

# Serves its own name on port 9000 and fetches the peer's by <peer>.<subdomain>.
_PEER = """
import http.server, json, os, threading, time, urllib.request
me, peer = os.environ["ME"], os.environ["PEER"]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = me.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.HTTPServer(("0.0.0.0", 9000), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
deadline, error = time.time() + 90, ""
while time.time() < deadline:
    try:
        with urllib.request.urlopen(f"http://{peer}:9000/", timeout=2) as resp:
            print(json.dumps({"me": me, "peer": peer, "answer": resp.read().decode()}), flush=True)
            break
    except OSError as err:
        error = repr(err)
        time.sleep(0.5)
else:
    print(json.dumps({"me": me, "peer": peer, "error": error}), flush=True)
time.sleep(3600)
"""


def _apply(kubectl: Kubectl, namespace: str, *objects: dict[str, Any]) -> None:
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    kubectl("apply", "-n", namespace, "-f", "-", input_text=manifest)


def _container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    # The image is ignored by the process kubelet; the command runs with the project's Python.
    return {
        "name": name,
        "image": "kubetrain/test:none",
        "command": ["python", "-c", script],
        **extra,
    }


def _log_line(cluster: Cluster, namespace: str, pod: str, container: str) -> dict[str, Any]:
    """Wait for the first JSON line in the container's log file and decode it."""
    found: dict[str, Any] = {}

    def logged() -> bool:
        path: Path = cluster.pod_log_path(namespace, pod, container)
        if not path.exists():
            return False
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                found.update(json.loads(line))
                return True
        return False

    wait_until(logged, timeout=120, what=f"a JSON line in the log of {namespace}/{pod}")
    return found


def test_deployment_pod_runs_a_real_process(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    token = secrets.token_hex(8)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        _container("server", _HTTP_SERVER, env=[{"name": "TOKEN", "value": token}])
                    ]
                },
            },
        },
    }
    _apply(kubectl, namespace, deployment)

    names: list[str] = []

    def pod_created() -> bool:
        out = kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "json").stdout
        names[:] = [p["metadata"]["name"] for p in json.loads(out)["items"]]
        return len(names) == 1

    wait_until(pod_created, timeout=60, what="the Deployment's pod")
    pod = cluster.wait_for_pod(namespace, names[0])
    pod_ip = pod["status"]["podIP"]
    assert pod_ip != cluster.api_host

    answers: list[str] = []

    def serves() -> bool:
        try:
            with urllib.request.urlopen(f"http://{pod_ip}:8080/", timeout=2) as resp:
                answers.append(resp.read().decode())
                return True
        except OSError:
            return False

    wait_until(serves, timeout=60, what=f"the pod to serve HTTP on {pod_ip}:8080")
    assert answers[-1] == token
    log = cluster.pod_log_path(namespace, names[0], "server").read_text()
    assert f"serving {token}" in log


def test_pod_reads_configmap_and_token_and_rbac_applies(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    greeting = f"hello-{secrets.token_hex(4)}"
    _apply(
        kubectl,
        namespace,
        {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": "settings"},
            "data": {"greeting": greeting},
        },
        {"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"name": "reader"}},
        {
            "kind": "Role",
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
        {
            "kind": "RoleBinding",
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": {"name": "reader-reads-pods"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
        {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": "probe"},
            "spec": {
                "serviceAccountName": "reader",
                "restartPolicy": "Never",
                "volumes": [{"name": "settings", "configMap": {"name": "settings"}}],
                "containers": [
                    _container(
                        "probe",
                        _API_PROBE,
                        volumeMounts=[{"name": "settings", "mountPath": "/etc/kubetrain-test"}],
                    )
                ],
            },
        },
    )
    cluster.wait_for_pod(namespace, "probe", phases=("Succeeded",), timeout=120)
    result = _log_line(cluster, namespace, "probe", "probe")

    assert result["greeting"] == greeting
    assert result["namespace"] == namespace
    assert result["pods"] == 200, "the RoleBinding grants listing pods"
    assert result["secrets"] == 403, "nothing grants reading secrets"
    payload = result["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == f"system:serviceaccount:{namespace}:reader"


def test_pods_on_the_same_port_reach_each_other_by_hostname_and_subdomain(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    def peer_pod(name: str, peer: str) -> dict[str, Any]:
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": name, "labels": {"app": "peers"}},
            "spec": {
                "hostname": name,
                "subdomain": "peers",
                "restartPolicy": "Never",
                "containers": [
                    _container(
                        "peer",
                        _PEER,
                        env=[
                            {"name": "ME", "value": name},
                            {"name": "PEER", "value": f"{peer}.peers"},
                        ],
                    )
                ],
            },
        }

    headless = {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": "peers"},
        "spec": {
            "clusterIP": "None",
            "selector": {"app": "peers"},
            "ports": [{"name": "http", "port": 9000}],
        },
    }
    _apply(kubectl, namespace, headless, peer_pod("peer-a", "peer-b"), peer_pod("peer-b", "peer-a"))

    pods = {name: cluster.wait_for_pod(namespace, name) for name in ("peer-a", "peer-b")}
    assert pods["peer-a"]["status"]["podIP"] != pods["peer-b"]["status"]["podIP"]
    a = _log_line(cluster, namespace, "peer-a", "peer")
    b = _log_line(cluster, namespace, "peer-b", "peer")
    assert a.get("answer") == "peer-b", a
    assert b.get("answer") == "peer-a", b


# Runs as the image's user: imports the project, writes its scratch emptyDir, looks its
# user up, reaches a ClusterIP Service by name, and can write neither the repository
# nor the root filesystem (readOnlyRootFilesystem).
_NON_ROOT = """
import errno, getpass, json, os, urllib.request
import kubetrain_trainer
with open("/tmp/scratch", "w") as out:
    out.write("ok")
try:
    open("examples/written-by-a-pod", "w").close()
    repo_writable = True
except OSError:
    repo_writable = False
try:  # a directory on the root filesystem that any uid could write to on the host
    open(os.path.join(os.environ["OPEN_DIR"], "written-by-a-pod"), "w").close()
    root_fs = "writable"
except OSError as err:
    root_fs = errno.errorcode[err.errno]
with urllib.request.urlopen("http://web:8080/", timeout=10) as resp:
    answer = resp.read().decode()
print(json.dumps({"uid": os.getuid(), "user": getpass.getuser(), "tmp": sorted(os.listdir("/tmp")),
                  "repo_writable": repo_writable, "root_fs": root_fs, "service": answer}), flush=True)
"""


def test_restricted_non_root_pod_runs_the_project_and_reaches_a_service_by_name(
    cluster: Cluster, namespace: str, kubectl: Kubectl, request: pytest.FixtureRequest
) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    token = secrets.token_hex(8)
    restricted = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    container_context = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    server = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            **restricted,
            "containers": [
                _container(
                    "server",
                    _HTTP_SERVER,
                    env=[{"name": "TOKEN", "value": token}],
                    ports=[{"containerPort": 8080}],
                    readinessProbe={"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                    securityContext=container_context,
                )
            ],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]},
    }
    # A volume above the clone (the scratch one when the clone is under /tmp, else one
    # at its parent) must not hide the project: the harness binds it back.
    mounts = [{"name": "scratch", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "scratch", "emptyDir": {}}]
    under_tmp = REPO_ROOT.is_relative_to("/tmp")
    if not under_tmp and REPO_ROOT.parent != Path("/"):
        mounts.append({"name": "cover", "mountPath": str(REPO_ROOT.parent)})
        volumes.append({"name": "cover", "emptyDir": {}})
    # World-writable on the host's root filesystem (not under /tmp, which the client's
    # emptyDir covers), so only readOnlyRootFilesystem keeps uid 65532 out of it.
    open_dir = Path("/var/tmp") / f"kubetrain-open-{token}"
    open_dir.mkdir()
    open_dir.chmod(0o1777)  # not mkdir's mode, which passes through the umask
    request.addfinalizer(lambda: shutil.rmtree(open_dir, ignore_errors=True))
    client = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            **restricted,
            "restartPolicy": "OnFailure",  # until the Service has its ready endpoint
            "containers": [
                _container(
                    "client",
                    _NON_ROOT,
                    env=[{"name": "OPEN_DIR", "value": str(open_dir)}],
                    securityContext=container_context,
                    volumeMounts=mounts,
                )
            ],
            "volumes": volumes,
        },
    }
    _apply(kubectl, namespace, server, service, client)
    cluster.wait_for_pod(namespace, "client", phases=("Succeeded",), timeout=180)
    report = _log_line(cluster, namespace, "client", "client")
    # Besides its own file, the fresh emptyDir shows only the mount points of the
    # "image" directories that live under /tmp (the clone, the cluster's Python shims).
    image_dirs = [REPO_ROOT, cluster.state_dir or REPO_ROOT]
    stubs = {p.relative_to("/tmp").parts[0] for p in image_dirs if p.is_relative_to("/tmp")}
    assert set(report.pop("tmp")) - stubs == {"scratch"}
    assert report == {
        "uid": 65532,
        "user": "kubetrain",
        "repo_writable": False,
        "root_fs": "EROFS",
        "service": token,
    }
