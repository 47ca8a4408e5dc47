"""The chart's PrometheusRule: valid for promtool, alerts that fire (and stay quiet) on
synthetic series evaluated by promtool's real rule engine, metric names the code defines."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from kubetrain_operator import operator_metrics
from kubetrain_trainer.metrics.prometheus import TrainerMetrics
from localkube.binaries import MissingBinary, binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kubetrain"
JOB = {"namespace": "ml", "trainingjob": "gpt"}
SERIES = '{namespace="ml", trainingjob="gpt"}'
REQUIRED = {
    "TrainingJobFailed",
    "TrainingJobRestartStorm",
    "TrainingJobNaNRollbacks",
    "TrainingJobNaNAborted",
    "TrainingJobStalled",
    "TrainingJobCheckpointTooOld",
    "TrainingJobCheckpointFailing",
}


def promtool() -> str:
    try:
        return str(binary("promtool"))
    except (MissingBinary, ValueError):
        found = shutil.which("promtool")
        assert found, "promtool not found: apt-get install prometheus"
        return found


def exposed_names(metric: MetricWrapperBase) -> set[str]:
    """Series names a metric exposes (prometheus_client's naming)."""
    names: set[str] = set()
    for family in metric.describe():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        else:
            names.add(family.name)
    return names


def defined_metrics() -> set[str]:
    """Every kubetrain series the trainer and the operator define."""
    trainer = TrainerMetrics(labels=JOB)
    names: set[str] = set()
    for family in trainer.registry.collect():
        names |= {sample.name for sample in family.samples}
    for value in vars(operator_metrics).values():
        if isinstance(value, MetricWrapperBase):
            names |= exposed_names(value)
    return names


def used_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\bkubetrain_[a-z0-9_]+\b", expr))


@pytest.fixture(scope="module")
def groups() -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            str(binary("helm")),
            "template",
            "kt",
            str(CHART),
            "--set",
            "prometheusRule.enabled=true",
            "--show-only",
            "templates/prometheusrule.yaml",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rule: dict[str, Any] = yaml.safe_load(result.stdout)
    assert rule["kind"] == "PrometheusRule"
    found: list[dict[str, Any]] = rule["spec"]["groups"]
    return found


@pytest.fixture
def rules_file(groups: list[dict[str, Any]], tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_promtool_accepts_the_rules(rules_file: Path) -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"SUCCESS: {sum(1 for _ in alerts(yaml.safe_load(rules_file.read_text())['groups']))} rules found"
        in result.stdout
    )


def test_the_required_alerts_exist_with_severity_and_summary(groups: list[dict[str, Any]]) -> None:
    found = alerts(groups)
    assert set(found) >= REQUIRED
    for name, rule in found.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_alerts_use_only_metrics_the_code_defines(groups: list[dict[str, Any]]) -> None:
    defined = defined_metrics()
    used: set[str] = set()
    for name, rule in alerts(groups).items():
        names = used_metrics(rule["expr"])
        assert names <= defined, f"{name} uses undefined {sorted(names - defined)}"
        used |= names
    assert len(used) >= 6


def test_metric_discovery_sees_both_sides() -> None:
    defined = defined_metrics()
    # Counters expose _total, histograms _bucket: the naming the rules rely on.
    assert {"kubetrain_rollbacks_total", "kubetrain_checkpoint_save_seconds_bucket"} <= defined
    assert {"kubetrain_operator_restarts_total", "kubetrain_operator_jobs"} <= defined
    assert "kubetrain_rollbacks" not in defined


def expand(template: str, labels: dict[str, str], value: str) -> str:
    """Prometheus' alert templating for the two forms our annotations use."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)
    return re.sub(r"\{\{ \$value[^}]*\}\}", value, text)


class Case(NamedTuple):
    alert: str
    series: list[dict[str, str]]
    at: str  # promtool eval_time
    labels: dict[str, str] | None  # the alert's labels when it fires; None: it stays silent
    value: str  # $value as the annotations render it


CASES = [
    Case(
        "TrainingJobNaNRollbacks",
        [{"series": f"kubetrain_rollbacks_total{SERIES}", "values": "0x20 1x10"}],
        "24m",
        JOB,
        "1",
    ),
    Case(
        "TrainingJobNaNRollbacks",
        [{"series": f"kubetrain_rollbacks_total{SERIES}", "values": "0x30"}],
        "24m",
        None,
        "",
    ),
    Case(
        "TrainingJobNaNAborted",
        [
            {
                "series": 'kubetrain_nan_events_total{namespace="ml", trainingjob="gpt", action="abort"}',
                "values": "0x20 1x10",
            }
        ],
        "24m",
        JOB,
        "",
    ),
    Case(
        "TrainingJobStalled",
        [
            {"series": f"kubetrain_step{SERIES}", "values": "0+1x10 10x40"},
            {"series": f"kubetrain_total_steps{SERIES}", "values": "100x50"},
        ],
        "40m",
        JOB,
        "",
    ),
    Case(
        "TrainingJobStalled",
        [
            {"series": f"kubetrain_step{SERIES}", "values": "0+1x50"},
            {"series": f"kubetrain_total_steps{SERIES}", "values": "100x50"},
        ],
        "40m",
        None,
        "",
    ),
    Case(
        "TrainingJobStalled",  # finished: no more steps is expected
        [
            {"series": f"kubetrain_step{SERIES}", "values": "0+10x10 100x40"},
            {"series": f"kubetrain_total_steps{SERIES}", "values": "100x50"},
        ],
        "40m",
        None,
        "",
    ),
    Case(
        "TrainingJobCheckpointTooOld",
        [
            {"series": f"kubetrain_last_checkpoint_timestamp_seconds{SERIES}", "values": "60x80"},
            {"series": f"kubetrain_step{SERIES}", "values": "0+1x80"},
            {"series": f"kubetrain_total_steps{SERIES}", "values": "1000x80"},
        ],
        "70m",
        JOB,
        "1h 9m 0s",
    ),
    Case(
        "TrainingJobCheckpointTooOld",  # checkpoints every minute
        [
            {"series": f"kubetrain_last_checkpoint_timestamp_seconds{SERIES}", "values": "0+60x80"},
            {"series": f"kubetrain_step{SERIES}", "values": "0+1x80"},
            {"series": f"kubetrain_total_steps{SERIES}", "values": "1000x80"},
        ],
        "70m",
        None,
        "",
    ),
    Case(
        "TrainingJobCheckpointFailing",
        [{"series": f"kubetrain_checkpoint_failures_total{SERIES}", "values": "0x10 1x10"}],
        "15m",
        JOB,
        "",
    ),
    Case(
        "TrainingJobCheckpointFailing",
        [{"series": f"kubetrain_checkpoint_failures_total{SERIES}", "values": "0x20"}],
        "15m",
        None,
        "",
    ),
    Case(
        "TrainingJobRestartStorm",
        [{"series": 'kubetrain_operator_restarts_total{cause="nodeFailure"}', "values": "0+1x40"}],
        "35m",
        {"cause": "nodeFailure"},
        "",
    ),
    Case(
        "TrainingJobRestartStorm",
        [{"series": 'kubetrain_operator_restarts_total{cause="nan"}', "values": "0x20 1x20"}],
        "35m",
        None,
        "",
    ),
    Case(
        "TrainingJobFailed",
        [{"series": 'kubetrain_operator_jobs{state="Failed"}', "values": "0 0 1 1"}],
        "3m",
        {},
        "1",
    ),
    Case(
        "TrainingJobFailed",
        [{"series": 'kubetrain_operator_jobs{state="Failed"}', "values": "0 0 0 0"}],
        "3m",
        None,
        "",
    ),
]


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[
        f"{c.alert}-{'fires' if c.labels is not None else 'silent'}-{i}"
        for i, c in enumerate(CASES)
    ],
)
def test_alert_fires_only_when_it_should(
    groups: list[dict[str, Any]], rules_file: Path, case: Case
) -> None:
    alert, series, at, labels, value = case
    rule = alerts(groups)[alert]
    expected: list[dict[str, Any]] = []
    if labels is not None:
        annotations = {k: expand(v, labels, value) for k, v in rule["annotations"].items()}
        expected = [{"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}]
    spec = {
        "rule_files": [rules_file.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
            }
        ],
    }
    test_file = rules_file.parent / "test.yaml"
    test_file.write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
