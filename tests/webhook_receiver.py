"""A webhook receiver on 127.0.0.1 for the notification tests (the trainer's webhook
sink and the operator's notifier): records every POST (path, headers, JSON body, the
status answered) and answers by path: /fail/... 500 forever, /hang/... never (until the
test ends), anything else the next of `statuses`, then 204 (Discord's answer)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "T0KEN-s3cr3t-9f8e7d"  # the URLs' secret part: must never be logged or shown


class Receiver:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # answered in turn to /ok/ posts; then 204
        self.lock = threading.Lock()
        self.stop = threading.Event()  # releases the hanging answers
        self.base = ""

    def url(self, kind: str = "ok") -> str:
        return f"{self.base}/{kind}/{SECRET}"

    def got(self, kind: str = "ok") -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.posts if p["path"].startswith(f"/{kind}/")]

    def bodies(self, status: int | None = 204) -> list[Any]:
        """The JSON bodies of the posts answered with `status` (None: all), in order."""
        with self.lock:
            return [p["body"] for p in self.posts if status is None or p["status"] == status]

    def wait(self, count: int, kind: str = "ok", timeout: float = 60.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(found := self.got(kind)) >= count:
                return found
            time.sleep(0.2)
        raise AssertionError(f"{count} POST(s) to /{kind}/ expected, got {self.got(kind)}")


@contextmanager
def receiving() -> Iterator[Receiver]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            hang = self.path.startswith("/hang/")
            with got.lock:
                if hang:
                    status = 0  # never answered
                elif self.path.startswith("/fail/"):
                    status = 500
                else:
                    status = got.statuses.pop(0) if got.statuses else 204
                got.posts.append(
                    {
                        "path": self.path,
                        "agent": self.headers["User-Agent"],
                        "type": self.headers["Content-Type"],
                        "body": json.loads(raw),
                        "status": status,
                        "time": time.monotonic(),
                    }
                )
            if hang:
                got.stop.wait(600)
                return
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    got.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield got
    finally:
        got.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
