"""Read rank 0's /progress endpoint (docs/contract.md) into status.progress.

The endpoint is served by the job's own pod, so everything about it is untrusted:
the read has one total deadline (not a per-recv timeout a server could stretch by
dripping bytes), a size cap, and a parser that drops what does not fit the status
schema instead of raising. A failed read says why, so that the hang detector can
tell "no progress" from "cannot see progress".
"""

from __future__ import annotations

import json
import math
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kubetrain_core.api import CheckpointRef, Progress
from kubetrain_core.contract import bounded_step

MAX_RESPONSE_BYTES = 64 * 1024  # a real /progress answer is a few hundred bytes
_LIMITS = {"epoch": 1e12, "loss": 1e30, "valLoss": 1e30, "tokensPerSecond": 1e15}
_NEWEST_TIME = 4102444800.0  # 2100-01-01: later "times" are garbage


@dataclass(frozen=True)
class ProgressRead:
    """One read: the progress, or why there is none (`error` None: not serving yet)."""

    progress: Progress | None = None
    error: str | None = None


def _number(value: Any, limit: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or abs(value) > limit:
        return None
    return round(float(value), 4)  # status is for people: 4 digits suffice


def _checkpoint(data: Any) -> CheckpointRef | None:
    if not isinstance(data, dict) or not isinstance(data.get("uri"), str):
        return None
    step, when = bounded_step(data.get("step")), data.get("time")
    stamp = None
    if isinstance(when, int | float) and not isinstance(when, bool) and 0 <= when < _NEWEST_TIME:
        stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        return CheckpointRef(step=step or 0, uri=data["uri"], time=stamp)
    except ValidationError:
        return None


# Counts the trainer reports and the range status takes (Progress's own bounds).
_COUNTS = {"workerRestarts": (0, 1000), "worldSize": (1, 65536), "globalBatchSize": (1, 2**40)}


def parse_progress(data: Any) -> Progress | None:
    """The trainer's JSON -> Progress: unknown keys are ignored, a field that does not
    fit the schema is dropped, and without a valid step there is no progress."""
    if not isinstance(data, dict):
        return None
    step = bounded_step(data.get("step"))
    if step is None:
        return None
    values: dict[str, Any] = {"step": step, "totalSteps": bounded_step(data.get("totalSteps"))}
    for key, limit in _LIMITS.items():
        values[key] = _number(data.get(key), limit)
    values["lastCheckpoint"] = _checkpoint(data.get("lastCheckpoint"))
    for key, (least, most) in _COUNTS.items():
        count = bounded_step(data.get(key))
        values[key] = count if count is not None and least <= count <= most else None
    resumed = data.get("resumedFrom")
    values["resumedFrom"] = resumed if isinstance(resumed, str) and len(resumed) <= 2048 else None
    if values["tokensPerSecond"] is not None and values["tokensPerSecond"] < 0:
        values["tokensPerSecond"] = None
    if values["epoch"] is not None and values["epoch"] < 0:
        values["epoch"] = None
    try:
        return Progress.model_validate(values)
    except ValidationError:
        return None


def _fetch(pod_ip: str, port: int, deadline: float) -> bytes:
    """GET /progress over HTTP/1.0; the whole exchange must end by `deadline`."""

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the endpoint did not answer in time")
        return left

    with socket.create_connection((pod_ip, port), timeout=remaining()) as sock:
        request = f"GET /progress HTTP/1.0\r\nHost: {pod_ip}:{port}\r\n\r\n"
        sock.settimeout(remaining())
        sock.sendall(request.encode())
        chunks: list[bytes] = []
        size = 0
        while True:
            sock.settimeout(remaining())
            chunk = sock.recv(8192)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise ValueError(f"the answer exceeds {MAX_RESPONSE_BYTES} bytes")
            chunks.append(chunk)


def read_progress(pod_ip: str, port: int, timeout: float) -> ProgressRead:
    """One bounded read of http://<rank 0>:<port>/progress, never longer than `timeout`."""
    try:
        raw = _fetch(pod_ip, port, time.monotonic() + timeout)
    except ConnectionRefusedError:
        return ProgressRead()  # not serving yet: rank 0 serves once it has resumed
    except (OSError, ValueError) as error:  # TimeoutError is an OSError
        return ProgressRead(error=f"reading {pod_ip}:{port}/progress: {error}")
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        return ProgressRead(error=f"{pod_ip}:{port}/progress answered {head[:80]!r}")
    try:
        data = json.loads(body, parse_constant=lambda _name: None)  # NaN, Infinity: absent
    except (ValueError, RecursionError) as error:
        return ProgressRead(error=f"{pod_ip}:{port}/progress is not JSON: {str(error)[:200]}")
    progress = parse_progress(data)
    if progress is None:
        return ProgressRead(error=f"{pod_ip}:{port}/progress has no valid step")
    return ProgressRead(progress)
