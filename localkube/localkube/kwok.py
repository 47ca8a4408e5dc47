"""kwok beside a local cluster: fake nodes whose pods run nothing.

kwok (Kubernetes WithOut Kubelet, kubernetes-sigs/kwok) plays the kubelet of the nodes
it manages: it makes them Ready, keeps their leases fresh, and moves their pods through
*stages* (here: Pending -> Running, Running -> Succeeded after a delay, deleted ->
gone). The control plane is the real one, so what a controller does against kwok nodes
costs what it would cost against real ones, minus the containers::

    with Kwok(cluster.kubeconfig, cluster.logs_dir, complete_after_seconds=5) as kwok:
        kwok.add_nodes(cluster.api, 10)

The binary comes from binaries.py like the others (`kwok`, pinned in
tools/versions.env). Pod IPs are drawn from a loopback range (127.1.0.0/16 by
default): anything that connects to a fake pod is refused at once, instead of waiting
for a timeout on an address nobody answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any

from localkube.api import KubeApi
from localkube.binaries import binary
from localkube.services import ManagedProcess, wait_until

ANNOTATION = "kwok.x-k8s.io/node"  # "fake" on the nodes this kwok manages
STAGE_API = "kwok.x-k8s.io/v1alpha1"
LOOPBACK_CIDR = "127.1.0.0/16"

_NODE_STATUS = """\
{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
{{ with NodeIP }}
- address: {{ . | Quote }}
  type: InternalIP
{{ end }}
allocatable:
{{ YAML .status.capacity 1 }}
capacity:
{{ YAML .status.capacity 1 }}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: kwok
  containerRuntimeVersion: kwok
phase: Running
"""

_POD_RUNNING = """\
{{ $now := Now }}
conditions:
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName false ( or .metadata.uid "" ) ( or .metadata.name "" ) \
( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""

# What a kubelet reports when every container exited 0: what an operator reads as success.
_POD_SUCCEEDED = """\
{{ $now := Now }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
phase: Succeeded
"""


def _stage(name: str, kind: str, selector: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": STAGE_API,
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": kind},
            "selector": {"matchExpressions": selector},
            **spec,
        },
    }


def stages(complete_after_seconds: float | None) -> list[dict[str, Any]]:
    """The lifecycle kwok plays: nodes become Ready; pods Running at once, Succeeded
    (exit code 0) `complete_after_seconds` later (None: they run forever); a deleted
    pod goes away at once, as a kubelet confirms it."""
    alive = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    result = [
        _stage(
            "node-initialize",
            "Node",
            [
                {
                    "key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
                    "operator": "NotIn",
                    "values": ["True"],
                }
            ],
            next={"statusTemplate": _NODE_STATUS},
        ),
        _stage(
            "pod-ready",
            "Pod",
            [alive, {"key": ".status.podIP", "operator": "DoesNotExist"}],
            next={"statusTemplate": _POD_RUNNING},
        ),
        _stage(
            "pod-delete",
            "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
            next={"finalizers": {"empty": True}, "delete": True},
        ),
    ]
    if complete_after_seconds is not None:
        result.append(
            _stage(
                "pod-complete",
                "Pod",
                [alive, {"key": ".status.phase", "operator": "In", "values": ["Running"]}],
                delay={"durationMilliseconds": round(complete_after_seconds * 1000)},
                next={"statusTemplate": _POD_SUCCEEDED},
            )
        )
    return result


def config_text(complete_after_seconds: float | None) -> str:
    """kwok's --config file: the stages as YAML documents (JSON is YAML)."""
    return "\n---\n".join(json.dumps(doc, indent=1) for doc in stages(complete_after_seconds))


def fake_node(
    name: str, *, cpu: str = "1k", memory: str = "4Ti", pods: int = 1000
) -> dict[str, Any]:
    """A Node for kwok to manage (the annotation), with room for many pods."""
    capacity = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


class Kwok:
    """One kwok process that manages the nodes annotated `kwok.x-k8s.io/node: fake`."""

    def __init__(
        self,
        kubeconfig: Path,
        state_dir: Path,
        *,
        complete_after_seconds: float | None = None,
        cidr: str = LOOPBACK_CIDR,
        lease_seconds: int = 40,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.state_dir = state_dir
        self.complete_after_seconds = complete_after_seconds
        self.cidr = cidr
        self.lease_seconds = lease_seconds
        self.config_path = state_dir / "kwok.yaml"
        self.nodes: list[str] = []
        self.process: ManagedProcess | None = None

    def argv(self) -> list[str]:
        return [
            str(binary("kwok")),
            f"--kubeconfig={self.kubeconfig}",
            f"--config={self.config_path}",
            f"--manage-nodes-with-annotation-selector={ANNOTATION}=fake",
            f"--cidr={self.cidr}",
            f"--node-lease-duration-seconds={self.lease_seconds}",
        ]

    def start(self) -> Kwok:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_text(self.complete_after_seconds))
        self.process = ManagedProcess("kwok", self.argv(), self.state_dir / "kwok.log")
        self.process.start()
        return self

    def add_nodes(
        self, api: KubeApi, count: int, *, prefix: str = "kwok-node", timeout: float = 60.0
    ) -> list[str]:
        """Create `count` fake nodes and wait until kwok has made them Ready."""
        names = [f"{prefix}-{len(self.nodes) + i}" for i in range(count)]
        for name in names:
            api.request("POST", "/api/v1/nodes", fake_node(name))
        self.nodes += names

        def ready() -> bool:
            found = api.get("/api/v1/nodes")["items"]
            ok = {
                n["metadata"]["name"]
                for n in found
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (n.get("status") or {}).get("conditions") or []
                )
            }
            return set(names) <= ok

        processes = [self.process] if self.process is not None else []
        wait_until(ready, timeout=timeout, what=f"{count} kwok nodes Ready", processes=processes)
        return names

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> Kwok:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
