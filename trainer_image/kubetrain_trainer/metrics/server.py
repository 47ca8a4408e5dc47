"""Rank 0's HTTP endpoint: ``/metrics`` (Prometheus), ``/progress`` (JSON), ``/healthz``.

One ``ThreadingHTTPServer`` in a daemon thread: scrapes never wait on the
training loop, and a hung loop (the operator's progress deadline) still
answers, with a step that no longer moves. ``/progress`` is what the operator
copies into ``status.progress``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import choose_encoder

from kubetrain_trainer.metrics.logger import json_safe
from kubetrain_trainer.metrics.prometheus import TrainerMetrics

ProgressSource = Callable[[], Mapping[str, Any]]


class MetricsServer:
    """Serves ``metrics`` and ``progress()`` over HTTP until ``stop()``.

    ``port=0`` binds a free port; ``.port`` is the real one after ``start()``.
    Bind ``0.0.0.0`` in a pod (the pod IP is what Prometheus and the operator
    reach) and ``127.0.0.1`` in tests.
    """

    def __init__(
        self,
        port: int,
        metrics: TrainerMetrics,
        progress: ProgressSource,
        host: str = "0.0.0.0",  # a pod exposes its ports on all interfaces
    ) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.progress = progress
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, name="kubetrain-metrics", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


# Every connection gets this long to send its request and read the answer: a client
# that opens a socket and says nothing must not hold a thread for ever.
CONNECTION_TIMEOUT_S = 10


def _handler_for(owner: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = CONNECTION_TIMEOUT_S  # applied to the connection's socket

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._reply(200, content_type, encoder(owner.metrics.registry))
            elif path == "/progress":
                try:
                    body = json.dumps(json_safe(dict(owner.progress())), allow_nan=False)
                except Exception as exc:  # a scrape must not kill the thread
                    self._reply(500, "text/plain; charset=utf-8", f"{exc}\n".encode())
                    return
                self._reply(200, "application/json", body.encode())
            elif path == "/healthz":
                self._reply(200, "text/plain; charset=utf-8", b"ok\n")
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n")

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per scrape would drown the training log

    return Handler
