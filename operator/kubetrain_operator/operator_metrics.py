"""The operator's own Prometheus metrics (kubetrain_ prefix) and /healthz, /readyz."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from kubetrain_core.api import JOB_STATES, RESTART_CAUSES

JOBS = Gauge("kubetrain_operator_jobs", "TrainingJobs by state", ["state"])
JOB_INFO = Gauge(
    "kubetrain_operator_job_info",
    "1 for each TrainingJob, labelled with its current state",
    ["namespace", "trainingjob", "state"],
)
JOB_RESTARTS = Gauge(
    "kubetrain_operator_job_restarts",
    "Gang restarts of one TrainingJob by cause (status.restarts; survives operator restarts)",
    ["namespace", "trainingjob", "cause"],
)
JOB_GOODPUT = Gauge(
    "kubetrain_operator_job_goodput_percent",
    "Share of the job's wall time spent on training steps that were kept (status.goodputPercent)",
    ["namespace", "trainingjob"],
)
RESTARTS = Counter("kubetrain_operator_restarts_total", "Gang restarts by cause", ["cause"])
RECONCILE = Histogram(
    "kubetrain_operator_reconcile_duration_seconds",
    "Time of one reconcile (observe, decide, act)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10),
)
TIME_TO_RUNNING = Histogram(
    "kubetrain_operator_time_to_running_seconds",
    "From TrainingJob creation to all worker pods running",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
RECOVERY = Histogram(
    "kubetrain_operator_recovery_seconds",
    "From a gang-restart decision to all pods of the next attempt running",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
API_REQUESTS = Counter(
    "kubetrain_operator_api_requests_total",
    "Requests of the reconciler and the pod watch to the Kubernetes API, by HTTP verb"
    " (kopf's own watches and patches are not counted)",
    ["verb"],
)
NOTIFICATIONS = Counter(
    "kubetrain_operator_notifications_total",
    "Job-level webhook notifications (spec.notifications) by event and result: sent, failed"
    " (the webhook did not take it), refused (no Secret or key, a URL not allowed), dropped"
    " (the send queue was full)",
    ["event", "result"],
)
STATES = JOB_STATES

_states: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def record_job(namespace: str, name: str, status: Mapping[str, Any] | None) -> None:
    """Refresh one job's series from its status (None: the job is gone) and the
    per-state totals. Per-job series are bounded by the jobs that exist."""
    key = (namespace, name)
    with _lock:
        old = _states.pop(key, None)
        if old is not None:
            JOB_INFO.remove(namespace, name, old)
        if status is None:
            for cause in RESTART_CAUSES:
                _remove(JOB_RESTARTS, namespace, name, cause)
            _remove(JOB_GOODPUT, namespace, name)
        else:
            state = str(status.get("state") or "Pending")
            _states[key] = state
            JOB_INFO.labels(namespace, name, state).set(1)
            restarts = status.get("restarts") or {}
            for cause in RESTART_CAUSES:
                JOB_RESTARTS.labels(namespace, name, cause).set(restarts.get(cause, 0))
            if status.get("goodputPercent") is not None:
                JOB_GOODPUT.labels(namespace, name).set(status["goodputPercent"])
        for state in STATES:
            JOBS.labels(state=state).set(sum(1 for s in _states.values() if s == state))


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set (e.g. goodput before the first step)
        metric.remove(*labels)


def observe(metric: str, value: float, label: str = "") -> None:
    if metric == "restart":
        RESTARTS.labels(cause=label).inc(value)
    elif metric == "time_to_running":
        TIME_TO_RUNNING.observe(value)
    elif metric == "recovery":
        RECOVERY.observe(value)


class Health:
    """/healthz: kopf's event loop still beats (a task on it calls `beat` every few
    seconds); /readyz: the operator has started watching."""

    def __init__(self, stale_after_seconds: float = 60.0) -> None:
        self.ready = threading.Event()
        self.stale_after = stale_after_seconds
        self._last_beat = time.monotonic()

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._last_beat < self.stale_after

    def serve(self, port: int) -> ThreadingHTTPServer:
        health = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a silent client never holds a thread

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    ok, text = health.alive(), "kopf's event loop has stopped answering"
                else:
                    ok, text = self.path == "/readyz" and health.ready.is_set(), "not ready"
                self.send_response(200 if ok else 503)
                self.end_headers()
                self.wfile.write(b"ok\n" if ok else f"{text}\n".encode())

            def log_message(self, *args: object) -> None:
                pass  # probes every few seconds would drown the structured log

        server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
        return server


def serve_metrics(port: int) -> None:
    start_http_server(port)
