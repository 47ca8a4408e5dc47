"""The operator's own Prometheus metrics (kubetrain_ prefix) and /healthz, /readyz."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS = Gauge("kubetrain_operator_jobs", "TrainingJobs by state", ["state"])
RESTARTS = Counter("kubetrain_operator_restarts_total", "Gang restarts by cause", ["cause"])
RECONCILE = Histogram(
    "kubetrain_operator_reconcile_duration_seconds",
    "Time of one reconcile (observe, decide, act)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
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
STATES = ("Pending", "Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed")

_states: dict[str, str] = {}
_lock = threading.Lock()


def set_job_state(key: str, state: str | None) -> None:
    """Remember one job's state (None: deleted) and refresh the per-state gauge."""
    with _lock:
        if state is None:
            _states.pop(key, None)
        else:
            _states[key] = state
        for name in STATES:
            JOBS.labels(state=name).set(sum(1 for s in _states.values() if s == name))


def observe(metric: str, value: float, label: str = "") -> None:
    if metric == "restart":
        RESTARTS.labels(cause=label).inc(value)
    elif metric == "time_to_running":
        TIME_TO_RUNNING.observe(value)
    elif metric == "recovery":
        RECOVERY.observe(value)


class Health:
    """/healthz: the process serves; /readyz: the operator has started watching."""

    def __init__(self) -> None:
        self.ready = threading.Event()

    def serve(self, port: int) -> ThreadingHTTPServer:
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path == "/healthz" or (self.path == "/readyz" and health.ready.is_set())
                self.send_response(200 if ok else 503)
                self.end_headers()
                self.wfile.write(b"ok\n" if ok else b"not ready\n")

            def log_message(self, *args: object) -> None:
                pass  # probes every few seconds would drown the structured log

        server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
        return server


def serve_metrics(port: int) -> None:
    start_http_server(port)
