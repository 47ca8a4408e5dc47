"""The background sender of job-level notifications (spec.notifications): reconcile
decides what is owed (notifications.py) and hands each Notify here; nothing here ever
runs on the reconcile path.

Each job's notifications go, in order, to one of a few worker threads (by the job's
UID), each with a bounded queue: submit() never blocks (a full queue drops and
counts). A worker reads the URL from the job's Secret, refuses a URL that is not
http(s) or (unless the operator allows it) points into a private network, then POSTs
with core's bounded retries (kubetrain_core.notify.deliver): at most MAX_ATTEMPTS tries
of TIMEOUT_SECONDS each. A notification that cannot go out becomes a Warning Event on
the job and a count in kubetrain_operator_notifications_total; the job is never
affected. The URL is never logged and never put in an Event: errors name the Secret
and the HTTP status or exception type only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import queue
import socket
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kubetrain_core.notify import deliver, describe, payload, url_problem
from kubetrain_operator import kube, operator_metrics
from kubetrain_operator.actions import EmitEvent, Notify
from kubetrain_operator.settings import Settings

log = logging.getLogger("kubetrain.operator")

WORKERS = 4
QUEUE_SIZE = 50  # per worker
MAX_ATTEMPTS = 4
TIMEOUT_SECONDS = 10.0  # one POST
BACKOFF_SECONDS = 1.0  # 1, 2, 4 s between the tries
USER_AGENT = "kubetrain-operator (job notifications)"  # Discord rejects urllib's default
SECRET_REF = "spec.notifications.webhook.secretRef"


@dataclass(frozen=True)
class JobRef:
    """The job a notification is about (its Events name it)."""

    namespace: str
    name: str
    uid: str


Resolve = Callable[[str, int], list[str]]


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def _emit(job: JobRef, event: EmitEvent) -> None:
    meta = {"name": job.name, "namespace": job.namespace, "uid": job.uid}
    kube.apply(job.namespace, job.name, {"metadata": meta}, event)


class Sender:
    """Worker threads that deliver Notify actions; started on the first submit()."""

    def __init__(
        self,
        settings: Settings,
        *,
        read_secret: Callable[[str, str, str], str] = kube.secret_value,
        emit: Callable[[JobRef, EmitEvent], None] = _emit,
        resolve: Resolve = _resolve,
        backoff_seconds: float = BACKOFF_SECONDS,
        timeout_seconds: float = TIMEOUT_SECONDS,
    ) -> None:
        self.settings = settings
        self._read_secret = read_secret
        self._emit = emit
        self._resolve = resolve
        self._backoff = backoff_seconds
        self._timeout = timeout_seconds
        self._queues: list[queue.Queue[tuple[JobRef, Notify]]] = [
            queue.Queue(maxsize=QUEUE_SIZE) for _ in range(WORKERS)
        ]
        self._started = False
        self._lock = threading.Lock()
        self.idle = threading.Condition()  # tests: wait until every queue is done
        self._busy = 0

    def submit(self, meta: Mapping[str, Any], note: Notify) -> None:
        """Queue `note` for the job with metadata `meta`; never blocks, never raises."""
        job = JobRef(str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta["uid"]))
        self._start()
        lane = self._queues[zlib.crc32(job.uid.encode()) % WORKERS]
        with self.idle:
            self._busy += 1
        try:
            lane.put_nowait((job, note))
        except queue.Full:
            self._done()
            operator_metrics.NOTIFICATIONS.labels(note.event, "dropped").inc()
            log.warning(
                "the %s notification of %s/%s was dropped: the send queue is full",
                note.event, job.namespace, job.name,
            )  # fmt: skip

    def wait_idle(self, timeout: float) -> bool:
        """Whether every submitted notification was handled within `timeout` seconds."""
        with self.idle:
            return self.idle.wait_for(lambda: self._busy == 0, timeout)

    def _done(self) -> None:
        with self.idle:
            self._busy -= 1
            self.idle.notify_all()

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            for i, lane in enumerate(self._queues):
                thread = threading.Thread(
                    target=self._work, args=(lane,), name=f"notify-{i}", daemon=True
                )
                thread.start()

    def _work(self, lane: queue.Queue[tuple[JobRef, Notify]]) -> None:
        while True:
            job, note = lane.get()
            try:
                self.send(job, note)
            except Exception as err:  # a worker never dies: the next job's notes wait on it
                log.error("sending the %s notification failed: %s", note.event, describe(err))
            finally:
                self._done()

    def send(self, job: JobRef, note: Notify) -> str:
        """Deliver one notification now (in the calling thread); the result label."""
        where = f"Secret {job.namespace}/{note.secret} key {note.key!r}"
        try:
            url = self._read_secret(job.namespace, note.secret, note.key)
        except kube.SecretUnavailable as err:
            return self._refused(job, note, str(err))
        except Exception as err:  # the API server is down: this notification is lost
            return self._failed(job, note, f"reading {where}: {describe(err)}")
        problem = url_problem(url)
        if problem is None:
            try:
                problem = self._address_problem(url)
            except (OSError, UnicodeError) as err:
                return self._failed(job, note, f"resolving the webhook's host: {describe(err)}")
        if problem is not None:
            return self._refused(job, note, f"the webhook URL in {where} {problem}")
        body = json.dumps(payload(note.format, note.text, note.fields)).encode()
        done = deliver(
            url,
            body,
            max_attempts=MAX_ATTEMPTS,
            timeout_seconds=self._timeout,
            backoff_seconds=self._backoff,
            user_agent=USER_AGENT,
        )
        if not done.ok:
            return self._failed(job, note, f"{done.error} after {done.attempts} attempt(s)")
        operator_metrics.NOTIFICATIONS.labels(note.event, "sent").inc()
        log.info("sent the %s notification of %s/%s", note.event, job.namespace, job.name)
        return "sent"

    def _address_problem(self, url: str) -> str | None:
        """Why the URL's host may not be posted to (a loopback, private, link-local or
        other non-public address), unless the operator allows private webhooks."""
        if self.settings.notify_allow_private:
            return None
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError:
            return "has an invalid port"
        for text in self._resolve(parts.hostname or "", port):
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            if not address.is_global:
                return (
                    "points to a loopback, private or link-local address, which the operator"
                    " refuses (its setting KUBETRAIN_NOTIFY_ALLOW_PRIVATE=true allows it)"
                )
        return None

    def _refused(self, job: JobRef, note: Notify, why: str) -> str:
        text = f"{SECRET_REF}: {why}; the {note.event} notification was not sent"
        self._emit(job, EmitEvent("Warning", "NotificationRefused", text))
        operator_metrics.NOTIFICATIONS.labels(note.event, "refused").inc()
        return "refused"

    def _failed(self, job: JobRef, note: Notify, why: str) -> str:
        text = f"the {note.event} notification was not delivered: {why}"
        self._emit(job, EmitEvent("Warning", "NotificationFailed", text))
        operator_metrics.NOTIFICATIONS.labels(note.event, "failed").inc()
        return "failed"
