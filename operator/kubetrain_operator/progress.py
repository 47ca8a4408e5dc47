"""Read rank 0's /progress endpoint (docs/contract.md) into status.progress."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kubetrain_operator.api import CheckpointRef, Progress


def parse_progress(data: dict[str, Any]) -> Progress | None:
    """The trainer's JSON -> Progress; unknown keys are ignored, bad values drop the read."""
    fields = ("step", "totalSteps", "epoch", "loss", "valLoss", "tokensPerSecond", "resumedFrom")
    values = {k: data[k] for k in fields if data.get(k) is not None}
    for key in ("loss", "valLoss", "epoch", "tokensPerSecond"):
        if isinstance(values.get(key), float):
            values[key] = round(values[key], 4)  # status is for people: 4 digits suffice
    ckpt = data.get("lastCheckpoint")
    try:
        if isinstance(ckpt, dict) and ckpt.get("uri"):
            when = ckpt.get("time")
            if isinstance(when, int | float):
                when = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            values["lastCheckpoint"] = CheckpointRef(
                step=int(ckpt.get("step") or 0), uri=str(ckpt["uri"]), time=when
            )
        return Progress.model_validate(values)
    except (ValidationError, ValueError, TypeError):
        return None  # NaN loss and friends: keep the previous progress


def read_progress(pod_ip: str, port: int, timeout: float) -> Progress | None:
    """One GET of http://<rank 0>:<port>/progress; None when it is not (yet) serving."""
    url = f"http://{pod_ip}:{port}/progress"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # a pod IP, http only
            data = json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return parse_progress(data) if isinstance(data, dict) else None
