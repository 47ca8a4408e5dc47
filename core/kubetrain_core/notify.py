"""Webhook notifications, the part both senders share: the JSON body of each format, one
POST, and the bounded retry policy. The trainer (metrics.webhook, rank 0) and the
operator (spec.notifications, job-level events) each keep their own queue and thread.

The URL is a secret (it carries the webhook's token): nothing here logs it or puts it
in an error; failures are described by their HTTP status or exception type only.
Redirects are not followed: a webhook answers directly, and a redirect would take the
POST (as a GET) to a host nobody checked.
"""

from __future__ import annotations

import math
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.error import HTTPError, URLError

Format = Literal["discord", "slack", "generic"]
MAX_TEXT = 1900  # Discord rejects content over 2000 characters
MAX_URL = 2048
BACKOFF_CAP_SECONDS = 30.0  # the longest pause between two tries


def payload(fmt: str, text: str, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of one notification in the webhook's format. `fields` (the event,
    the job, a reason) go into the generic body only; chat formats carry the text."""
    text = text[:MAX_TEXT]
    if fmt == "slack":
        # Slack reads <...> as links and mentions (<!channel>): escape them.
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return {"text": escaped}
    if fmt == "generic":
        return {**(fields or {}), "text": text}
    # A job name or a failure reason must not ping anyone (@everyone).
    return {"content": text, "allowed_mentions": {"parse": []}}


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook URL (never quoting it), or None."""
    if len(url) > MAX_URL:
        return f"longer than {MAX_URL} characters"
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "contains whitespace or control characters"
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
        return "is not an http(s) URL with a host"
    return None


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


class Permanent(Exception):
    """A status a retry cannot fix (400, 401, 404: a malformed body, a revoked webhook; a
    redirect). The text is the status only."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirect())


def post(url: str, body: bytes, timeout: float, user_agent: str) -> None:
    """One POST of a JSON body; Permanent for a status no retry fixes, else the error."""
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", "User-Agent": user_agent},
        method="POST",
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65536)  # an answer is a few bytes; never buffer a flood
    except HTTPError as err:
        err.close()
        if err.code != 429 and err.code < 500:
            raise Permanent(describe(err)) from None
        raise


def retry_after(err: BaseException) -> float | None:
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


@dataclass(frozen=True)
class Delivery:
    """How one notification went: delivered or not, why not, and after how many tries."""

    ok: bool
    error: str = ""
    attempts: int = 0


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return True


def deliver(
    url: str,
    body: bytes,
    *,
    max_attempts: int,
    timeout_seconds: float,
    backoff_seconds: float,
    user_agent: str,
    left: Callable[[], float] = lambda: math.inf,
    wait: Callable[[float], bool] = _sleep,
) -> Delivery:
    """POST `body` up to max_attempts times: timeouts, connection errors, 429 and 5xx are
    retried after an exponential backoff (or the server's Retry-After, capped); other
    statuses are final. `left()`: seconds the caller still grants (no try starts past
    it); `wait(s)`: pause s seconds, False to give up early (a sender shutting down)."""
    error, tried = "not sent", 0
    for attempt in range(1, max_attempts + 1):
        timeout = min(timeout_seconds, left())
        if timeout <= 0:
            break
        tried = attempt
        try:
            post(url, body, timeout, user_agent)
            return Delivery(True, attempts=attempt)
        except Permanent as err:
            return Delivery(False, str(err), attempt)
        except Exception as err:  # any failure of one try is retried, never raised
            error, pause = describe(err), retry_after(err)
        if attempt == max_attempts:
            break
        seconds = backoff_seconds * 2.0 ** (attempt - 1) if pause is None else pause
        if not wait(min(BACKOFF_CAP_SECONDS, seconds)):
            break
    return Delivery(False, error, tried)
