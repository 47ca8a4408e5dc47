"""The Coscheduling wiring: the second scheduler's configuration and command line, the
PodGroup it reads (no process runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localkube import coscheduling
from localkube.api import KubeApi


def _names(point: dict[str, Any], key: str = "enabled") -> list[str]:
    return [plugin["name"] for plugin in point.get(key, [])]


def test_one_profile_of_its_own_with_coscheduling_instead_of_priority_sort(
    tmp_path: Path,
) -> None:
    config = coscheduling.scheduler_config(tmp_path / "kubeconfig", permit_waiting_seconds=7)
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["kind"] == "KubeSchedulerConfiguration"
    assert config["clientConnection"] == {"kubeconfig": str(tmp_path / "kubeconfig")}
    assert config["leaderElection"] == {"leaderElect": False}
    [profile] = config["profiles"]
    # Not default-scheduler: the cluster's own scheduler keeps every other pod.
    assert profile["schedulerName"] == coscheduling.SCHEDULER_NAME != "default-scheduler"
    plugins = profile["plugins"]
    assert set(plugins) == {"queueSort", "preFilter", "postFilter", "permit", "reserve"}
    for point in plugins.values():
        assert _names(point) == ["Coscheduling"]
    assert _names(plugins["queueSort"], "disabled") == ["PrioritySort"]
    assert profile["pluginConfig"] == [
        {"name": "Coscheduling", "args": {"permitWaitingTimeSeconds": 7}}
    ]


def test_backoffs_are_set_only_when_asked(tmp_path: Path) -> None:
    default = coscheduling.scheduler_config(tmp_path / "k")
    assert "podMaxBackoffSeconds" not in default
    assert "podInitialBackoffSeconds" not in default
    config = coscheduling.scheduler_config(
        tmp_path / "k", backoff_seconds=1, max_pod_backoff_seconds=2
    )
    [profile] = config["profiles"]
    assert profile["pluginConfig"][0]["args"] == {
        "permitWaitingTimeSeconds": 10,
        "podGroupBackoffSeconds": 1,
    }
    assert (config["podInitialBackoffSeconds"], config["podMaxBackoffSeconds"]) == (1, 2)


def test_serves_on_loopback_with_sorted_feature_gates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "assets" / "scheduler-plugins"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(fake.parent))
    api = KubeApi("https://127.0.0.1:1", ca_file=None)  # never called here
    gang = coscheduling.Coscheduler(
        tmp_path / "kubeconfig", api, tmp_path, feature_gates={"B": True, "A": False}
    )
    argv = gang.argv()
    assert argv[0] == str(fake)
    assert argv[1:] == [
        f"--config={tmp_path / 'scheduler-config.yaml'}",
        "--bind-address=127.0.0.1",
        f"--secure-port={gang.port}",
        "--feature-gates=A=false,B=true",
    ]
    assert gang.healthz_url == f"https://127.0.0.1:{gang.port}/healthz"
    assert (
        coscheduling.Coscheduler(tmp_path / "k", api, tmp_path)
        .argv()[-1]
        .startswith("--secure-port=")
    )


def test_pod_group_and_the_label_its_pods_carry() -> None:
    group = coscheduling.pod_group("ns", "gang", 3, schedule_timeout_seconds=20)
    assert group == {
        "apiVersion": "scheduling.x-k8s.io/v1alpha1",
        "kind": "PodGroup",
        "metadata": {"name": "gang", "namespace": "ns"},
        "spec": {"minMember": 3, "scheduleTimeoutSeconds": 20},
    }
    assert coscheduling.POD_GROUP_LABEL == "scheduling.x-k8s.io/pod-group"
    assert coscheduling.pod_group("ns", "g", 2)["spec"] == {"minMember": 2}
