"""Notifications to a Discord or Slack incoming webhook (metrics.webhook), rank 0 only.

What is sent, each one a line of text (metrics.webhook.events picks which kinds):

- ``start``: the trainer's ``start`` event: "<job> started" (", resuming at step N");
- ``evaluation``: every evaluation: "<job> step N: val_loss 2.31, val_bleu 31.2";
- ``rollback``: the trainer's ``restore`` event (fields uri, skip), an in-process
  rollback to the last good checkpoint after NaN or spiking losses;
- ``finished``: the ``finished`` event (fields steps, val_loss);
- ``failed``: the ``failed`` event (field reason; the step is the event's own).

Delivery never slows or stops training: the loop only puts the text on a bounded queue
(when it is full the text is dropped and counted); a daemon thread POSTs it as JSON,
retrying timeouts, connection errors, 429 and 5xx with exponential backoff up to
max_attempts. A notification that cannot be delivered is counted and the first one
logged as a warning. close() flushes the queue within a bounded deadline, then stops.

The URL is a secret (it carries the webhook's token): it is read from the environment
by the caller, and is never logged or put in an error message; errors are described by
their HTTP status or exception type only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import ssl
import threading
import time
import urllib.request
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.error import HTTPError, URLError

from kubetrain_core.config import ConfigError, WebhookConfig
from kubetrain_trainer.metrics.records import EvalRecord, Sink

log = logging.getLogger(__name__)

# The trainer's event names -> the notification kinds of metrics.webhook.events.
EVENT_KINDS = {"start": "start", "restore": "rollback", "finished": "finished", "failed": "failed"}
QUEUE_SIZE = 100
MAX_TEXT = 1900  # Discord rejects content over 2000 characters
BACKOFF_CAP_SECONDS = 30.0  # the longest pause between two tries
FLUSH_CAP_SECONDS = 30.0  # the longest close() waits (a pod's default grace period)
USER_AGENT = "kubetrain-trainer (webhook notifications)"  # Discord rejects urllib's default


def payload(fmt: str, text: str) -> dict[str, Any]:
    """The JSON body of one notification in the webhook's format."""
    if fmt == "slack":
        # Slack reads <...> as links and mentions (<!channel>): escape them.
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return {"text": escaped}
    # A job name or a failure reason must not ping anyone (@everyone).
    return {"content": text, "allowed_mentions": {"parse": []}}


def describe(err: BaseException) -> str:
    """What went wrong, without the URL (the text of some errors carries it or its host)."""
    if isinstance(err, HTTPError):
        return f"HTTP {err.code}"
    if isinstance(err, URLError) and isinstance(err.reason, BaseException):
        err = err.reason
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, ssl.SSLError):
        return f"TLS error ({type(err).__name__})"
    if isinstance(err, OSError) and err.strerror:
        return f"{type(err).__name__}: {err.strerror}"
    return type(err).__name__


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)


class _Permanent(Exception):
    """A status a retry cannot fix (400, 401, 404: a malformed body, a revoked webhook)."""


class WebhookSink(Sink):
    """Posts start, evaluation, rollback and outcome notifications from a daemon thread."""

    def __init__(
        self,
        cfg: WebhookConfig,
        job: str,
        url: str | None,
        *,
        backoff_seconds: float = 1.0,
    ) -> None:
        if not url or not url.strip():
            raise ConfigError(
                "environment",
                [
                    f"metrics.webhook.url_env: the environment variable {cfg.url_env} must"
                    " hold the webhook URL (on a cluster, a Secret exposed as env); it is"
                    " not set or empty"
                ],
            )
        if not url.strip().lower().startswith(("https://", "http://")):
            raise ConfigError(
                "environment",
                [f"metrics.webhook.url_env: {cfg.url_env} must hold an http(s) URL"],
            )
        self.cfg = cfg
        self.job = job
        self._url = url.strip()
        self._backoff = backoff_seconds
        self.sent = self.failed = self.dropped = 0
        self._warned = False
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._deadline: float | None = None  # monotonic; set by close()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._work, name="kubetrain-webhook", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:  # never the URL
        return f"WebhookSink(job={self.job!r}, format={self.cfg.format!r})"

    @property
    def flush_seconds(self) -> float:
        """How long close() waits at most: one notification's every try and pause."""
        pauses = sum(
            min(BACKOFF_CAP_SECONDS, self._backoff * 2.0**i)
            for i in range(self.cfg.max_attempts - 1)
        )
        return min(FLUSH_CAP_SECONDS, self.cfg.timeout_seconds * self.cfg.max_attempts + pauses)

    # ------------------------------------------------------------------ the loop's side

    def notify(self, kind: str, text: str) -> None:
        """Queue `text` when `kind` is one of metrics.webhook.events; never blocks."""
        if kind not in self.cfg.events or self._deadline is not None:
            return
        try:
            self._queue.put_nowait(text[:MAX_TEXT])
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("metrics.webhook: notifications are dropped (the queue is full)")

    def evaluation(self, record: EvalRecord) -> None:
        fields = record.fields()
        shown = [
            f"{name} {_number(value)}"
            for name, value in fields.items()
            if name not in ("step", f"{record.split}_perplexity")
        ]
        self.notify("evaluation", f"{self.job} step {record.step}: {', '.join(shown)}")

    def event(self, event: str, step: int, **fields: Any) -> None:
        kind = EVENT_KINDS.get(event)
        if kind == "start":
            resuming = f", resuming at step {step}" if step else ""
            self.notify(kind, f"{self.job} started{resuming}")
        elif kind == "rollback":
            text = f"{self.job} rolled back to step {step} ({fields.get('uri', '?')})"
            if fields.get("skip"):
                text += f", skipping batches {fields['skip']}"
            self.notify(kind, text)
        elif kind == "finished":
            text = f"{self.job} finished: {fields.get('steps', step)} steps"
            if fields.get("val_loss") is not None:
                text += f", val_loss {_number(fields['val_loss'])}"
            self.notify(kind, text)
        elif kind == "failed":
            self.notify(kind, f"{self.job} failed at step {step}: {fields.get('reason', '?')}")

    def close(self) -> None:
        """Deliver what is queued within flush_seconds, then stop the thread."""
        if self._deadline is not None:
            return
        self._deadline = time.monotonic() + self.flush_seconds
        self._closing.set()
        # The worker's stop sign; a full queue past the deadline: the daemon thread is left.
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=self.flush_seconds)
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        unsent = self.failed + self.dropped + self._queue.qsize()
        if unsent:
            log.warning(
                "metrics.webhook: %d notification(s) not delivered (%d sent)", unsent, self.sent
            )

    # ------------------------------------------------------------------ the thread's side

    def _left(self) -> float:
        """Seconds before close()'s deadline (infinite before close())."""
        return math.inf if self._deadline is None else self._deadline - time.monotonic()

    def _work(self) -> None:
        while (text := self._queue.get()) is not None:
            if self._left() <= 0:
                self.failed += 1  # past close()'s deadline: counted, not sent
                continue
            self._deliver(text)

    def _deliver(self, text: str) -> None:
        body = json.dumps(payload(self.cfg.format, text)).encode()
        error, pause = "not sent", None
        for attempt in range(1, self.cfg.max_attempts + 1):
            timeout = min(self.cfg.timeout_seconds, self._left())
            if timeout <= 0:
                break
            try:
                self._post(body, timeout)
                self.sent += 1
                return
            except _Permanent as err:
                error = str(err)
                break
            except Exception as err:
                error, pause = describe(err), self._retry_after(err)
            if attempt == self.cfg.max_attempts or not self._pause(pause, attempt):
                break
        self.failed += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "metrics.webhook: a notification was not delivered (%s after %d attempt(s));"
                " training goes on, later failures are only counted",
                error,
                attempt,
            )

    def _post(self, body: bytes, timeout: float) -> None:
        request = urllib.request.Request(
            self._url,
            data=body,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
        except HTTPError as err:
            err.close()
            if err.code != 429 and err.code < 500:
                raise _Permanent(describe(err)) from None
            raise

    @staticmethod
    def _retry_after(err: BaseException) -> float | None:
        """The server's Retry-After (429, 503), in seconds, when it sent one."""
        value = err.headers.get("Retry-After") if isinstance(err, HTTPError) else None
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                return None

    def _pause(self, retry_after: float | None, attempt: int) -> bool:
        """Wait before the next try; False when close()'s deadline would pass first."""
        seconds = self._backoff * 2.0 ** (attempt - 1) if retry_after is None else retry_after
        seconds = min(BACKOFF_CAP_SECONDS, seconds)
        end = time.monotonic() + seconds
        if self._closing.wait(seconds):  # close() came: finish the pause only in time
            if self._deadline is None or end >= self._deadline:
                return False
            time.sleep(max(0.0, end - time.monotonic()))
        return True
