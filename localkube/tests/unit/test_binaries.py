"""Where the harness finds its binaries: envtest's order and the version check."""

from __future__ import annotations

from pathlib import Path

import pytest

from localkube import binaries


def fake(directory: Path, name: str, prints: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{prints}'\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def empty_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KUBETRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    return tmp_path


def test_kubebuilder_assets_win_without_a_version_check(
    empty_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etcd = fake(empty_env / "assets", "etcd", "etcd Version: 3.0.0")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(empty_env / "assets"))
    assert binaries.binary("etcd") == etcd


def test_the_cache_is_keyed_by_the_pinned_version(empty_env: Path) -> None:
    version = binaries.pinned_version("kube-scheduler")
    cached = fake(
        empty_env / "cache" / "testbin" / f"kube-scheduler-{version}", "kube-scheduler", ""
    )
    assert binaries.binary("kube-scheduler") == cached


def test_path_binaries_must_report_the_pinned_version(empty_env: Path) -> None:
    fake(empty_env / "path", "kubectl", "Client Version: v1.32.4-dispatcher")
    with pytest.raises(binaries.MissingBinary, match="is another version"):
        binaries.binary("kubectl")
    wanted = binaries.pinned_version("kube-apiserver")
    apiserver = fake(empty_env / "path", "kube-apiserver", f"Kubernetes {wanted}")
    assert binaries.binary("kube-apiserver") == apiserver


def test_missing_binary_says_how_to_get_it(empty_env: Path) -> None:
    with pytest.raises(binaries.MissingBinary, match="run `make testbin`"):
        binaries.binary("helm")
    with pytest.raises(binaries.MissingBinary, match="apt-get install prometheus"):
        binaries.binary("prometheus")
