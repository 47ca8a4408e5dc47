"""The chart's Grafana dashboards (generated: tests/unit/test_generated.py checks the JSON is
fresh): every query names metrics the trainer or operator defines, the promised panels exist."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from kubetrain_operator import operator_metrics
from kubetrain_trainer.metrics.prometheus import TrainerMetrics

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "helm" / "kubetrain" / "dashboards"
PANELS = {
    "kubetrain-operator.json": {
        "Jobs by state",
        "Restarts by cause",
        "Time to recover",
        "Reconcile latency",
    },
    "kubetrain-job.json": {
        "Loss",
        "Learning rate",
        "Throughput",
        "Gradient norm",
        "Checkpoint age",
        "Checkpoint save duration",
        "Rollbacks",
        "Goodput",
        "Gang restarts",
        "Gang restarts by cause",
        "World size",
    },
}


def defined_metrics() -> tuple[set[str], set[str]]:
    """Series names and label names the trainer and operator define."""
    names: set[str] = set()
    labels: set[str] = {"le"}
    trainer = TrainerMetrics(labels={"namespace": "ml", "trainingjob": "gpt"})
    for family in trainer.registry.collect():
        for sample in family.samples:
            names.add(sample.name)
            labels |= set(sample.labels)
    for metric in vars(operator_metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels |= set(metric._labelnames)
        for family in metric.describe():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names, labels


def panels(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "type" in node and "title" in node and "gridPos" in node:
            yield node
        for child in node.values():
            yield from panels(child)
    elif isinstance(node, list):
        for child in node:
            yield from panels(child)


def exprs(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if "expr" in t]
    found += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return found


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(COMMITTED.glob("*.json"))}


def test_dashboards_have_the_promised_panels(dashboards: dict[str, dict[str, Any]]) -> None:
    assert set(dashboards) == set(PANELS)
    for name, dashboard in dashboards.items():
        titles = {p["title"] for p in panels(dashboard)}
        assert titles >= PANELS[name], f"{name} lacks {sorted(PANELS[name] - titles)}"
        assert dashboard["uid"] == name.removesuffix(".json")


def test_every_panel_queries_the_chosen_prometheus(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, dashboard in dashboards.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["query"] == "prometheus", name
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
            assert panel["targets"], (name, panel["title"])
            assert panel.get("description"), (name, panel["title"])


def test_queries_use_only_defined_metrics_and_labels(dashboards: dict[str, dict[str, Any]]) -> None:
    names, labels = defined_metrics()
    used: set[str] = set()
    for name, dashboard in dashboards.items():
        for expr in exprs(dashboard):
            metrics = set(re.findall(r"\bkubetrain_[a-z0-9_]+\b", expr))
            assert metrics, f"{name}: {expr!r} names no kubetrain metric"
            assert metrics <= names, f"{name}: {sorted(metrics - names)} not defined"
            used |= metrics
            for group in re.findall(r"\bby \(([^)]*)\)", expr):
                by = {label.strip() for label in group.split(",")}
                assert by <= labels, f"{name}: grouping by unknown {sorted(by - labels)}"
    # The job view covers the trainer, the overview the operator.
    assert any(m.startswith("kubetrain_operator_") for m in used)
    assert {"kubetrain_loss", "kubetrain_val_loss", "kubetrain_learning_rate"} <= used


def test_metric_discovery_finds_both_sides() -> None:
    names, labels = defined_metrics()
    assert {"kubetrain_step", "kubetrain_nan_events_total", "kubetrain_operator_jobs"} <= names
    assert "kubetrain_operator_reconcile_duration_seconds_bucket" in names
    assert {"state", "cause", "action", "trainingjob", "namespace"} <= labels
