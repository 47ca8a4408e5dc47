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
their HTTP status or exception type only. The body of each format, the POST and the
retry policy are core's (kubetrain_core.notify), shared with the operator's job-level
notifications (spec.notifications).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import threading
import time
from typing import Any

from kubetrain_core.config import ConfigError, WebhookConfig
from kubetrain_core.notify import BACKOFF_CAP_SECONDS, MAX_TEXT, deliver, payload, url_problem
from kubetrain_trainer.metrics.records import EvalRecord, Sink

log = logging.getLogger(__name__)

# The trainer's event names -> the notification kinds of metrics.webhook.events.
EVENT_KINDS = {"start": "start", "restore": "rollback", "finished": "finished", "failed": "failed"}
QUEUE_SIZE = 100
FLUSH_CAP_SECONDS = 30.0  # the longest close() waits (a pod's default grace period)
USER_AGENT = "kubetrain-trainer (webhook notifications)"  # Discord rejects urllib's default


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)


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
        if url_problem(url.strip()) is not None:
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
        done = deliver(
            self._url,
            body,
            max_attempts=self.cfg.max_attempts,
            timeout_seconds=self.cfg.timeout_seconds,
            backoff_seconds=self._backoff,
            user_agent=USER_AGENT,
            left=self._left,
            wait=self._pause,
        )
        if done.ok:
            self.sent += 1
            return
        self.failed += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "metrics.webhook: a notification was not delivered (%s after %d attempt(s));"
                " training goes on, later failures are only counted",
                done.error,
                done.attempts,
            )

    def _pause(self, seconds: float) -> bool:
        """Wait before the next try; False when close()'s deadline would pass first."""
        end = time.monotonic() + seconds
        if self._closing.wait(seconds):  # close() came: finish the pause only in time
            if self._deadline is None or end >= self._deadline:
                return False
            time.sleep(max(0.0, end - time.monotonic()))
        return True
