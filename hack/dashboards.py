"""The chart's Grafana dashboards (helm/kubetrain/dashboards/*.json), built in code.

hack/kubetrain_dashboards/ holds the dashboards; `make generate` (hack/generate.py)
writes their JSON, which is committed: edit the code, never the JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from kubetrain_dashboards.job_view import job_view
from kubetrain_dashboards.operator_overview import operator_overview

DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "kubetrain-operator.json": operator_overview,
    "kubetrain-job.json": job_view,
}


def render(build: Callable[[], Dashboard]) -> str:
    """Stable text: sorted keys, two-space indent, trailing newline."""
    text = JSONEncoder(sort_keys=True, indent=2).encode(build().build())
    json.loads(text)  # fail here, not in Grafana, if the encoder ever emits invalid JSON
    return text + "\n"
