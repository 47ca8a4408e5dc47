"""Gang scheduling beside a local cluster: scheduler-plugins' Coscheduling as a second
scheduler, with the PodGroup CRD.

Coscheduling (kubernetes-sigs/scheduler-plugins) binds the pods of a PodGroup only when
`minMember` of them fit at once; a pod that fits alone waits at Permit (assumed, never
bound) until the rest do. The binary is `scheduler-plugins` from binaries.py, a
kube-scheduler built against the Kubernetes 1.31 libraries with the extra plugins; the
PodGroup CRD is the same release's, copied by tools/testbin.sh into
`<testbin>/scheduler-plugins-<version>/manifests/`::

    with Coscheduler.beside(cluster) as gang:
        gang.pod_group(namespace, "job-a", min_member=2)
        # pods with schedulerName SCHEDULER_NAME and label POD_GROUP_LABEL: job-a

It runs as a second scheduler, on the host like the control plane: the cluster's own
kube-scheduler keeps the pods of `default-scheduler`, this one takes only the pods that
name its profile. stop() stops the process and deletes the CRD with every PodGroup.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from localkube.api import ApiError, KubeApi, is_true
from localkube.binaries import MissingBinary, binary, install_dir
from localkube.services import ManagedProcess, free_port, http_ok, wait_until

if TYPE_CHECKING:
    from localkube.cluster import Cluster

GROUP = "scheduling.x-k8s.io"
API = f"/apis/{GROUP}/v1alpha1"
CRD_NAME = f"podgroups.{GROUP}"
SCHEDULER_NAME = "scheduler-plugins-scheduler"  # a pod's spec.schedulerName
POD_GROUP_LABEL = f"{GROUP}/pod-group"  # on a pod: the name of its PodGroup
PLUGIN = "Coscheduling"
# Where the plugin acts: queue order (a gang's pods back to back), the sibling count
# (PreFilter), rejecting the whole gang when one pod cannot fit (PostFilter), holding
# the pods that fit until minMember do (Permit), and forgetting them (Reserve/Unreserve).
EXTENSION_POINTS = ("queueSort", "preFilter", "postFilter", "permit", "reserve")
_CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
_CRD_FILE = "podgroup-crd.yaml"


def manifests_dir() -> Path:
    """The release's PodGroup CRD: beside the binary, else in the cache."""
    for base in (binary("scheduler-plugins").parent, install_dir("scheduler-plugins")):
        if base is not None and (base / "manifests" / _CRD_FILE).is_file():
            return base / "manifests"
    raise MissingBinary("the PodGroup CRD not found beside scheduler-plugins: run `make testbin`")


def scheduler_config(
    kubeconfig: Path,
    *,
    permit_waiting_seconds: int = 10,
    backoff_seconds: int | None = None,
    max_pod_backoff_seconds: int | None = None,
) -> dict[str, Any]:
    """A KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1) with one profile,
    SCHEDULER_NAME: the default plugins plus Coscheduling, which replaces PrioritySort."""
    enabled = [{"name": PLUGIN}]
    plugins: dict[str, Any] = {point: {"enabled": enabled} for point in EXTENSION_POINTS}
    # One queue sort per scheduler: the default one must go.
    plugins["queueSort"] = {"enabled": enabled, "disabled": [{"name": "PrioritySort"}]}
    args: dict[str, Any] = {"permitWaitingTimeSeconds": permit_waiting_seconds}
    if backoff_seconds is not None:  # how long a gang that did not fit is not tried
        args["podGroupBackoffSeconds"] = backoff_seconds
    config: dict[str, Any] = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        # One replica per cluster; a Lease would only slow the start.
        "leaderElection": {"leaderElect": False},
        "profiles": [
            {
                "schedulerName": SCHEDULER_NAME,
                "plugins": plugins,
                "pluginConfig": [{"name": PLUGIN, "args": args}],
            }
        ],
    }
    # A gang retried a few times waits up to 10 s (the default) before the next try,
    # even once there is room; tests that free room want it tried sooner.
    if max_pod_backoff_seconds is not None:
        config["podInitialBackoffSeconds"] = min(1, max_pod_backoff_seconds)
        config["podMaxBackoffSeconds"] = max_pod_backoff_seconds
    return config


def pod_group(
    namespace: str, name: str, min_member: int, schedule_timeout_seconds: int | None = None
) -> dict[str, Any]:
    """A PodGroup: its pods are bound only when `min_member` of them can be at once."""
    spec: dict[str, Any] = {"minMember": min_member}
    if schedule_timeout_seconds is not None:
        spec["scheduleTimeoutSeconds"] = schedule_timeout_seconds
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "PodGroup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


class Coscheduler:
    """The PodGroup CRD and one scheduler-plugins scheduler; a context manager."""

    def __init__(
        self,
        kubeconfig: Path,
        api: KubeApi,
        state_dir: Path,
        *,
        permit_waiting_seconds: int = 10,
        backoff_seconds: int | None = None,
        max_pod_backoff_seconds: int | None = None,
        feature_gates: Mapping[str, bool] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.api = api
        self.state_dir = state_dir
        self.permit_waiting_seconds = permit_waiting_seconds
        self.backoff_seconds = backoff_seconds
        self.max_pod_backoff_seconds = max_pod_backoff_seconds
        self.feature_gates = dict(feature_gates or {})
        self.config_path = state_dir / "scheduler-config.yaml"
        self.port = free_port()
        self.process: ManagedProcess | None = None
        self._crd_installed = False

    @classmethod
    def beside(cls, cluster: Cluster, **options: Any) -> Coscheduler:
        """A Coscheduler for `cluster` (admin kubeconfig); its files and log in the
        cluster's logs dir, so they are kept with the others when a test fails."""
        return cls(cluster.kubeconfig, cluster.api, cluster.logs_dir / "coscheduling", **options)

    @property
    def healthz_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/healthz"

    def config(self) -> dict[str, Any]:
        return scheduler_config(
            self.kubeconfig,
            permit_waiting_seconds=self.permit_waiting_seconds,
            backoff_seconds=self.backoff_seconds,
            max_pod_backoff_seconds=self.max_pod_backoff_seconds,
        )

    def argv(self) -> list[str]:
        argv = [
            str(binary("scheduler-plugins")),
            f"--config={self.config_path}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
        ]
        if self.feature_gates:
            gates = ",".join(f"{k}={str(v).lower()}" for k, v in sorted(self.feature_gates.items()))
            argv.append(f"--feature-gates={gates}")
        return argv

    # --- lifecycle ----------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Coscheduler:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=1))
        try:
            # First the CRD: the plugin's PodGroup informer must find its API.
            self._install_crd(manifests_dir() / _CRD_FILE, timeout)
            self.process = ManagedProcess(
                "scheduler-plugins", self.argv(), self.state_dir / "scheduler-plugins.log"
            )
            self.process.start()
            wait_until(
                lambda: http_ok(self.healthz_url, verify=False),  # its self-signed cert
                timeout=timeout,
                what="scheduler-plugins /healthz",
                processes=[self.process],
                interval=0.5,
            )
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to see
                self.stop()
            raise
        return self

    def _install_crd(self, path: Path, timeout: float) -> None:
        [crd] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        self.api.create_or_replace(_CRDS, crd)  # a killed harness's is taken over
        self._crd_installed = True
        wait_until(
            lambda: is_true(self.api.get(f"{_CRDS}/{CRD_NAME}"), "Established"),
            timeout=timeout,
            what="the PodGroup CRD to be established",
        )

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the scheduler; delete the CRD, and with it every PodGroup."""
        if self.process is not None:
            self.process.stop()
            self.process = None
        if not self._crd_installed:
            return
        try:
            self.api.request("DELETE", f"{_CRDS}/{CRD_NAME}")
        except ApiError as err:
            if err.status != 404:
                raise
        self._crd_installed = False
        wait_until(
            lambda: self.api.get_or_none(f"{_CRDS}/{CRD_NAME}") is None,
            timeout=timeout,
            what="the PodGroup CRD to be gone",
        )

    def __enter__(self) -> Coscheduler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- objects ------------------------------------------------------------------

    def pod_group(
        self,
        namespace: str,
        name: str,
        min_member: int,
        schedule_timeout_seconds: int | None = None,
    ) -> dict[str, Any]:
        body = pod_group(namespace, name, min_member, schedule_timeout_seconds)
        made: dict[str, Any] = self.api.request(
            "POST", f"{API}/namespaces/{namespace}/podgroups", body
        )
        return made
