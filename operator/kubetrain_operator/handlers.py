"""kopf wiring: every handler on one screen, all logic elsewhere.

Each trigger (a job that is new to this process or whose spec changed, a resync that
is due, an event of an owned pod) runs the same level-based step: read the job and its
pods fresh (kube.py), `reconcile` (pure), carry out the actions (kube.py). One
reconcile per job at a time: a trigger that finds one running marks the job for another
pass and returns, so a slow job never occupies more than one worker thread, and pod
events of a job that already waits for a thread are folded into that one pass.

Jobs are watched with kopf's event handler, not its create/update/timer handlers: those
need a finalizer and a diff-base annotation on every job (two writes per job, and two
more watch events) and a timer task per job; the level-based step needs neither. The
status is patched explicitly (its schema is strict), and the resync loop here spaces
each job's periodic pass by its state (`resync_spacing`).
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
from kubetrain_operator.clock import resync_spacing
from kubetrain_operator.notifier import Sender
from kubetrain_operator.pod_watch import PodWatch
from kubetrain_operator.reconcile import fail_stored, reconcile
from kubetrain_operator.settings import Settings
from kubetrain_operator.spec_limits import spec_problem

SETTINGS = Settings.from_env()
WATCHED: list[str] = []  # namespaces the operator serves (empty: all)
_POOL = ThreadPoolExecutor(max_workers=SETTINGS.workers, thread_name_prefix="reconciles")
_queued: set[str] = set()  # jobs with a reconcile waiting for a pool thread


def submit(namespace: str, name: str) -> None:
    """Reconcile the job in a pool thread (a pod event, a due resync), once per job
    however many of these wait."""
    key = f"{namespace}/{name}"
    with _slots_lock:
        if key in _queued:
            return  # the queued pass will read the pods fresh, this event's change too
        _queued.add(key)
    _POOL.submit(_queued_pass, namespace, name)


def _queued_pass(namespace: str, name: str) -> None:
    with _slots_lock:
        _queued.discard(f"{namespace}/{name}")  # from now on, a new event queues anew
    try:
        reconcile_job(namespace, name)
    except Exception:  # a pool thread: nobody else would see it; the resync retries
        log.exception("reconcile of %s/%s failed", namespace, name)


ALLOWED = pod_policy.Allowed.widened(
    list(SETTINGS.extra_pod_fields), list(SETTINGS.extra_volume_types), SETTINGS.allow_secret_env
)
HEALTH = operator_metrics.Health()
NOTIFIER = Sender(SETTINGS)  # spec.notifications, posted off the reconcile path
log = logging.getLogger("kubetrain.operator")


RETRY_SECONDS = 5.0  # a failed pass is tried again after this
RESYNC_TICK_SECONDS = 1.0  # how often the resync loop looks for due jobs


@dataclass
class _JobSlot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    again: bool = False  # a trigger came while a reconcile ran: run once more
    done_at: float = float("-inf")  # time.monotonic() when the last pass ended
    tried_at: float = float("-inf")  # ... when the last pass began (failed or not)
    generation: int | None = -1  # metadata.generation last seen in a job event (-1: none)
    spec: dict[str, Any] = field(default_factory=dict)  # the job as last seen, for
    status: dict[str, Any] = field(default_factory=dict)  # ... resync_spacing

    def resync_due(self, now: datetime, monotonic: float) -> bool:
        interval = SETTINGS.reconcile_interval_seconds
        if self.lock.locked() or monotonic - self.tried_at < RETRY_SECONDS:
            return False
        since = monotonic - self.done_at
        return since >= interval and since >= resync_spacing(self.spec, self.status, now, interval)


_TASKS: list[asyncio.Task[None]] = []  # kept referenced: the loop holds tasks weakly
_slots: dict[str, _JobSlot] = {}  # one per existing job: removed when the job is gone
_slots_lock = threading.Lock()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Earlier versions used kopf's change handlers and timers: with none left, kopf takes
    # this finalizer off the jobs that still carry it.
    settings.persistence.finalizer = SETTINGS.finalizer
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
    PodWatch(builders.JOB_LABEL, WATCHED, submit).start()
    threading.Thread(target=_resync_loop, daemon=True, name="resync").start()
    HEALTH.ready.set()


@kopf.on.startup()
async def heartbeat(**_: Any) -> None:
    """/healthz answers 200 while this task, on kopf's event loop, keeps beating."""

    async def beat() -> None:
        while True:
            HEALTH.beat()
            await asyncio.sleep(5)

    _TASKS.append(asyncio.get_running_loop().create_task(beat()))


@kopf.on.event(GROUP, VERSION, PLURAL)
def on_event(
    event: kopf.RawEvent, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> None:
    """Every watch event of a job, the initial listing's included (type None)."""
    namespace = namespace or "default"
    if event.get("type") == "DELETED":
        operator_metrics.record_job(namespace, name, None)  # GC deletes the children
        _forget(f"{namespace}/{name}")
    elif _remember(f"{namespace}/{name}", body):
        reconcile_job(namespace, name, dict(body))  # the event's body is the job now


def _remember(key: str, body: kopf.Body) -> bool:
    """Keep what the resync loop needs of the job; True when the job is new to this
    process, its spec changed or its deletion began. Its status changing (our own patch)
    needs no pass."""
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    with _slots_lock:
        slot = _slots.setdefault(key, _JobSlot())
    changed = slot.generation != generation or bool(meta.get("deletionTimestamp"))
    slot.generation = generation
    slot.spec, slot.status = dict(body.get("spec") or {}), dict(body.get("status") or {})
    return changed


def _resync_loop() -> None:
    """The periodic pass of each job (progress reads, backoffs ending, hangs, TTLs), due
    `resync_spacing` after its last pass ended, RETRY_SECONDS after a failed one began.
    A job that a pod event or an edit reconciled within the spacing is not passed again:
    at scale, most periodic passes were such repeats (docs/benchmarks.md)."""
    while True:
        time.sleep(RESYNC_TICK_SECONDS)
        now, monotonic = datetime.now(UTC), time.monotonic()
        with _slots_lock:
            due = [key for key, slot in _slots.items() if slot.resync_due(now, monotonic)]
        for key in due:
            submit(*key.split("/", 1))


# --- the level-based step --------------------------------------------------------------


def reconcile_job(namespace: str, name: str, body: dict[str, Any] | None = None) -> None:
    """Reconcile the job now (or once more after the pass that is running); `body`: the
    job as a watch event just delivered it, read from the API server when None."""
    key = f"{namespace}/{name}"
    with _slots_lock:
        slot = _slots.setdefault(key, _JobSlot())
    if not slot.lock.acquire(blocking=False):
        slot.again = True  # the running reconcile passes once more
        return
    try:
        slot.again = True
        while slot.again:
            slot.again = False
            slot.tried_at = time.monotonic()
            with operator_metrics.RECONCILE.time():
                _reconcile_once(namespace, name, body)
            body = None  # a further pass reads the job afresh
            slot.done_at = time.monotonic()  # a failed pass is retried, never skipped
    finally:
        slot.lock.release()


def _forget(key: str) -> None:
    with _slots_lock:
        _slots.pop(key, None)


def _reconcile_once(namespace: str, name: str, body: dict[str, Any] | None) -> None:
    body = body or kube.get_job(namespace, name)
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
