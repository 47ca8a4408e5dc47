"""kopf wiring: every handler on one screen, all logic elsewhere.

Each trigger (create, resume, update, a timer, an event of an owned pod) runs
the same level-based step under a per-job lock: read the job and its pods
fresh, `reconcile.reconcile` (pure), carry out the actions. Handlers return
nothing: the status schema is strict, and the status is patched explicitly.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetrain_operator import builders, operator_metrics
from kubetrain_operator.api import GROUP, PLURAL, VERSION, TrainingJob
from kubetrain_operator.progress import read_progress
from kubetrain_operator.reconcile import (
    Action,
    CreateObject,
    DeleteJob,
    DeletePods,
    EmitEvent,
    Observe,
    Observed,
    PatchStatus,
    reconcile,
    reject_invalid,
)
from kubetrain_operator.settings import Settings
from kubetrain_trainer.config import format_validation_error

SETTINGS = Settings.from_env()
HEALTH = operator_metrics.Health()
_PEERING: dict[str, str | None] = {"name": None}
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
log = logging.getLogger("kubetrain.operator")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = SETTINGS.finalizer
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=SETTINGS.annotation_prefix
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=SETTINGS.annotation_prefix, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events say what happened
    settings.watching.server_timeout = 300
    # One replica (Recreate) by default: no peering CRDs needed, no leases.
    settings.peering.standalone = _PEERING["name"] is None
    settings.peering.name = _PEERING["name"] or "default"
    settings.peering.mandatory = _PEERING["name"] is not None
    _load_kube_config()
    HEALTH.ready.set()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(namespace: str | None, name: str, **_: Any) -> None:
    reconcile_job(namespace or "default", name)


@kopf.timer(
    GROUP, VERSION, PLURAL, interval=SETTINGS.reconcile_interval_seconds, sharp=False, backoff=5
)
def resync(namespace: str | None, name: str, **_: Any) -> None:
    reconcile_job(namespace or "default", name)


@kopf.on.event("", "v1", "pods", labels={builders.JOB_LABEL: kopf.PRESENT})
def on_pod_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    reconcile_job(namespace or "default", labels[builders.JOB_LABEL])


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(namespace: str | None, name: str, **_: Any) -> None:
    operator_metrics.record_job(namespace or "default", name, None)  # GC deletes the children


# --- the level-based step --------------------------------------------------------------


def reconcile_job(namespace: str, name: str) -> None:
    key = f"{namespace}/{name}"
    with _locks[key], operator_metrics.RECONCILE.time():
        body = _get_job(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            operator_metrics.record_job(namespace, name, None)
            return
        try:
            job = TrainingJob.model_validate(body)
        except ValidationError as err:
            problems = "; ".join(format_validation_error(err))
            message = f"spec is invalid: {problems}"
            for action in reject_invalid(body, message, datetime.now(UTC)):
                _apply_to(namespace, name, body, action)
            operator_metrics.record_job(namespace, name, {"state": "Failed"})
            return
        pods = _list_pods(namespace, name)
        finished = job.status is not None and job.status.state in ("Succeeded", "Failed")
        observed = Observed(
            pods=pods,
            service=_exists("service", namespace, name),
            configmap=_exists("configmap", namespace, f"{name}-config"),
            now=datetime.now(UTC),
            progress=_progress(job, pods),
            lost_nodes=frozenset() if finished else _lost_nodes(pods),
            signing_key=secrets.token_urlsafe(32),
        )
        actions = reconcile(job, observed, SETTINGS)
        status = body.get("status") or {}
        for action in actions:
            _apply(job, body, action)
            if isinstance(action, PatchStatus):
                status = action.status
        operator_metrics.record_job(namespace, name, status)


def _apply(job: TrainingJob, body: dict[str, Any], action: Action) -> None:
    _apply_to(job.metadata.namespace or "default", job.metadata.name, body, action)


def _apply_to(ns: str, name: str, body: dict[str, Any], action: Action) -> None:
    core = client.CoreV1Api()
    if isinstance(action, CreateObject):
        kind = action.body["kind"]
        create = {
            "Pod": core.create_namespaced_pod,
            "Service": core.create_namespaced_service,
            "ConfigMap": core.create_namespaced_config_map,
            "Secret": core.create_namespaced_secret,
        }[kind]
        try:
            create(ns, action.body)
            log.info("created %s %s/%s", kind, ns, action.body["metadata"]["name"])
        except ApiException as err:
            if err.status != 409:  # 409: exists already (idempotent create)
                raise
    elif isinstance(action, DeletePods):
        grace = 0 if action.force else None
        for pod in action.names:
            try:
                core.delete_namespaced_pod(pod, ns, grace_period_seconds=grace)
                log.info("deleted pod %s/%s (%s)", ns, pod, action.reason)
            except ApiException as err:
                if err.status != 404:
                    raise
    elif isinstance(action, PatchStatus):
        client.CustomObjectsApi().patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, PLURAL, name, {"status": action.status}
        )
    elif isinstance(action, EmitEvent):
        _event(body, action)
    elif isinstance(action, Observe):
        operator_metrics.observe(action.metric, action.value, action.label)
    elif isinstance(action, DeleteJob):
        log.info("deleting %s/%s: %s", ns, name, action.reason)
        client.CustomObjectsApi().delete_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name, propagation_policy="Background"
        )


def _event(body: dict[str, Any], event: EmitEvent) -> None:
    meta = body["metadata"]
    now = datetime.now(UTC)
    name = (
        f"{meta['name']}.{time.time_ns():x}"  # the kubelet's naming; generateName can't end in "."
    )
    try:
        _post_event(meta, name, now, event)
    except ApiException as err:  # an Event is best effort: never fail a reconcile over it
        log.warning("could not post event %s %s: %s", event.reason, event.message, err.reason)
        return
    log.info("event %s %s: %s", event.type, event.reason, event.message)


def _post_event(meta: dict[str, Any], name: str, now: datetime, event: EmitEvent) -> None:
    client.EventsV1Api().create_namespaced_event(
        meta["namespace"],
        {
            "metadata": {"name": name, "namespace": meta["namespace"]},
            "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingController": f"{GROUP}/operator",
            "reportingInstance": "kubetrain-operator",
            "action": "Reconcile",
            "type": event.type,
            "reason": event.reason,
            "note": event.message[:1024],
            "regarding": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "TrainingJob",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
        },
    )


# --- observing -------------------------------------------------------------------------


def _get_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return body


def _list_pods(namespace: str, name: str) -> list[dict[str, Any]]:
    api = client.ApiClient()
    pods = client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"{builders.JOB_LABEL}={name}"
    )
    return [api.sanitize_for_serialization(p) for p in pods.items]


def _exists(kind: str, namespace: str, name: str) -> bool:
    core = client.CoreV1Api()
    read = core.read_namespaced_service if kind == "service" else core.read_namespaced_config_map
    try:
        read(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def _progress(job: TrainingJob, pods: list[dict[str, Any]]) -> Any:
    attempt = str(job.status.recovery.attempt if job.status else 0)
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        status = pod.get("status") or {}
        if (
            labels.get(builders.INDEX_LABEL) == "0"
            and labels.get(builders.ATTEMPT_LABEL) == attempt
            and status.get("phase") == "Running"
            and status.get("podIP")
        ):
            port = job.spec.monitoring.port
            return read_progress(status["podIP"], port, SETTINGS.progress_timeout_seconds)
    return None


def _lost_nodes(pods: list[dict[str, Any]]) -> frozenset[str]:
    """Nodes of the job's pods whose Ready condition is not True. Looked up only when a
    pod failed or is being deleted: that is when the answer changes a decision."""
    troubled = any(
        (p.get("status") or {}).get("phase") == "Failed" or p["metadata"].get("deletionTimestamp")
        for p in pods
    )
    if not troubled:
        return frozenset()
    lost: set[str] = set()
    names = {str((p.get("spec") or {}).get("nodeName") or "") for p in pods} - {""}
    for node in sorted(names):
        try:
            body = client.CoreV1Api().read_node(node)
        except ApiException as err:
            if err.status != 404:
                raise
            lost.add(node)  # deleted Node: its pods are gone with it
            continue
        ready = [c for c in body.status.conditions or [] if c.type == "Ready"]
        if not ready or ready[0].status != "True":
            lost.add(node)
    return frozenset(lost)


def _load_kube_config() -> None:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def run_operator(
    namespaces: list[str],
    health_port: int,
    metrics_port: int,
    peering: str | None,
    verbose: bool = False,
) -> int:
    """`kubetrain operator`: JSON logs, /metrics, /healthz, /readyz, then kopf's loop."""
    kopf.configure(log_format=kopf.LogFormat.JSON, verbose=verbose, debug=verbose)
    operator_metrics.serve_metrics(metrics_port)
    HEALTH.serve(health_port)
    started = time.monotonic()
    _PEERING["name"] = peering
    log.info("starting kubetrain operator (namespaces: %s)", namespaces or "all")
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=peering is None,
        peering_name=peering,
    )
    log.info("operator stopped after %.0f s", time.monotonic() - started)
    return 0
