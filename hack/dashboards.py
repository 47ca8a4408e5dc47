"""Write the chart's Grafana dashboards (helm/kubetrain/dashboards/*.json) from code.

    python hack/dashboards.py [--out DIR]     (make dashboards)

The JSON is committed; tests/unit/test_dashboards.py fails when it differs from
what this script generates, so edit hack/kubetrain_dashboards/, never the JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from kubetrain_dashboards.job_view import job_view
from kubetrain_dashboards.operator_overview import operator_overview

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "helm" / "kubetrain" / "dashboards"
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "kubetrain-operator.json": operator_overview,
    "kubetrain-job.json": job_view,
}


def render(build: Callable[[], Dashboard]) -> str:
    """Stable text: sorted keys, two-space indent, trailing newline."""
    text = JSONEncoder(sort_keys=True, indent=2).encode(build().build())
    json.loads(text)  # fail here, not in Grafana, if the encoder ever emits invalid JSON
    return text + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="directory for the JSON files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (args.out / name).write_text(render(build))
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
