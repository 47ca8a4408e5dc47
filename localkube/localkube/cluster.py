"""A real Kubernetes control plane from binaries, with process kubelets, MinIO and Prometheus.

Start-up order matters: the pod network comes first because the API server,
MinIO and Prometheus listen on its bridge address, which pods and the host
both reach. Everything is torn down in reverse order.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from localkube.api import ApiError, KubeApi
from localkube.binaries import binary
from localkube.images import Images
from localkube.kubelet import NodeSpec, ProcessKubelet
from localkube.network import NetworkError, PodNetwork
from localkube.pki import CertificateAuthority, KeyPair, write_service_account_keys
from localkube.service_names import ServiceNames
from localkube.services import (
    ManagedProcess,
    MinioServer,
    PrometheusServer,
    free_port,
    http_ok,
    wait_until,
)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
_API_SANS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
# A container's default PATH; the harness puts its Python shims in front.
_POD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Bridge names and pod CIDRs tried in turn when none is given, so that several
# test sessions (and a dev cluster) can share one machine.
_DEFAULT_NETWORKS = [(f"kt{i}", f"10.{213 + i}.0.0/16") for i in range(10)]

# How tests call Cluster.kubectl (the `kubectl` fixture).
Kubectl = Callable[..., subprocess.CompletedProcess[str]]

# Taints the node lifecycle controller keeps on a node until it has seen it Ready.
_STARTUP_TAINTS = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}


def default_nodes(count: int = 3) -> list[NodeSpec]:
    return [NodeSpec(f"node-{i}") for i in range(count)]


def check_host() -> None:
    """The harness creates a bridge and network namespaces: that needs root and iproute2."""
    if os.geteuid() != 0:
        raise RuntimeError(
            "the local cluster harness must run as root: it creates a bridge and one network "
            "namespace per pod (run the e2e tests as root, e.g. in the dev VM)"
        )
    if shutil.which("ip") is None:
        raise RuntimeError(
            "the local cluster harness needs `ip` from iproute2 (apt install iproute2)"
        )


def write_kubeconfig(path: Path, *, server: str, ca: Path, client: KeyPair, user: str) -> Path:
    """A kubeconfig that authenticates with a client certificate (files referenced by path)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "kubetrain", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(client.cert), "client-key": str(client.key)},
            }
        ],
        "contexts": [{"name": "kubetrain", "context": {"cluster": "kubetrain", "user": user}}],
        "current-context": "kubetrain",
    }
    # JSON is valid YAML; kubectl and client libraries read it as a kubeconfig.
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def _node_is_ready(node: Mapping[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    taints = {t["key"] for t in node.get("spec", {}).get("taints", []) or []}
    return ready and not (taints & _STARTUP_TAINTS)


class Cluster:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler, process kubelets,
    MinIO and Prometheus, all as local processes; state in one temp dir.

    Use as a context manager, or call start() and stop(). On an exception inside
    `with`, the component logs are copied to a kept directory whose path is printed.
    `network` is the pod network's (bridge name, CIDR); by default the first free
    one of kt0/10.213.0.0/16 ... kt9/10.222.0.0/16.
    """

    def __init__(
        self,
        nodes: Sequence[NodeSpec] | None = None,
        *,
        network: tuple[str, str] | None = None,
        service_cidr: str = "10.96.0.0/16",
        minio: bool = True,
        prometheus: bool = True,
        bucket: str = "kubetrain",
        node_monitor_grace_period: str = "10s",
        kubelet_env: Mapping[str, str] | None = None,
        images: Images | None = None,
    ) -> None:
        self.node_specs = list(nodes) if nodes is not None else default_nodes()
        self._network_choice = network
        self.service_cidr = service_cidr
        self.bucket = bucket
        self.node_monitor_grace_period = node_monitor_grace_period
        self.kubelet_env = dict(kubelet_env or {})
        self.images = images or Images()
        self._want_minio = minio
        self._want_prometheus = prometheus

        self.state_dir: Path | None = None
        self.startup_seconds: float | None = None
        self.network: PodNetwork | None = None
        self.kubelets: dict[str, ProcessKubelet] = {}
        self.minio: MinioServer | None = None
        self.prometheus: PrometheusServer | None = None
        self._processes: dict[str, ManagedProcess] = {}
        self._api: KubeApi | None = None
        self._kubeconfig: Path | None = None
        self._ca: Path | None = None
        self._authority: CertificateAuthority | None = None
        self._pod_env: dict[str, str] = {}
        self._image_paths: tuple[str, ...] = ()
        self._service_names: ServiceNames | None = None
        self.api_host = ""
        self.api_port = 0

    # --- properties the tests use -------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (group system:masters)."""
        if self._kubeconfig is None:
            raise RuntimeError("cluster is not started")
        return self._kubeconfig

    @property
    def ca_file(self) -> Path:
        if self._ca is None:
            raise RuntimeError("cluster is not started")
        return self._ca

    @property
    def api(self) -> KubeApi:
        """An admin client of the API server."""
        if self._api is None:
            raise RuntimeError("cluster is not started")
        return self._api

    @property
    def api_url(self) -> str:
        return f"https://{self.api_host}:{self.api_port}"

    @property
    def logs_dir(self) -> Path:
        return self._state() / "logs"

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        check_host()
        self.state_dir = Path(tempfile.mkdtemp(prefix="kubetrain-cluster-"))
        try:
            self._start_components()
        except BaseException:
            kept = self.stop(keep_logs=True)
            print(f"cluster start failed; component logs kept in {kept}", file=sys.stderr)
            raise
        self.startup_seconds = time.monotonic() - started

    def _start_components(self) -> None:
        state = self._state()
        self.logs_dir.mkdir()
        pki_dir = state / "pki"
        pki_dir.mkdir()

        self.network = self._setup_network()
        self.api_host = self.network.bridge_ip
        self.api_port = free_port(self.api_host)

        ca = CertificateAuthority(pki_dir)
        self._authority = ca
        self._ca = ca.pair.cert
        sa_keys = write_service_account_keys(pki_dir)
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            dns_names=_API_SANS,
            ip_addresses=(self.api_host, "127.0.0.1", self._first_service_ip()),
            server=True,
        )
        admin = ca.issue("admin", "kubetrain-admin", organizations=("system:masters",))
        self._kubeconfig = self._kubeconfig_for("admin", admin)
        self._api = KubeApi(
            self.api_url, ca_file=str(self._ca), cert_file=str(admin.cert), key_file=str(admin.key)
        )

        # MinIO and Prometheus need nothing from the control plane to start: launch
        # them first and collect them last, so their start-up overlaps the API server's.
        if self._want_minio:
            self.minio = MinioServer(
                binary=binary("minio"),
                data_dir=state / "minio-data",
                log_path=self.logs_dir / "minio.log",
                host=self.api_host,
            )
            self.minio.launch()
        if self._want_prometheus:
            self.prometheus = PrometheusServer(
                binary=binary("prometheus"),
                directory=state / "prometheus",
                log_path=self.logs_dir / "prometheus.log",
                list_pods=lambda: self.api.get("/api/v1/pods")["items"],
            )
            self.prometheus.launch()
        etcd_port = self._start_etcd()
        self._start_apiserver(etcd_port, serving, sa_keys)
        self._start_controller_manager(ca, sa_keys)
        self._start_scheduler(ca)
        self._service_names = ServiceNames(
            self.network.names,
            lambda: self.api.get("/api/v1/services")["items"],
            lambda: self.api.get("/apis/discovery.k8s.io/v1/endpointslices")["items"],
        )
        self._service_names.start()
        # Pods run this Python's environment, as an image with it would: its venv's
        # console scripts first on PATH, and the images' own environment.
        venv_bin = Path(sys.executable).parent
        shims = self._python_shims()
        # What a non-root container must reach (its parents may be root-only, like /root).
        self._image_paths = (sys.prefix, sys.base_prefix, str(shims), *self.images.paths)
        self._pod_env = {
            "PATH": f"{shims}:{venv_bin}:{_POD_PATH}",
            **self.images.env,
            **self.kubelet_env,
        }
        for spec in self.node_specs:
            self._start_kubelet(spec)
        if self.minio is not None:
            self.minio.wait_ready()
            self.minio.create_bucket(self.bucket)
        if self.prometheus is not None:
            self.prometheus.wait_ready()
        self.wait_for_nodes_ready()

    def stop(self, keep_logs: bool = False) -> Path | None:
        """Stop everything and remove the state dir; return where logs were kept, if asked."""
        errors: list[str] = []

        def attempt(what: str, action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as err:  # keep tearing down; report all at the end
                errors.append(f"{what}: {err}")

        if self._service_names is not None:
            attempt("service names", self._service_names.stop)
            self._service_names = None
        for name, kubelet in self.kubelets.items():
            attempt(f"kubelet {name}", kubelet.shutdown)
        if self.prometheus is not None:
            attempt("prometheus", self.prometheus.stop)
        if self.minio is not None:
            attempt("minio", self.minio.stop)
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            if name in self._processes:
                attempt(name, self._processes[name].stop)
        if self.network is not None:
            attempt("network", self.network.teardown)
        kept = self._keep_logs() if keep_logs or errors else None
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None
        self.kubelets.clear()
        self._processes.clear()
        self.network = self.minio = self.prometheus = None
        if errors:
            print(
                f"cluster teardown errors (logs in {kept}):", *errors, sep="\n  ", file=sys.stderr
            )
        return kept

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Ctrl-C is how `make dev-cluster` ends: no failure, nothing to keep.
        failed = exc_type is not None and not issubclass(exc_type, KeyboardInterrupt)
        kept = self.stop(keep_logs=failed)
        if kept is not None:
            print(f"cluster logs kept in {kept}", file=sys.stderr)

    # --- fault injection -----------------------------------------------------------

    def stop_node(self, name: str) -> None:
        """Simulated node death: heartbeats stop and its pods are killed; the Node stays."""
        self.kubelets[name].stop()

    def partition_node(self, name: str) -> None:
        """Simulated partition: the node goes silent to the API server but its pods run
        on (stop_node later kills them). To signal such a pod, use
        `kubelets[name].kill_pod`: the API may already know a new pod of that name."""
        self.kubelets[name].partition()

    def add_node(self, spec: NodeSpec, timeout: float = 60.0) -> None:
        """Start one more process kubelet and wait until its Node is Ready."""
        self._start_kubelet(spec)
        self._wait_nodes_ready({spec.name}, timeout)

    def kill_pod(self, namespace: str, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the processes of a running pod, on whichever node runs it."""
        self.kubelets[self.pod_node(namespace, name)].kill_pod(namespace, name, sig)

    def restart_apiserver(self) -> None:
        """Stop the API server and start it again on the same address; wait until ready."""
        proc = self._processes["kube-apiserver"]
        proc.stop()
        proc.start()
        self._wait_apiserver_ready()

    def stop_minio(self) -> None:
        if self.minio is None:
            raise RuntimeError("this cluster runs without MinIO")
        self.minio.stop()

    def start_minio(self) -> None:
        """Start MinIO again on the same port and data (buckets and objects survive)."""
        if self.minio is None:
            raise RuntimeError("this cluster runs without MinIO")
        self.minio.start()

    # --- helpers for tests ---------------------------------------------------------

    def pod_node(self, namespace: str, name: str) -> str:
        pod = self.api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        node: str | None = pod["spec"].get("nodeName")
        if not node:
            raise RuntimeError(f"pod {namespace}/{name} is not bound to a node")
        return node

    def pod_log_path(self, namespace: str, name: str, container: str) -> Path:
        node = self.pod_node(namespace, name)
        return self.kubelets[node].pod_log_path(namespace, name, container)

    def kubectl(
        self, *args: str, input_text: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster; raise with its stderr when it fails."""
        result = subprocess.run(
            [str(binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def create_namespace(
        self, name: str, labels: Mapping[str, str] | None = None, timeout: float = 30.0
    ) -> str:
        """Create a namespace and wait until pods can go in it: the controller-manager has
        made its `default` service account and `kube-root-ca.crt` (a pod created before
        that is refused)."""
        metadata: dict[str, Any] = {"name": name, "labels": dict(labels or {})}
        self.api.request("POST", "/api/v1/namespaces", {"metadata": metadata})

        def ready() -> bool:
            base = f"/api/v1/namespaces/{name}"
            return all(
                self.api.get_or_none(f"{base}/{kind}") is not None
                for kind in ("serviceaccounts/default", "configmaps/kube-root-ca.crt")
            )

        wait_until(ready, timeout=timeout, what=f"namespace {name} to be ready", interval=0.2)
        return name

    def wait_for_nodes_ready(self, timeout: float = 60.0) -> None:
        self._wait_nodes_ready({spec.name for spec in self.node_specs}, timeout)

    def _wait_nodes_ready(self, names: set[str], timeout: float) -> None:
        def ready() -> bool:
            nodes = self.api.get("/api/v1/nodes")["items"]
            ready_names = {n["metadata"]["name"] for n in nodes if _node_is_ready(n)}
            return names <= ready_names

        wait_until(
            ready,
            timeout=timeout,
            what=f"nodes {sorted(names)} to be Ready and untainted",
            processes=list(self._processes.values()),
            interval=0.5,
        )

    def wait_for_pod(
        self,
        namespace: str,
        name: str,
        phases: Sequence[str] = ("Running",),
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Wait until the pod is in one of `phases`; return the pod. Fails early on an
        unexpected terminal phase."""
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        found: dict[str, Any] = {}

        def reached() -> bool:
            pod = self.api.get_or_none(path)
            if pod is None:
                return False
            phase = pod.get("status", {}).get("phase")
            if phase in ("Succeeded", "Failed") and phase not in phases:
                raise RuntimeError(f"pod {namespace}/{name} ended {phase}: {pod.get('status')}")
            found.update(pod)
            return phase in phases

        wait_until(
            reached, timeout=timeout, what=f"pod {namespace}/{name} to be {'/'.join(phases)}"
        )
        return found

    # --- components ----------------------------------------------------------------

    def _state(self) -> Path:
        if self.state_dir is None:
            raise RuntimeError("cluster is not started")
        return self.state_dir

    def _setup_network(self) -> PodNetwork:
        candidates = [self._network_choice] if self._network_choice else _DEFAULT_NETWORKS
        errors = []
        for name, cidr in candidates:
            network = PodNetwork(name=name, cidr=cidr)
            try:
                network.setup()
            except NetworkError as err:  # in use by another harness: try the next one
                errors.append(str(err))
                continue
            return network
        raise NetworkError("no pod network could be set up:\n  " + "\n  ".join(errors))

    def _first_service_ip(self) -> str:
        # The `kubernetes` Service gets the first address of the service range.
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))

    def _kubeconfig_for(self, name: str, client: KeyPair) -> Path:
        return write_kubeconfig(
            self._state() / f"{name}.kubeconfig",
            server=self.api_url,
            ca=self.ca_file,
            client=client,
            user=name,
        )

    def _python_shims(self) -> Path:
        """A directory whose `python` and `python3` run the project's interpreter.

        Pods ignore their image and run their command as a local process, so
        `python` in a pod must be the Python that runs the harness (the dev venv,
        with the project installed). Scripts, not symlinks: a venv's interpreter
        finds its packages only when started by its own path.
        """
        shims = self._state() / "bin"
        shims.mkdir(exist_ok=True)
        for name in ("python", "python3"):
            shim = shims / name
            shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
            shim.chmod(0o755)
        return shims

    def _launch(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.logs_dir / f"{name}.log")
        self._processes[name] = proc
        proc.start()
        return proc

    def _start_etcd(self) -> int:
        client_port, peer_port = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        proc = self._launch(
            "etcd",
            [
                str(binary("etcd")),
                "--name=kubetrain",
                f"--data-dir={self._state() / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kubetrain={peer_url}",
                # Throwaway data: skipping fsync makes every API write much faster.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        wait_until(
            lambda: http_ok(f"{client_url}/health"),
            timeout=30,
            what="etcd to be healthy",
            processes=[proc],
        )
        return client_port

    def _start_apiserver(self, etcd_port: int, serving: KeyPair, sa_keys: KeyPair) -> None:
        self._launch(
            "kube-apiserver",
            [
                str(binary("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={self.api_host}",
                f"--advertise-address={self.api_host}",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={self.ca_file}",
                "--authorization-mode=Node,RBAC",
                # Default plugins (PodSecurity among them) plus NodeRestriction.
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={sa_keys.cert}",
                f"--service-account-signing-key-file={sa_keys.key}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        self._wait_apiserver_ready()

    def _wait_apiserver_ready(self) -> None:
        def ready() -> bool:
            try:
                self.api.request("GET", "/readyz", timeout=2)
            except ApiError:
                return False
            return True

        wait_until(
            ready,
            timeout=60,
            what="kube-apiserver /readyz",
            processes=[self._processes["kube-apiserver"], self._processes["etcd"]],
            interval=0.3,
        )

    def _start_controller_manager(self, ca: CertificateAuthority, sa_keys: KeyPair) -> None:
        cert = ca.issue("controller-manager", "system:kube-controller-manager")
        self._launch(
            "kube-controller-manager",
            [
                str(binary("kube-controller-manager")),
                f"--kubeconfig={self._kubeconfig_for('controller-manager', cert)}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                # All default controllers: garbage collector, namespace, serviceaccount(-token),
                # deployment, replicaset, node-lifecycle, taint-eviction-controller, ...
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--root-ca-file={self.ca_file}",
                f"--service-account-private-key-file={sa_keys.key}",
                f"--cluster-signing-cert-file={ca.pair.cert}",
                f"--cluster-signing-key-file={ca.pair.key}",
                f"--service-cluster-ip-range={self.service_cidr}",
                # Notice a dead node within seconds, not the default 40-50 s.
                "--node-monitor-period=2s",
                f"--node-monitor-grace-period={self.node_monitor_grace_period}",
            ],
        )

    def _start_scheduler(self, ca: CertificateAuthority) -> None:
        cert = ca.issue("scheduler", "system:kube-scheduler")
        self._launch(
            "kube-scheduler",
            [
                str(binary("kube-scheduler")),
                f"--kubeconfig={self._kubeconfig_for('scheduler', cert)}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
            ],
        )

    def _start_kubelet(self, spec: NodeSpec) -> ProcessKubelet:
        if self.network is None or self._authority is None:
            raise RuntimeError("cluster is not started")
        if spec.name in self.kubelets:
            raise ValueError(f"node {spec.name} already exists")
        # Each node has its own identity, so the Node authorizer and NodeRestriction apply.
        cert = self._authority.issue(
            f"node-{spec.name}", f"system:node:{spec.name}", organizations=("system:nodes",)
        )
        state_dir = self._state() / "nodes" / spec.name
        state_dir.mkdir(parents=True)
        kubelet = ProcessKubelet(
            spec,
            kubeconfig=self._kubeconfig_for(f"node-{spec.name}", cert),
            state_dir=state_dir,
            network=self.network,
            api_host=self.api_host,
            api_port=self.api_port,
            ca_file=self.ca_file,
            extra_env=self._pod_env,
            image_workdir=self.images.workdir or "/",
            image_paths=self._image_paths,
            image_entrypoints=dict(self.images.entrypoints),
        )
        self.kubelets[spec.name] = kubelet
        kubelet.start()
        return kubelet

    def _keep_logs(self) -> Path | None:
        if self.state_dir is None or not self.state_dir.exists():
            return None
        kept = Path(tempfile.mkdtemp(prefix="kubetrain-cluster-logs-"))
        # Special files (sockets, fifos) cannot be copied; the rest still is.
        with contextlib.suppress(shutil.Error):
            shutil.copytree(
                self.state_dir,
                kept,
                dirs_exist_ok=True,
                # Data stores are large and useless for debugging; logs and configs are not.
                ignore=shutil.ignore_patterns("etcd", "minio-data", "data", "*.sock"),
            )
        return kept
