"""Kueue beside a local cluster: its controller manager, CRDs and admission webhooks.

Kueue (kubernetes-sigs/kueue) gates pods and jobs until a ClusterQueue has quota for
them. The binary is `kueue` from binaries.py; its CRDs and webhook configurations are
the same release's, copied by tools/testbin.sh into `<testbin>/kueue-<version>/manifests/`::

    with Kueue.beside(cluster, excluded_namespaces=("kube-system", "kubetrain")) as kueue:
        kueue.resource_flavor()
        kueue.cluster_queue("cq", cpu="4")
        kueue.local_queue(namespace, cluster_queue="cq")  # "default"

It runs on the host like the control plane: the webhook server on 127.0.0.1 with a
serving certificate for 127.0.0.1 from a CA of its own (Kueue's internal cert
management is off: it would issue for a Service's DNS name, and there is no Service
routing here), registered by URL. stop() leaves the cluster as it found it: webhook
configurations first (a dead webhook with failurePolicy Fail would refuse every pod),
then the process, then Kueue's finalizers on pods and its CRDs with all their objects.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localkube.api import MERGE_PATCH, ApiError, KubeApi, is_true
from localkube.binaries import binary
from localkube.kueue_manifests import (
    GROUP,
    client_config,
    converted_crds,
    load,
    manifests_dir,
    webhook_configurations,
)
from localkube.pki import CertificateAuthority
from localkube.services import ManagedProcess, free_port, http_ok, wait_until

if TYPE_CHECKING:
    from localkube.cluster import Cluster

API = f"/apis/{GROUP}/v1beta2"
QUEUE_LABEL = f"{GROUP}/queue-name"
ADMISSION_GATE = f"{GROUP}/admission"  # the scheduling gate on a pod Kueue has not admitted
MANAGED_LABEL = f"{GROUP}/managed"  # "true" on the pods Kueue manages
POD_FINALIZER = MANAGED_LABEL  # Kueue uses the same key as their finalizer
WEBHOOK_CONFIGS = {
    "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
    "ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
}
# Kueue reads its metrics serving certificate from this fixed path when internal cert
# management is off; the process gets ours bind-mounted there (see argv).
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
_PROBE = "localkube-webhook-probe"  # a ResourceFlavor name, only ever created as a dry run
_CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def _object(kind: str, name: str, spec: Mapping[str, Any], namespace: str = "") -> dict[str, Any]:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": f"{GROUP}/v1beta2", "kind": kind, "metadata": metadata, "spec": spec}


class Kueue:
    """One Kueue controller manager with its CRDs and webhooks; a context manager."""

    def __init__(
        self,
        kubeconfig: Path,
        api: KubeApi,
        state_dir: Path,
        *,
        frameworks: Sequence[str] = ("pod",),
        excluded_namespaces: Sequence[str] = ("kube-system",),
        namespace_selector: Mapping[str, Any] | None = None,
        wait_for_pods_ready: Mapping[str, Any] | None = None,
        feature_gates: Mapping[str, bool] | None = None,
        namespace: str = "kueue-system",
    ) -> None:
        self.kubeconfig = kubeconfig
        self.api = api
        self.state_dir = state_dir
        self.frameworks = tuple(frameworks)
        # Where pods are Kueue's: every namespace but these, unless a selector is given.
        # (and never its own: Kueue refuses a selector that matches its namespace).
        values = list(dict.fromkeys([*excluded_namespaces, namespace]))
        excluded = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": values}
        self.namespace_selector = dict(namespace_selector or {"matchExpressions": [excluded]})
        self.wait_for_pods_ready = wait_for_pods_ready
        self.feature_gates = dict(feature_gates or {})
        self.namespace = namespace
        self.cert_dir = state_dir / "certs"
        self.config_path = state_dir / "kueue-config.yaml"
        self.webhook_port, self.health_port, self.metrics_port = (free_port() for _ in range(3))
        self.process: ManagedProcess | None = None
        self._crds: dict[str, str] = {}  # CRD name -> its objects' path (storage version)
        self._webhooks: list[tuple[str, str]] = []

    @classmethod
    def beside(cls, cluster: Cluster, **options: Any) -> Kueue:
        """A Kueue for `cluster` (admin kubeconfig); its files and log in the cluster's
        logs dir, so they are kept with the others when a test fails."""
        return cls(cluster.kubeconfig, cluster.api, cluster.logs_dir / "kueue", **options)

    @property
    def base_url(self) -> str:  # of the webhook server
        return f"https://127.0.0.1:{self.webhook_port}"

    @property
    def metrics_url(self) -> str:
        return f"https://127.0.0.1:{self.metrics_port}/metrics"

    def config(self) -> dict[str, Any]:
        """Kueue's --config (config.kueue.x-k8s.io/v1beta2): every server on 127.0.0.1."""
        certs = str(self.cert_dir)
        config: dict[str, Any] = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": self.namespace,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.metrics_port}"},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": certs},
            # One replica per cluster; a Lease would only slow the start.
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "managedJobsNamespaceSelector": self.namespace_selector,
            "integrations": {"frameworks": list(self.frameworks)},
            # The visibility server listens on 0.0.0.0:8082 (one per machine) and is
            # reached through an APIService, which needs a Service: off.
            "featureGates": {"VisibilityOnDemand": False, **self.feature_gates},
        }
        if self.wait_for_pods_ready is not None:  # e.g. {"timeout": "2m"}
            config["waitForPodsReady"] = dict(self.wait_for_pods_ready)
        return config

    def webhook_configurations(
        self, docs: Sequence[Mapping[str, Any]], ca_bundle: bytes
    ) -> list[dict[str, Any]]:
        return webhook_configurations(
            docs, ca_bundle, self.base_url, self.frameworks, self.namespace_selector
        )

    # --- lifecycle ----------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Kueue:
        manifests = manifests_dir()
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        authority = CertificateAuthority(self.cert_dir, "localkube-kueue-ca")
        # tls.crt/tls.key: the names controller-runtime's webhook server looks for.
        authority.issue("tls", "127.0.0.1", ip_addresses=("127.0.0.1",), server=True)
        ca_bundle = authority.pair.cert.read_bytes()
        self.config_path.write_text(json.dumps(self.config(), indent=1))
        try:
            self._install_crds(manifests, ca_bundle, timeout)
            METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)  # the mount point
            self.process = ManagedProcess("kueue", self.argv(), self.state_dir / "kueue.log")
            self.process.start()
            wait_until(
                lambda: http_ok(f"http://127.0.0.1:{self.health_port}/readyz"),
                timeout=timeout,
                what="kueue /readyz",
                processes=[self.process],
                interval=0.5,
            )
            self._register_webhooks(manifests, ca_bundle, timeout)
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to see
                self.stop()
            raise
        return self

    def argv(self) -> list[str]:
        # A private mount namespace in which our certificate sits at the fixed metrics
        # path; on the host that path is only an empty directory (a mount point, as
        # the kubelet leaves for a pod's volumes).
        unshare = [shutil.which("unshare") or "unshare", "--mount", "--propagation=private", "--"]
        mount = ["sh", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh"]
        mount += [str(self.cert_dir), str(METRICS_CERT_DIR)]
        kueue = [str(binary("kueue")), f"--kubeconfig={self.kubeconfig}"]
        return [*unshare, *mount, *kueue, f"--config={self.config_path}"]

    def _install_crds(self, manifests: Path, ca_bundle: bytes, timeout: float) -> None:
        converted = converted_crds((manifests / "crd-kustomization.yaml").read_text())
        for path in sorted((manifests / "crd").glob("*.yaml")):
            for crd in load(path):
                name = crd["metadata"]["name"]
                if name in converted:
                    url = f"{self.base_url}/convert"
                    hook = {
                        "clientConfig": client_config(url, ca_bundle),
                        "conversionReviewVersions": ["v1"],
                    }
                    crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": hook}
                self.api.create_or_replace(_CRDS, crd)
                spec = crd["spec"]
                storage = next(v["name"] for v in spec["versions"] if v["storage"])
                self._crds[name] = f"/apis/{spec['group']}/{storage}/{spec['names']['plural']}"

        wait_until(
            lambda: all(is_true(self.api.get(f"{_CRDS}/{n}"), "Established") for n in self._crds),
            timeout=timeout,
            what="Kueue's CRDs to be established",
        )

    def _register_webhooks(self, manifests: Path, ca_bundle: bytes, timeout: float) -> None:
        for config in self.webhook_configurations(load(manifests / "webhook.yaml"), ca_bundle):
            collection = f"/apis/admissionregistration.k8s.io/v1/{WEBHOOK_CONFIGS[config['kind']]}"
            self._webhooks.append((collection, config["metadata"]["name"]))
            self.api.create_or_replace(collection, config)

        # The API server loads webhook configurations asynchronously: ready once a
        # dry-run ResourceFlavor comes back with the finalizer Kueue's webhook adds.
        def webhook_answers() -> bool:
            probe = _object("ResourceFlavor", _PROBE, {})
            try:
                made = self.api.request(
                    "POST", f"{API}/resourceflavors", probe, query={"dryRun": "All"}
                )
            except ApiError:
                return False
            return f"{GROUP}/resource-in-use" in made["metadata"].get("finalizers", [])

        wait_until(webhook_answers, timeout=timeout, what="Kueue's webhooks", processes=self._ps)

    @property
    def _ps(self) -> list[ManagedProcess]:  # for wait_until: fail fast if Kueue exits
        return [self.process] if self.process is not None else []

    def stop(self) -> None:
        """Unregister the webhooks, stop Kueue, drop its finalizers and CRDs."""
        errors: list[str] = []
        for collection, name in self._webhooks:
            self._delete(f"{collection}/{name}", errors)
        self._webhooks.clear()
        if self.process is not None:
            self.process.stop()
            self.process = None
        try:
            self._release_pods()
        except ApiError as err:
            errors.append(f"pod finalizers: {err}")
        self._remove_crds(errors)
        if errors:
            raise RuntimeError("Kueue teardown: " + "; ".join(errors))

    def _delete(self, path: str, errors: list[str]) -> None:
        try:
            self.api.request("DELETE", path)
        except ApiError as err:
            if err.status != 404:
                errors.append(f"DELETE {path}: {err}")

    def _keep_finalizers(self, path: str, kept: list[str]) -> None:
        patch = {"metadata": {"finalizers": kept or None}}
        try:
            self.api.request("PATCH", path, patch, content_type=MERGE_PATCH)
        except ApiError as err:
            if err.status != 404:
                raise

    def _release_pods(self) -> None:
        # Without Kueue nobody removes its finalizer: the pods, and the namespaces
        # holding them, would never go away.
        for pod in self.api.get("/api/v1/pods")["items"]:
            finalizers = pod["metadata"].get("finalizers") or []
            if POD_FINALIZER in finalizers:
                kept = [f for f in finalizers if f != POD_FINALIZER]
                self._keep_finalizers(_object_path("/api/v1/pods", pod), kept)

    def _remove_crds(self, errors: list[str], timeout: float = 60.0) -> None:
        for name, objects in self._crds.items():
            # Their finalizers are Kueue's, and Kueue is gone: drop them so the
            # CRD's deletion can remove every object.
            try:
                for obj in self._list(objects):
                    if obj["metadata"].get("finalizers"):
                        self._keep_finalizers(_object_path(objects, obj), [])
            except ApiError as err:
                if err.status != 404:
                    errors.append(f"{name}: {err}")
            self._delete(f"{_CRDS}/{name}", errors)
        names, self._crds = list(self._crds), {}
        try:
            wait_until(
                lambda: all(self.api.get_or_none(f"{_CRDS}/{n}") is None for n in names),
                timeout=timeout,
                what="Kueue's CRDs to be gone",
            )
        except TimeoutError as err:
            errors.append(str(err))

    def _list(self, path: str) -> list[dict[str, Any]]:
        # A CRD's storage answers 429 for a moment after it is established.
        for _ in range(20):
            try:
                return list(self.api.get(path)["items"])
            except ApiError as err:
                if err.status != 429:
                    raise
            time.sleep(0.5)
        return list(self.api.get(path)["items"])

    def __enter__(self) -> Kueue:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- queues -------------------------------------------------------------------

    def resource_flavor(
        self, name: str = "default-flavor", node_labels: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        spec = {"nodeLabels": dict(node_labels)} if node_labels else {}
        return self._create(f"{API}/resourceflavors", _object("ResourceFlavor", name, spec), False)

    def cluster_queue(
        self,
        name: str,
        *,
        cpu: str,
        memory: str | None = None,
        gpus: str | None = None,
        flavor: str = "default-flavor",
        cohort: str | None = None,
        preemption: Mapping[str, Any] | None = None,
        wait: bool = True,
    ) -> dict[str, Any]:
        """A ClusterQueue for every namespace with nominal quota for cpu (and memory,
        nvidia.com/gpu); a pod requesting a resource it does not cover is never admitted."""
        quotas = {"cpu": cpu, "memory": memory, "nvidia.com/gpu": gpus}
        covered = [(res, q) for res, q in quotas.items() if q is not None]
        resources = [{"name": r, "nominalQuota": q} for r, q in covered]
        group: dict[str, Any] = {"coveredResources": [r for r, _ in covered]}
        group["flavors"] = [{"name": flavor, "resources": resources}]
        spec: dict[str, Any] = {"namespaceSelector": {}, "resourceGroups": [group]}
        if cohort is not None:  # queues of one cohort borrow each other's unused quota
            spec["cohortName"] = cohort
        if preemption is not None:
            spec["preemption"] = dict(preemption)
        return self._create(f"{API}/clusterqueues", _object("ClusterQueue", name, spec), wait)

    def local_queue(
        self, namespace: str, name: str = "default", *, cluster_queue: str, wait: bool = True
    ) -> dict[str, Any]:
        collection = f"{API}/namespaces/{namespace}/localqueues"
        body = _object("LocalQueue", name, {"clusterQueue": cluster_queue}, namespace)
        return self._create(collection, body, wait)

    def workloads(self, namespace: str) -> list[dict[str, Any]]:
        found: dict[str, Any] = self.api.get(f"{API}/namespaces/{namespace}/workloads")
        return list(found["items"])

    def _create(self, collection: str, body: dict[str, Any], wait: bool) -> dict[str, Any]:
        """POST; with `wait`, until Kueue reports the queue Active (it knows it then)."""
        made: dict[str, Any] = self.api.request("POST", collection, body)
        path = f"{collection}/{body['metadata']['name']}"
        if wait:
            active = lambda: is_true(self.api.get(path), "Active")  # noqa: E731
            wait_until(active, timeout=30, what=f"{path} Active", processes=self._ps)
        return made


def _object_path(objects: str, obj: Mapping[str, Any]) -> str:
    # objects: /apis/<group>/<version>/<plural> or /api/v1/pods
    meta = obj["metadata"]
    if meta.get("namespace"):
        prefix, plural = objects.rsplit("/", 1)
        return f"{prefix}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"
    return f"{objects}/{meta['name']}"
