"""Every generated file equals what its source generates (`make generate`), and the
chart's values.schema.json describes exactly the keys values.yaml has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain_devcluster.project import source_path

ROOT = Path(__file__).resolve().parents[2]
HACK = ROOT / "hack"


def test_no_generated_file_is_stale() -> None:
    result = subprocess.run(
        [sys.executable, str(HACK / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": source_path(), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def chart_schema(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(HACK))
    from kubetrain_chart import schema

    return schema


def test_values_yaml_comments_are_the_schema_descriptions(chart_schema: Any) -> None:
    values = (ROOT / "helm" / "kubetrain" / "values.yaml").read_text()
    texts = chart_schema.descriptions(values)
    assert texts["operator.replicaCount"].startswith("Operator replicas. 1: the Deployment")
    assert "once. More: they elect a leader" in texts["operator.replicaCount"]  # continued
    generated = json.loads((ROOT / "helm" / "kubetrain" / "values.schema.json").read_text())
    assert generated["properties"]["operator"]["properties"]["replicaCount"]["maximum"] == 5


def test_a_key_without_a_comment_or_unknown_to_the_model_is_an_error(
    chart_schema: Any,
) -> None:
    values = (ROOT / "helm" / "kubetrain" / "values.yaml").read_text()
    uncommented = values.replace("# -- Create the `helm test` pod", "# Create the `helm test` pod")
    with pytest.raises(ValueError, match=r"helmTest\.enabled"):
        chart_schema.schema(uncommented)
    unknown = yaml.safe_load(values) | {"surprise": 1}
    with pytest.raises(ValueError, match="surprise"):
        chart_schema.schema(yaml.safe_dump(unknown))
