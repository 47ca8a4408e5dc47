"""kopf wiring: every handler on one screen, all logic elsewhere.

Each trigger (create, resume, update, a timer, an event of an owned pod) runs the
same level-based step: read the job and its pods fresh (kube.py), `reconcile`
(pure), carry out the actions (kube.py). One reconcile per job at a time: a trigger
that finds one running marks the job for another pass and returns, so a slow job
never occupies more than one of kopf's worker threads, and pod events of a job that
already waits for a thread are folded into that one pass. Handlers return nothing: the
status schema is strict, and the status is patched explicitly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kubetrain_core import pod_policy
from kubetrain_core.api import TrainingJob
from kubetrain_core.config import format_validation_error
from kubetrain_core.config.base import PLUGINS
from kubetrain_core.names import GROUP, PLURAL, VERSION
from kubetrain_operator import builders, kube, operator_metrics
from kubetrain_operator.actions import Action, Notify, PatchStatus
from kubetrain_operator.notifier import Sender
from kubetrain_operator.pod_watch import PodWatch
from kubetrain_operator.reconcile import fail_stored, reconcile, resync_spacing
from kubetrain_operator.settings import Settings
from kubetrain_operator.spec_limits import spec_problem

SETTINGS = Settings.from_env()
WATCHED: list[str] = []  # namespaces the operator serves (empty: all)
_POOL = ThreadPoolExecutor(
    max_workers=max(1, SETTINGS.workers // 2), thread_name_prefix="pod-events"
)
_queued: set[str] = set()  # jobs with a pod-event reconcile waiting for a pool thread


def _POOL_SUBMIT(namespace: str, name: str) -> None:  # noqa: N802 (a callback constant)
    """A pod event: reconcile its job, once per job however many events wait."""
    key = f"{namespace}/{name}"
    with _slots_lock:
        if key in _queued:
            return  # the queued pass will read the pods fresh, this event's change too
        _queued.add(key)
    _POOL.submit(_after_pod_event, namespace, name)


def _after_pod_event(namespace: str, name: str) -> None:
    with _slots_lock:
        _queued.discard(f"{namespace}/{name}")  # from now on, a new event queues anew
    reconcile_job(namespace, name)


ALLOWED = pod_policy.Allowed.widened(
    list(SETTINGS.extra_pod_fields), list(SETTINGS.extra_volume_types), SETTINGS.allow_secret_env
)
HEALTH = operator_metrics.Health()
NOTIFIER = Sender(SETTINGS)  # spec.notifications, posted off the reconcile path
log = logging.getLogger("kubetrain.operator")


@dataclass
class _JobSlot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    again: bool = False  # a trigger came while a reconcile ran: run once more
    done_at: float = float("-inf")  # time.monotonic() when the last pass ended


_TASKS: list[asyncio.Task[None]] = []  # kept referenced: the loop holds tasks weakly
_slots: dict[str, _JobSlot] = {}  # one per existing job: removed when the job is gone
_slots_lock = threading.Lock()


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
    settings.execution.max_workers = SETTINGS.workers  # sync handlers run in these threads
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = kube.TIMEOUT[1]
    settings.networking.connect_timeout = kube.TIMEOUT[0]
    # No kopf peering: with several replicas, a Lease elects the one that runs kopf at
    # all (run_operator), so this process acts alone.
    settings.peering.standalone = True
    kube.load_config()
    # Pods through a server-side label selector, not a kopf watch of every pod.
    PodWatch(builders.JOB_LABEL, WATCHED, _POOL_SUBMIT).start()
    HEALTH.ready.set()


@kopf.on.startup()
async def heartbeat(**_: Any) -> None:
    """/healthz answers 200 while this task, on kopf's event loop, keeps beating."""

    async def beat() -> None:
        while True:
            HEALTH.beat()
            await asyncio.sleep(5)

    _TASKS.append(asyncio.get_running_loop().create_task(beat()))


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(namespace: str | None, name: str, **_: Any) -> None:
    reconcile_job(namespace or "default", name)


# The first resync one interval after the job is seen: create and resume ran it already.
@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=SETTINGS.reconcile_interval_seconds,
    initial_delay=SETTINGS.reconcile_interval_seconds,
    sharp=False,
    backoff=5,
)
def resync(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> None:
    # A job that a pod event or an edit reconciled within the spacing needs no resync
    # yet: at scale, most timer passes were such repeats (docs/benchmarks.md).
    spacing = resync_spacing(
        dict(spec), dict(status), datetime.now(UTC), SETTINGS.reconcile_interval_seconds
    )
    reconcile_job(namespace or "default", name, fresh_for=spacing)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(namespace: str | None, name: str, **_: Any) -> None:
    operator_metrics.record_job(namespace or "default", name, None)  # GC deletes the children
    _forget(f"{namespace or 'default'}/{name}")


# --- the level-based step --------------------------------------------------------------


def reconcile_job(namespace: str, name: str, fresh_for: float = 0.0) -> None:
    """Reconcile the job now, unless a pass ended less than `fresh_for` seconds ago."""
    key = f"{namespace}/{name}"
    with _slots_lock:
        slot = _slots.setdefault(key, _JobSlot())
    if fresh_for and time.monotonic() - slot.done_at < fresh_for:
        return
    if not slot.lock.acquire(blocking=False):
        slot.again = True  # the running reconcile passes once more; the timer backs it up
        return
    try:
        slot.again = True
        while slot.again:
            slot.again = False
            with operator_metrics.RECONCILE.time():
                _reconcile_once(namespace, name)
            slot.done_at = time.monotonic()  # a failed pass is retried, never skipped
    finally:
        slot.lock.release()


def _forget(key: str) -> None:
    with _slots_lock:
        _slots.pop(key, None)


def _reconcile_once(namespace: str, name: str) -> None:
    body = kube.get_job(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        operator_metrics.record_job(namespace, name, None)
        _forget(f"{namespace}/{name}")
        return
    uid = str(body["metadata"].get("uid", ""))
    problem = spec_problem(body)
    job: TrainingJob | None = None
    if problem is None:
        try:
            # Plugin names are the image's to resolve: the trainer checks them at start.
            job = TrainingJob.model_validate(body, context={PLUGINS: "unchecked"})
        except ValidationError as err:
            problem = f"spec is invalid: {'; '.join(format_validation_error(err))}"
    if job is not None:
        refused = pod_policy.problems(body.get("spec") or {}, ALLOWED)
        if refused:
            job, problem = None, f"spec is not allowed: {'; '.join(refused)}"
    if job is None:
        _fail(body, kube.list_pods(namespace, name, uid), "InvalidSpec", problem or "invalid")
        return
    try:
        status = body.get("status") or {}
        for action in reconcile(job, kube.observe(job, uid, SETTINGS), SETTINGS):
            _apply(namespace, name, body, action)
            if isinstance(action, PatchStatus):
                status = action.status
        operator_metrics.record_job(namespace, name, status)
    except kube.Rejected as err:
        _fail(body, kube.list_pods(namespace, name, uid), err.reason, err.message)


def _fail(body: dict[str, Any], pods: list[dict[str, Any]], reason: str, message: str) -> None:
    meta = body["metadata"]
    for action in fail_stored(body, pods, reason, message, datetime.now(UTC)):
        _apply(meta["namespace"], meta["name"], body, action)
    operator_metrics.record_job(meta["namespace"], meta["name"], {"state": "Failed"})


def _apply(namespace: str, name: str, body: dict[str, Any], action: Action) -> None:
    if isinstance(action, Notify):
        NOTIFIER.submit(body["metadata"], action)  # queued; a slow webhook never waits here
    else:
        kube.apply(namespace, name, body, action)
