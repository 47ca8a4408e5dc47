"""The kubetrain operator from source, running under its own RBAC identity.

Used by the operator e2e tests and by `make dev-cluster`: the CRD and
operator/deploy/rbac.yaml are applied with admin rights, then the operator
runs as a subprocess whose kubeconfig holds a TokenRequest token of the
`kubetrain-operator` ServiceAccount, never the admin certificate.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from kubetrain_devcluster.project import REPO_ROOT, source_path
from localkube.cluster import Cluster
from localkube.services import free_port, http_ok, wait_until

CRD = REPO_ROOT / "crds" / "trainingjobs.kubetrain.io.yaml"
RBAC = REPO_ROOT / "operator" / "deploy" / "rbac.yaml"
ADMISSION = REPO_ROOT / "operator" / "deploy" / "admission.yaml"
NAMESPACE = "kubetrain-system"
SERVICE_ACCOUNT = "kubetrain-operator"
S3_SECRET = "kubetrain-s3"  # per-namespace Secret the default checkpoint URI points pods at


def install(cluster: Cluster) -> None:
    """Apply crds/ and the operator's RBAC (the real API server validates the schema)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    # Polling, not `kubectl wait --for=condition=Established`: that errors out while
    # a fresh CRD has no conditions yet.
    wait_until(
        lambda: cluster.kubectl("get", "tj", "-A", check=False).returncode == 0,
        timeout=60,
        what="kubectl to know the tj resource",
        interval=0.5,
    )
    namespaces = cluster.kubectl("get", "ns", "-o", "name").stdout.split()
    if f"namespace/{NAMESPACE}" not in namespaces:
        cluster.create_namespace(NAMESPACE)
    cluster.kubectl("apply", "-f", str(RBAC))
    cluster.kubectl("apply", "-f", str(ADMISSION))  # the pod template allow-list


def admission_params(cluster: Cluster, **data: str) -> dict[str, str]:
    """Set keys of the admission policy's params ConfigMap (the allow-list a cluster
    admin widens); returns the data as it was, to put back."""
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/kubetrain-admission"
    before: dict[str, str] = cluster.api.get(path)["data"]
    if data:
        patch = json.dumps({"data": data})
        cluster.kubectl("-n", NAMESPACE, "patch", "configmap", "kubetrain-admission", "-p", patch)
    return dict(before)


def create_s3_secret(cluster: Cluster, namespace: str) -> None:
    """The Secret with MinIO's credentials that worker pods of `namespace` mount as env."""
    assert cluster.minio is not None
    cluster.kubectl(
        "-n", namespace, "create", "secret", "generic", S3_SECRET,
        f"--from-literal=AWS_ACCESS_KEY_ID={cluster.minio.access_key}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={cluster.minio.secret_key}",
    )  # fmt: skip


class OperatorProcess:
    """`python -m kubetrain_cli operator` with the ServiceAccount's kubeconfig."""

    def __init__(
        self,
        cluster: Cluster,
        workdir: Path,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """`args` go to `kubetrain operator` (e.g. --leader-elect), `env` is added to its
        environment (operator settings, e.g. a widened allow-list)."""
        self.cluster = cluster
        self.workdir = workdir
        self.args = args
        self.extra_env = dict(env or {})
        self.kubeconfig = workdir / "operator.kubeconfig"
        self.log_path = workdir / "operator.log"
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def write_kubeconfig(self) -> None:
        token = self.cluster.kubectl(
            "-n", NAMESPACE, "create", "token", SERVICE_ACCOUNT, "--duration=12h"
        ).stdout.strip()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.cluster.api_url,
                        "certificate-authority": str(self.cluster.ca_file),
                    },
                }
            ],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
            "current-context": "operator",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def start(self) -> None:
        minio = self.cluster.minio
        if minio is None:
            raise RuntimeError("the operator e2e tests need MinIO in the session cluster")
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": source_path(),
            "KUBETRAIN_DEFAULT_CHECKPOINT_URI": f"s3://{self.cluster.bucket}",
            "KUBETRAIN_DEFAULT_S3_ENDPOINT": minio.endpoint,
            "KUBETRAIN_DEFAULT_CREDENTIALS_SECRET": S3_SECRET,
            "KUBETRAIN_WORKING_DIR": str(REPO_ROOT),  # the image's WORKDIR holds examples/ too
            "KUBETRAIN_RESTART_BACKOFF_SECONDS": "2",
            "KUBETRAIN_RECONCILE_INTERVAL": "3",
            # Twice the harness's node-monitor grace period (10 s): a peer's error waits
            # that long for a dead node to show as NotReady.
            "KUBETRAIN_FAILURE_SETTLE_SECONDS": "20",
            **self.extra_env,
        }
        # No storage credentials: recovery never reads the checkpoint store from here.
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            env.pop(var, None)
        # setpriv: the operator dies with the test run even when pytest is SIGKILLed.
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *prefix,
                    sys.executable,
                    "-m",
                    "kubetrain_cli",
                    "operator",
                    f"--health-port={self.health_port}",
                    f"--metrics-port={self.metrics_port}",
                    *self.args,
                ],
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if "--leader-elect" not in self.args:  # a follower is never ready
            wait_until(self.ready, timeout=60, what="the operator to be ready")

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"operator exited {self.proc.returncode}:\n{self.log_tail()}")
        return http_ok(f"http://127.0.0.1:{self.health_port}/readyz")

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, like a crashed or evicted operator pod."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text: str = resp.read().decode()
        return text

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
