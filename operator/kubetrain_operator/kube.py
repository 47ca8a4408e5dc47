"""The operator's Kubernetes I/O: what it observes and how it carries out actions.

The only module that talks to the API server (kopf aside). Every call has a timeout,
so a half-open connection cannot hold a job's reconcile forever. Ownership is
decided by the controller ownerReference's UID, never by labels: a pod, Service or
ConfigMap that carries the job's name but belongs to something else is never
adopted, and a create that the API server refuses for good (4xx) is `Rejected`, so
the job fails with the server's own message instead of retrying forever.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetrain_core.api import TrainingJob
from kubetrain_core.names import GROUP, PLURAL, VERSION
from kubetrain_operator import actions, builders, gang, operator_metrics, queueing
from kubetrain_operator.pod_facts import attempt_of, index_of, is_deleting, node_of, phase_of
from kubetrain_operator.progress import ProgressRead, read_progress
from kubetrain_operator.settings import Settings

log = logging.getLogger("kubetrain.operator")

TIMEOUT = (5.0, 30.0)  # seconds to connect, to read one answer
# A create the API server will refuse however often it is tried (bad request,
# forbidden by admission or Pod Security, invalid); anything else is an outage.
_PERMANENT = {400, 403, 404, 422}


class Rejected(Exception):
    """The API server refused one of the job's objects for good."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _reason(err: ApiException) -> str:
    """The server's own message (the Status body), else its reason phrase."""
    try:
        return str(json.loads(err.body or "{}").get("message") or err.reason)
    except (ValueError, AttributeError):
        return str(err.reason)


POOL_CONNECTIONS = 32  # kept-alive connections to the API server, one per busy thread

_shared: dict[str, client.ApiClient] = {}  # "client": the process's one API client
_client_lock = threading.Lock()


class _CountingClient(client.ApiClient):  # type: ignore[misc]
    """The process's one API client; counts its requests (operator_metrics)."""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        operator_metrics.API_REQUESTS.labels(verb=method).inc()
        return super().request(method, url, *args, **kwargs)


def load_config() -> None:
    """In a pod: its ServiceAccount; elsewhere: the kubeconfig. Then the shared client."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = POOL_CONNECTIONS
    with _client_lock:
        _shared["client"] = _CountingClient(configuration)


def api_client() -> client.ApiClient:
    """One client for the whole process, so that its connection pool keeps connections
    to the API server open. A client per call paid a TCP connect and a TLS handshake for
    every request: half of the reconcile time at 200 jobs (docs/benchmarks.md)."""
    with _client_lock:
        if "client" not in _shared:
            _shared["client"] = _CountingClient()
        return _shared["client"]


def core() -> client.CoreV1Api:
    return client.CoreV1Api(api_client())


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client())


def _done(response: Any) -> None:
    """Read a `_preload_content=False` answer to its end (the connection goes back to the
    pool) without building the client's model of it: nobody reads it."""
    try:
        _ = response.data
    finally:
        response.release_conn()


def read_json(response: Any) -> Any:
    """The body of a `_preload_content=False` answer as plain JSON: the same dicts that
    the client's models would serialize back to, without building the models."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """Whether `obj`'s controller ownerReference is the job with this UID."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("uid") == uid for r in refs)


# --- observing -------------------------------------------------------------------------


def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = custom().get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=TIMEOUT
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return body


def list_pods(namespace: str, name: str, uid: str) -> list[dict[str, Any]]:
    """The job's pods: labelled with its name *and* controlled by its UID."""
    listing = read_json(
        core().list_namespaced_pod(
            namespace,
            label_selector=f"{builders.JOB_LABEL}={name}",
            _request_timeout=TIMEOUT,
            _preload_content=False,
        )
    )
    found: list[dict[str, Any]] = listing.get("items") or []
    return [p for p in found if owned_by(p, uid)]


def _read_owned(kind: str, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
    """The job's Service or ConfigMap (None: missing); Rejected if that name is taken by
    an object the job does not own."""
    api = core()
    read = api.read_namespaced_service if kind == "Service" else api.read_namespaced_config_map
    try:
        body: dict[str, Any] = read_json(
            read(name, namespace, _request_timeout=TIMEOUT, _preload_content=False)
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    if not owned_by(body, uid):
        raise Rejected("NameConflict", f"{kind} {namespace}/{name} exists and is not this job's")
    return body


def config_data(namespace: str, name: str, uid: str) -> dict[str, str] | None:
    """The data of the job's ConfigMap, None when it does not exist."""
    body = _read_owned("ConfigMap", namespace, name, uid)
    return None if body is None else dict(body.get("data") or {})


def observe(job: TrainingJob, uid: str, settings: Settings) -> actions.Observed:
    """Everything `reconcile` needs to know about the job's world, read fresh."""
    namespace, name = job.metadata.namespace or "default", job.metadata.name
    # A job with no status yet has no pod to list: a pass patches the status before it
    # creates pods. Its ConfigMap, if a pass was cut short after creating it, answers the
    # create with 409, which checks the owner all the same (`_create`).
    unseen = job.status is None
    pods = [] if unseen else list_pods(namespace, name, uid)
    now = datetime.now(UTC)
    if job.status is not None and job.status.state in ("Succeeded", "Failed"):
        # A finished job's pass only cleans up its pods and counts down its TTL.
        return actions.Observed(pods=pods, service=False, config=None, now=now)
    read = progress(job, pods, settings.progress_timeout_seconds)
    return actions.Observed(
        pods=pods,
        service=job.spec.numNodes > 1 and _read_owned("Service", namespace, name, uid) is not None,
        config=None if unseen else config_data(namespace, f"{name}-config", uid),
        now=now,
        progress=read.progress,
        progress_error=read.error,
        lost_nodes=lost_nodes(pods),
        signing_key=secrets.token_urlsafe(32),
        queued=queued(job, pods),
    )


def queued(job: TrainingJob, pods: list[dict[str, Any]]) -> str | None:
    """Why Kueue holds the current attempt's gang back (its Workload's words), or None
    when no pod of it is gated."""
    attempt = job.status.recovery.attempt if job.status else 0
    if not any(attempt_of(p) == attempt and queueing.gated(p) for p in pods):
        return None
    namespace = job.metadata.namespace or "default"
    name = queueing.group_name(job, attempt)
    try:
        workload = custom().get_namespaced_custom_object(
            queueing.GROUP, queueing.VERSION, namespace, queueing.WORKLOADS, name,
            _request_timeout=TIMEOUT,
        )  # fmt: skip
    except ApiException as err:
        if err.status not in (403, 404):  # not made yet; no RBAC for it: say what we know
            raise
        workload = None
    return queueing.waiting_reason(workload)


def progress(job: TrainingJob, pods: list[dict[str, Any]], timeout: float) -> ProgressRead:
    """One bounded read of rank 0's /progress, when rank 0 of the current attempt runs."""
    attempt = job.status.recovery.attempt if job.status else 0
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if index_of(pod) == 0 and attempt_of(pod) == attempt and phase_of(pod) == "Running" and ip:
            return read_progress(str(ip), job.spec.monitoring.port, timeout)
    return ProgressRead()


def lost_nodes(pods: list[dict[str, Any]]) -> frozenset[str]:
    """Nodes of the job's pods whose Ready condition is not True. Looked up only when a
    pod failed or is being deleted: that is when the answer changes a decision."""
    if not any(phase_of(p) == "Failed" or is_deleting(p) for p in pods):
        return frozenset()
    lost: set[str] = set()
    names = {node_of(p) for p in pods} - {""}
    for node in sorted(names):
        try:
            body = core().read_node(node, _request_timeout=TIMEOUT)
        except ApiException as err:
            if err.status != 404:
                raise
            lost.add(node)  # deleted Node: its pods are gone with it
            continue
        ready = [c for c in body.status.conditions or [] if c.type == "Ready"]
        if not ready or ready[0].status != "True":
            lost.add(node)
    return frozenset(lost)


class SecretUnavailable(Exception):
    """A Secret key the operator was pointed at cannot be read; the text says why."""


def secret_value(namespace: str, name: str, key: str) -> str:
    """The text under `key` of Secret namespace/name (a webhook URL: never logged).
    SecretUnavailable when it is missing, lacks the key, or the RBAC forbids it."""
    try:
        secret = core().read_namespaced_secret(name, namespace, _request_timeout=TIMEOUT)
    except ApiException as err:
        if err.status == 404:
            raise SecretUnavailable(f"Secret {namespace}/{name} does not exist") from None
        if err.status == 403:
            raise SecretUnavailable(
                f"the operator may not read Secret {namespace}/{name}: its RBAC allows"
                " kubetrain-notifications and the chart's notifications.extraSecretNames only"
            ) from None
        raise
    data = secret.data or {}
    if key not in data:
        raise SecretUnavailable(f"Secret {namespace}/{name} has no key {key!r}")
    try:
        return base64.b64decode(data[key]).decode().strip()
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise SecretUnavailable(f"key {key!r} of Secret {namespace}/{name} is not text") from None


# --- acting ----------------------------------------------------------------------------


def apply(namespace: str, name: str, body: dict[str, Any], action: actions.Action) -> None:
    """Carry out one action for the job `body`. Raises Rejected for a permanent refusal."""
    if isinstance(action, actions.CreateObject):
        _create(namespace, action.body, body["metadata"]["uid"])
    elif isinstance(action, actions.UpdateConfig):
        _done(
            core().patch_namespaced_config_map(
                action.name,
                namespace,
                {"data": action.data},
                _request_timeout=TIMEOUT,
                _preload_content=False,
            )
        )
        log.info("updated ConfigMap %s/%s", namespace, action.name)
    elif isinstance(action, actions.DeletePods):
        _delete_pods(namespace, action)
    elif isinstance(action, actions.PatchStatus):
        _done(
            custom().patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": action.status},
                _request_timeout=TIMEOUT, _preload_content=False,
            )
        )  # fmt: skip
    elif isinstance(action, actions.EmitEvent):
        _event(body, action)
    elif isinstance(action, actions.Observe):
        operator_metrics.observe(action.metric, action.value, action.label)
    elif isinstance(action, actions.DeleteJob):
        log.info("deleting %s/%s: %s", namespace, name, action.reason)
        custom().delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background",
            _request_timeout=TIMEOUT,
        )  # fmt: skip


def _create(namespace: str, obj: dict[str, Any], uid: str) -> None:
    api, net = core(), client.NetworkingV1Api(api_client())
    kind, name = obj["kind"], obj["metadata"]["name"]
    create, read = (
        _pod_group_calls(obj["apiVersion"])
        if kind == "PodGroup"
        else {
            "Pod": (api.create_namespaced_pod, api.read_namespaced_pod),
            "Service": (api.create_namespaced_service, api.read_namespaced_service),
            "ConfigMap": (api.create_namespaced_config_map, api.read_namespaced_config_map),
            "Secret": (api.create_namespaced_secret, None),  # may create, never read
            "NetworkPolicy": (
                net.create_namespaced_network_policy,
                net.read_namespaced_network_policy,
            ),
        }[kind]
    )
    try:
        # Strict: a field the API server does not know is an error, not silently dropped.
        _done(
            create(
                namespace,
                obj,
                field_validation="Strict",
                _request_timeout=TIMEOUT,
                _preload_content=False,
            )
        )
        log.info("created %s %s/%s", kind, namespace, name)
    except ApiException as err:
        if err.status == 409:
            if read is not None:
                found = read_json(
                    read(name, namespace, _request_timeout=TIMEOUT, _preload_content=False)
                )
                if not owned_by(found, uid):
                    message = f"{kind} {namespace}/{name} exists and is not this job's"
                    raise Rejected("NameConflict", message) from None
            return  # ours already: creates are idempotent
        if err.status == 404 and kind == "PodGroup":
            raise Rejected("GangSchedulerMissing", gang.missing_api_message(obj)) from None
        if err.status in _PERMANENT:
            message = f"the API server refused {kind} {name}: {_reason(err)}"
            raise Rejected("CreateRejected", message) from None
        raise


def _pod_group_calls(api_version: str) -> tuple[Any, Any]:
    """create(namespace, body, ...) and read(name, namespace, ...) for a gang scheduler's
    PodGroups, in the shape of the core API's calls."""
    group, version = api_version.split("/")
    api = custom()

    def create(namespace: str, body: dict[str, Any], **kwargs: Any) -> Any:
        return api.create_namespaced_custom_object(
            group, version, namespace, gang.PLURAL, body, **kwargs
        )

    def read(name: str, namespace: str, **kwargs: Any) -> Any:
        return api.get_namespaced_custom_object(
            group, version, namespace, gang.PLURAL, name, **kwargs
        )

    return create, read


def _delete_pods(namespace: str, action: actions.DeletePods) -> None:
    api = core()
    grace = action.grace_seconds
    for pod in action.names:
        try:
            _done(
                api.delete_namespaced_pod(
                    pod,
                    namespace,
                    grace_period_seconds=grace,
                    _request_timeout=TIMEOUT,
                    _preload_content=False,
                )
            )
            log.info("deleted pod %s/%s (%s)", namespace, pod, action.reason)
        except ApiException as err:
            if err.status != 404:
                raise


def _event(body: dict[str, Any], event: actions.EmitEvent) -> None:
    meta = body["metadata"]
    now = datetime.now(UTC)
    # The kubelet's naming; generateName cannot end in ".".
    name = f"{meta['name']}.{time.time_ns():x}"
    # The note is limited to 1024 bytes, not characters.
    note = event.message.encode()[:1024].decode(errors="ignore")
    try:
        _done(
            client.EventsV1Api(api_client()).create_namespaced_event(
                meta["namespace"],
                {
                    "metadata": {"name": name, "namespace": meta["namespace"]},
                    "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "reportingController": f"{GROUP}/operator",
                    "reportingInstance": "kubetrain-operator",
                    "action": "Reconcile",
                    "type": event.type,
                    "reason": event.reason,
                    "note": note,
                    "regarding": {
                        "apiVersion": f"{GROUP}/{VERSION}",
                        "kind": "TrainingJob",
                        "name": meta["name"],
                        "namespace": meta["namespace"],
                        "uid": meta["uid"],
                    },
                },
                _request_timeout=TIMEOUT,
                _preload_content=False,
            )
        )
    except ApiException as err:  # an Event is best effort: never fail a reconcile over it
        log.warning("could not post event %s %s: %s", event.reason, event.message, err.reason)
        return
    log.info("event %s %s: %s", event.type, event.reason, event.message)
