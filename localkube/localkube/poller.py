"""A daemon thread that calls a function at a fixed interval until stopped."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Poller:
    """Calls `tick` every `interval` seconds; a failing tick is retried next round
    (the API server may be restarting under the harness)."""

    def __init__(self, tick: Callable[[], None], *, name: str, interval: float = 1.0) -> None:
        self._tick = tick
        self._name = name
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._tick()
            except Exception:  # transient (e.g. API errors): the next round retries
                continue
