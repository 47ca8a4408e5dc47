"""The Kueue wiring: its configuration, the webhooks it registers, the binary's lookup
(no process runs)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from localkube import binaries, kueue
from localkube.api import KubeApi, condition


def _hook(name: str, path: str, group: str, resource: str) -> dict[str, Any]:
    return {
        "admissionReviewVersions": ["v1"],
        "clientConfig": {
            "service": {"name": "webhook-service", "namespace": "system", "path": path}
        },
        "failurePolicy": "Fail",
        "name": name,
        "rules": [
            {
                "apiGroups": [group],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": [resource],
            }
        ],
        "sideEffects": "None",
    }


_MUTATING: dict[str, Any] = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "MutatingWebhookConfiguration",
    "metadata": {"name": "mutating-webhook-configuration"},
    "webhooks": [
        _hook("mpod.kb.io", "/mutate--v1-pod", "", "pods"),
        _hook("mjob.kb.io", "/mutate-batch-v1-job", "batch", "jobs"),
        _hook(
            "mpytorchjob.kb.io", "/mutate-kubeflow-org-v1-pytorchjob", "kubeflow.org", "pytorchjobs"
        ),
        _hook(
            "mworkload.kb.io", "/mutate-kueue-x-k8s-io-v1beta2-workload", kueue.GROUP, "workloads"
        ),
    ],
}


def _names(config: dict[str, Any]) -> list[str]:
    return [hook["name"] for hook in config["webhooks"]]


def _kueue(tmp_path: Path, **options: Any) -> kueue.Kueue:
    api = KubeApi("https://127.0.0.1:1", ca_file=None)  # never called here
    return kueue.Kueue(tmp_path / "kubeconfig", api, tmp_path, **options)


def test_webhooks_are_called_by_url_with_our_ca_for_the_enabled_frameworks_only(
    tmp_path: Path,
) -> None:
    runner = _kueue(tmp_path, excluded_namespaces=["kube-system", "operator"])
    [config] = runner.webhook_configurations([_MUTATING], b"PEM")
    assert config["metadata"] == {"name": "kueue-mutating-webhook-configuration"}
    assert _names(config) == ["mpod.kb.io", "mworkload.kb.io"]
    pod, workload = config["webhooks"]
    assert pod["clientConfig"] == {
        "url": f"https://127.0.0.1:{runner.webhook_port}/mutate--v1-pod",
        "caBundle": base64.b64encode(b"PEM").decode(),
    }
    # Pods in excluded namespaces never wait on Kueue; its own kinds have no selector.
    [excluded] = pod["namespaceSelector"]["matchExpressions"]
    assert excluded["operator"] == "NotIn"
    assert excluded["values"] == ["kube-system", "operator", "kueue-system"]
    assert "namespaceSelector" not in workload
    assert "service" in _MUTATING["webhooks"][0]["clientConfig"]  # the input is untouched


def test_a_group_kind_framework_keeps_its_webhooks(tmp_path: Path) -> None:
    runner = _kueue(tmp_path, frameworks=["batch/job", "kubeflow.org/pytorchjob"])
    [config] = runner.webhook_configurations([_MUTATING], b"")
    assert _names(config) == ["mjob.kb.io", "mpytorchjob.kb.io", "mworkload.kb.io"]


def test_configuration_keeps_every_server_on_loopback(tmp_path: Path) -> None:
    runner = _kueue(tmp_path, wait_for_pods_ready={"timeout": "1m"})
    config = runner.config()
    assert config["webhook"] == {
        "host": "127.0.0.1",
        "port": runner.webhook_port,
        "certDir": str(tmp_path / "certs"),
    }
    assert config["health"]["healthProbeBindAddress"] == f"127.0.0.1:{runner.health_port}"
    assert config["metrics"]["bindAddress"] == f"127.0.0.1:{runner.metrics_port}"
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["internalCertManagement"] == {"enable": False}
    assert config["manageJobsWithoutQueueName"] is False
    assert config["managedJobsNamespaceSelector"] == runner.namespace_selector
    assert config["featureGates"]["VisibilityOnDemand"] is False
    assert config["waitForPodsReady"] == {"timeout": "1m"}
    assert config["integrations"] == {"frameworks": ["pod"]}
    assert "waitForPodsReady" not in _kueue(tmp_path).config()


def test_kueue_runs_with_our_metrics_certificate_in_a_mount_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kueue, "binary", lambda name: Path("/cache") / name)
    argv = _kueue(tmp_path).argv()
    assert argv[1:4] == ["--mount", "--propagation=private", "--"]
    assert [str(tmp_path / "certs"), str(kueue.METRICS_CERT_DIR)] == argv[8:10]
    assert argv[-3:] == [
        "/cache/kueue",
        f"--kubeconfig={tmp_path / 'kubeconfig'}",
        f"--config={tmp_path / 'kueue-config.yaml'}",
    ]


def test_converted_crds_are_the_active_patches_only() -> None:
    text = (
        "patches:\n- path: patches/webhook_in_workloads.yaml\n"
        "#- path: patches/webhook_in_resourceflavors.yaml\n"
        "- path: patches/webhook_in_localqueues.yaml\n"
    )
    assert kueue.converted_crds(text) == {
        "workloads.kueue.x-k8s.io",
        "localqueues.kueue.x-k8s.io",
    }


def test_condition_finds_a_status_condition_by_type() -> None:
    workload = {"status": {"conditions": [{"type": "QuotaReserved", "status": "False"}]}}
    assert condition(workload, "QuotaReserved") == {
        "type": "QuotaReserved",
        "status": "False",
    }
    assert condition(workload, "Admitted") is None
    assert condition({}, "Admitted") is None


def test_a_kueue_on_path_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It cannot say its version, and its manifests come from the cache beside it.
    monkeypatch.setenv("KUBETRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    (tmp_path / "path").mkdir()
    fake = tmp_path / "path" / "kueue"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    with pytest.raises(binaries.MissingBinary, match="not used"):
        binaries.binary("kueue")
