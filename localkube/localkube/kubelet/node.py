"""A process kubelet: a Kubernetes node whose pods are local processes.

It registers a Node, keeps its Ready condition and Lease fresh, watches the pods
bound to it and runs each one with a PodWorker (kubelet_pod): own network
namespace on the harness's bridge, own mount and UTS namespaces with the pod's
volumes, /etc/hosts and termination-log file bind-mounted at their real paths.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localkube.api import MERGE_PATCH, STRATEGIC_PATCH, ApiError, KubeApi
from localkube.kubelet.hostpaths import HostPaths
from localkube.kubelet.pod import NodeContext, PodWorker, pod_dir
from localkube.kubelet.server import LogServer
from localkube.network import PodNetwork

__all__ = ["NodeSpec", "ProcessKubelet"]

HEARTBEAT_SECONDS = 2.0
LEASE_DURATION_SECONDS = 40
LEASE_NAMESPACE = "kube-node-lease"
KUBELET_VERSION = "v1.37.1-process"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodeSpec:
    """One node of the harness: its name, what it offers the scheduler, its labels."""

    name: str
    cpu: str = "4"
    memory: str = "8Gi"
    pods: int = 32
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    def capacity(self) -> dict[str, str]:
        resources = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "100Gi",
        }
        if self.gpus > 0:
            resources[GPU_RESOURCE] = str(self.gpus)
        return resources

    def all_labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.labels,
        }


def _rfc3339(micro: bool = False) -> str:
    now = dt.datetime.now(dt.UTC)
    if micro:
        return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready_conditions(since: str, now: str) -> list[dict[str, Any]]:
    def cond(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": since,
        }

    return [
        cond(
            "MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"
        ),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID"),
        cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]


_HOST_PATHS = HostPaths()


class ProcessKubelet:
    """One node: registration, heartbeats, and a PodWorker for every pod bound to it."""

    def __init__(
        self,
        node: NodeSpec,
        *,
        kubeconfig: Path,
        state_dir: Path,
        network: PodNetwork,
        api_host: str,
        api_port: int,
        ca_file: Path,
        extra_env: dict[str, str] | None = None,
        restart_backoff_seconds: tuple[float, float] = (1.0, 30.0),
        image_workdir: str = "/",
        image_paths: Sequence[str] = (),
        image_entrypoints: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.node = node
        # Images are not pulled: commands run with the project's Python, and this directory
        # stands in for the image's WORKDIR (the cluster passes the repo root).
        self.image_workdir = image_workdir
        # ... and these host directories stand in for the image's files (init.py).
        self.image_paths = tuple(image_paths)
        self.image_entrypoints = dict(image_entrypoints or {})
        self.kubeconfig = kubeconfig
        self.state_dir = state_dir
        self.network = network
        self.api_host = api_host
        self.api_port = api_port
        self.ca_file = ca_file
        self.extra_env = dict(extra_env or {})
        self.backoff = restart_backoff_seconds
        self._alive = threading.Event()
        self._dead = threading.Event()  # the inverse of _alive, for waits that end on death
        self._partitioned = threading.Event()  # cut off from the API server; pods run on
        self._workers: dict[str, PodWorker] = {}
        self._workers_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._api: KubeApi | None = None
        self._ready_since = ""
        self._started = False
        self._log_server: LogServer | None = None
        self._log_port = 0
        # One logger per node, written to state_dir/kubelet.log while the node runs.
        self.log = logging.getLogger(f"kubetrain.kubelet.{node.name}")
        self.log.setLevel(logging.INFO)
        self._log_handler: logging.Handler | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Register the Node and its Lease, then heartbeat and run pods in the background."""
        if self._started:
            raise RuntimeError(f"kubelet {self.node.name} was started before (no node restarts)")
        self._started = True
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._log_handler = logging.FileHandler(self.state_dir / "kubelet.log")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(self._log_handler)
        self._api = KubeApi.from_kubeconfig(self.kubeconfig)
        self._alive.set()
        _HOST_PATHS.acquire()
        self._log_server = LogServer(
            self.network.bridge_ip, self.state_dir / "pki", self._log_lookup, self.node.name
        )
        self._log_port = self._log_server.port
        self._log_server.start()
        self._register()
        self._renew_lease()
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._watch_loop, "pods")):
            thread = threading.Thread(target=target, daemon=True, name=f"{self.node.name}-{name}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Simulated node death: no more heartbeats or API writes; pod processes SIGKILLed.

        The Node and its pods stay in the API: noticing is the control plane's job.
        """
        if not self._alive.is_set():
            return
        self._alive.clear()
        self._dead.set()
        if self._api is not None:
            self._api.close()
        if self._log_server is not None:
            self._log_server.stop()
        workers = self._all_workers()
        for worker in workers:
            worker.halt()
        for worker in workers:
            worker.join(10.0)
        for thread in self._threads:
            thread.join(5.0)
        _HOST_PATHS.release()
        self.log.info("node %s stopped", self.node.name)
        if self._log_handler is not None:
            self.log.removeHandler(self._log_handler)
            self._log_handler.close()

    def partition(self) -> None:
        """Simulated network partition: the node stops talking to the API server (no
        heartbeats, no pod status, no watch) while its pods keep running, unaware: the
        control plane sees a dead node, the pods' processes live on (split brain)."""
        self._partitioned.set()
        self.log.info("node %s partitioned from the API server", self.node.name)

    def shutdown(self) -> None:
        """Clean stop on exit: kill the pods, remove their namespaces, mounts and files."""
        self.stop()

    # --- helpers for tests -----------------------------------------------------------

    def kill_pod(self, namespace: str, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the main process of a running pod of this node."""
        for worker in self._all_workers():
            if (worker.namespace, worker.name) == (namespace, name) and worker.kill_main(sig):
                return
        raise LookupError(f"no running pod {namespace}/{name} on node {self.node.name}")

    def freeze_pod(self, namespace: str, name: str, frozen: bool = True) -> None:
        """Pause (or, with frozen=False, resume) every process of a running pod of this
        node, like the cgroup freezer: a process that stalls, then carries on unaware."""
        sig = signal.SIGSTOP if frozen else signal.SIGCONT
        for worker in self._all_workers():
            if (worker.namespace, worker.name) == (namespace, name) and worker.signal_all(sig):
                return
        raise LookupError(f"no running pod {namespace}/{name} on node {self.node.name}")

    def pod_log_path(self, namespace: str, name: str, container: str) -> Path:
        return pod_dir(self.state_dir, namespace, name) / f"{container}.log"

    def _log_lookup(
        self, namespace: str, name: str, container: str
    ) -> tuple[Path, Callable[[], bool]] | None:
        """For the log endpoint: the newest pod of that name that has the container."""
        for worker in reversed(self._all_workers()):
            if (worker.namespace, worker.name) == (namespace, name) and worker.has_container(
                container
            ):
                return worker.log_path(container), functools.partial(
                    worker.container_running, container
                )
        path = self.pod_log_path(namespace, name, container)
        return (path, lambda: False) if path.exists() else None

    # --- node ------------------------------------------------------------------------

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            raise RuntimeError("kubelet is not started")
        return self._api

    def _node_status(self, now: str) -> dict[str, Any]:
        capacity = self.node.capacity()
        return {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": _ready_conditions(self._ready_since, now),
            # InternalIP only: the API server dials the first address type it prefers
            # (Hostname first), and node names do not resolve on this machine.
            "addresses": [{"type": "InternalIP", "address": self.network.bridge_ip}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self._log_port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": "",
                "osImage": "process kubelet",
                "containerRuntimeVersion": "process://1",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register(self) -> None:
        now = _rfc3339()
        self._ready_since = now
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node.name, "labels": self.node.all_labels()},
            "spec": {},
            "status": self._node_status(now),
        }
        try:
            self.api.request("POST", "/api/v1/nodes", body)
        except ApiError as err:
            if err.status != 409:
                raise
            self.api.request(
                "PATCH",
                f"/api/v1/nodes/{self.node.name}",
                {"metadata": {"labels": self.node.all_labels()}},
                content_type=STRATEGIC_PATCH,
            )
        self._patch_node_status(full=True)

    def _patch_node_status(self, *, full: bool = False) -> None:
        now = _rfc3339()
        status = (
            self._node_status(now)
            if full
            else {"conditions": _ready_conditions(self._ready_since, now)}
        )
        self.api.request(
            "PATCH",
            f"/api/v1/nodes/{self.node.name}/status",
            {"status": status},
            content_type=STRATEGIC_PATCH,
        )

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.node.name}"
        spec = {
            "holderIdentity": self.node.name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": _rfc3339(micro=True),
        }
        try:
            self.api.request("PATCH", path, {"spec": spec}, content_type=MERGE_PATCH)
        except ApiError as err:
            if err.status != 404:
                raise
            node = self.api.request("GET", f"/api/v1/nodes/{self.node.name}")
            owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self.node.name,
                "uid": node["metadata"]["uid"],
            }
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.node.name,
                    "namespace": LEASE_NAMESPACE,
                    "ownerReferences": [owner],
                },
                "spec": spec,
            }
            self.api.request(
                "POST", f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases", body
            )

    def _heartbeat_loop(self) -> None:
        while self._alive.wait(0) and not self._sleep(HEARTBEAT_SECONDS):
            if self._partitioned.is_set():
                continue
            try:
                self._renew_lease()
                self._patch_node_status()
            except Exception as err:
                if self._alive.is_set():
                    self.log.warning("node %s heartbeat failed: %s", self.node.name, err)

    def _sleep(self, seconds: float) -> bool:
        """Sleep; True (at once) if the node dies meanwhile."""
        return self._dead.wait(seconds)

    # --- pods --------------------------------------------------------------------------

    def _all_workers(self) -> list[PodWorker]:
        with self._workers_lock:
            return list(self._workers.values())

    def _context(self) -> NodeContext:
        base_env = {
            **self.extra_env,
            "KUBERNETES_SERVICE_HOST": self.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port),
            "KUBERNETES_PORT": f"tcp://{self.api_host}:{self.api_port}",
        }
        base_env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        return NodeContext(
            api=self.api,
            network=self.network,
            node_name=self.node.name,
            host_ip=self.network.bridge_ip,
            state_dir=self.state_dir,
            ca_bytes=self.ca_file.read_bytes(),
            base_env=base_env,
            node_cpu=self.node.cpu,
            node_memory=self.node.memory,
            alive=self._alive,
            partitioned=self._partitioned,
            backoff_base=self.backoff[0],
            backoff_cap=self.backoff[1],
            created_paths=_HOST_PATHS.add,
            log=self.log,
            image_workdir=self.image_workdir,
            image_paths=self.image_paths,
            image_entrypoints=self.image_entrypoints,
        )

    def _watch_loop(self) -> None:
        ctx = self._context()
        query = {"fieldSelector": f"spec.nodeName={self.node.name}"}
        resource_version = ""
        while self._alive.is_set() and not self._partitioned.is_set():
            try:
                if not resource_version:
                    listing = self.api.request("GET", "/api/v1/pods", query=query)
                    resource_version = listing["metadata"]["resourceVersion"]
                    self._sync(ctx, listing["items"])
                watch_query = {
                    **query,
                    "resourceVersion": resource_version,
                    "allowWatchBookmarks": "true",
                }
                for event in self.api.watch("/api/v1/pods", watch_query, timeout_seconds=60):
                    if not self._alive.is_set() or self._partitioned.is_set():
                        return  # a partitioned node never learns of deletions
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        resource_version = ""  # expired: list again
                        break
                    resource_version = obj["metadata"].get("resourceVersion", resource_version)
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        self._forget(obj["metadata"]["uid"])
                    else:
                        self._dispatch(ctx, obj)
            except Exception as err:
                if not self._alive.is_set():
                    return
                self.log.warning("node %s pod watch: %s", self.node.name, err)
                resource_version = ""
                self._sleep(1.0)

    def _sync(self, ctx: NodeContext, pods: list[dict[str, Any]]) -> None:
        present = {p["metadata"]["uid"] for p in pods}
        for uid in [u for u in list(self._workers) if u not in present]:
            self._forget(uid)
        for pod in pods:
            self._dispatch(ctx, pod)

    def _dispatch(self, ctx: NodeContext, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._workers_lock:
            worker = self._workers.get(uid)
            if worker is None:
                phase = (pod.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    # Finished before this kubelet saw it: only a pending deletion is left.
                    if pod["metadata"].get("deletionTimestamp"):
                        self._delete_now(pod)
                    return
                worker = PodWorker(ctx, pod)
                self._workers[uid] = worker
                worker.start()
                return
        worker.update(pod)

    def _delete_now(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            self.api.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )

    def _forget(self, uid: str) -> None:
        with self._workers_lock:
            worker = self._workers.pop(uid, None)
        if worker is not None:
            worker.deleted()
