"""Volume contents and mount plans of the process kubelet."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from localkube.kubelet.env import PodFacts
from localkube.kubelet.volumes import (
    DEFAULT_MODE,
    Mount,
    VolumeError,
    VolumeSources,
    ensure_mount_points,
    plan_mounts,
    volume_files,
)

POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "ns", "labels": {"a": "1"}},
    "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "2"}}}]},
}
TOKENS: list[tuple[str, int]] = []


def _token(audience: str, expiration: int) -> str:
    TOKENS.append((audience, expiration))
    return f"token-for-{audience or 'api'}"


def _lookup(store: dict[str, dict[str, bytes]]) -> Any:
    def get(name: str) -> Mapping[str, bytes] | None:
        return store.get(name)

    return get


SOURCES = VolumeSources(
    facts=PodFacts(POD, "10.213.0.9", "10.213.0.1", "node-0"),
    get_secret=_lookup({"s": {"password": b"pw", "user": b"u"}}),
    get_configmap=_lookup({"cm": {"config.yaml": b"lr: 1", "other": b"x"}}),
    get_token=_token,
    ca_bytes=b"CA PEM",
)


def test_kube_api_access_volume() -> None:
    # What the ServiceAccount admission plugin adds to every pod.
    volume = {
        "name": "kube-api-access-abcde",
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }
    files = volume_files(volume, SOURCES)
    assert files == {
        "token": (b"token-for-api", 0o644),
        "ca.crt": (b"CA PEM", 0o644),
        "namespace": (b"ns", 0o644),
    }
    assert TOKENS[-1] == ("", 3607)


def test_configmap_and_secret_volumes() -> None:
    cm = volume_files({"name": "v", "configMap": {"name": "cm"}}, SOURCES)
    assert cm == {"config.yaml": (b"lr: 1", DEFAULT_MODE), "other": (b"x", DEFAULT_MODE)}
    items = {
        "name": "v",
        "secret": {
            "secretName": "s",
            "defaultMode": 0o400,
            "items": [
                {"key": "password", "path": "sub/pw"},
                {"key": "user", "path": "u", "mode": 0o600},
            ],
        },
    }
    assert volume_files(items, SOURCES) == {"sub/pw": (b"pw", 0o400), "u": (b"u", 0o600)}


def test_missing_objects() -> None:
    with pytest.raises(VolumeError, match="not found"):
        volume_files({"name": "v", "secret": {"secretName": "nope"}}, SOURCES)
    assert (
        volume_files({"name": "v", "secret": {"secretName": "nope", "optional": True}}, SOURCES)
        == {}
    )
    bad_key = {"name": "v", "configMap": {"name": "cm", "items": [{"key": "k", "path": "k"}]}}
    with pytest.raises(VolumeError, match="key 'k'"):
        volume_files(bad_key, SOURCES)


def test_paths_cannot_escape_the_volume() -> None:
    escape = {"name": "v", "configMap": {"name": "cm", "items": [{"key": "other", "path": "../x"}]}}
    with pytest.raises(VolumeError, match="inside the volume"):
        volume_files(escape, SOURCES)


def test_downward_api_volume() -> None:
    volume = {
        "name": "info",
        "downwardAPI": {
            "items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {
                    "path": "cpu",
                    "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu"},
                },
            ]
        },
    }
    assert volume_files(volume, SOURCES) == {
        "labels": (b'a="1"', DEFAULT_MODE),
        "cpu": (b"2", DEFAULT_MODE),
    }


def test_empty_dir_and_unsupported() -> None:
    assert volume_files({"name": "scratch", "emptyDir": {}}, SOURCES) is None
    with pytest.raises(VolumeError, match="unsupported"):
        volume_files({"name": "data", "persistentVolumeClaim": {"claimName": "c"}}, SOURCES)


def test_plan_mounts(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.yaml").write_text("lr: 1")
    volumes = [
        {"name": "cfg", "configMap": {"name": "cm"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "host", "hostPath": {"path": "/srv/data"}},
    ]
    container = {
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/work/scratch/"},
            {"name": "cfg", "mountPath": "/etc/app/config.yaml", "subPath": "config.yaml"},
            {"name": "scratch", "mountPath": "/work", "readOnly": True},
            {"name": "host", "mountPath": "/data"},
        ]
    }
    mounts = plan_mounts(container, volumes, tmp_path)
    by_target = {m.target: m for m in mounts}
    assert [m.target for m in mounts].index("/work") < [m.target for m in mounts].index(
        "/work/scratch"
    )
    cfg = by_target["/etc/app/config.yaml"]
    assert (cfg.source, cfg.is_file, cfg.read_only) == (
        str(tmp_path / "cfg" / "config.yaml"),
        True,
        True,
    )
    assert by_target["/work"].read_only
    assert not by_target["/work/scratch"].read_only
    assert by_target["/data"].source == "/srv/data"
    with pytest.raises(VolumeError, match="names no volume"):
        plan_mounts({"volumeMounts": [{"name": "x", "mountPath": "/x"}]}, volumes, tmp_path)


def test_ensure_mount_points_creates_only_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").write_text("x")
    mounts = [
        Mount("/src/a", str(tmp_path / "etc" / "hosts"), False, True),
        Mount("/src/b", str(tmp_path / "var" / "run" / "secrets"), True, False),
        Mount("/src/c", str(tmp_path / "dev" / "termination-log"), False, True),
    ]
    created = ensure_mount_points(mounts)
    assert created == [
        tmp_path / "var",
        tmp_path / "var" / "run",
        tmp_path / "var" / "run" / "secrets",
        tmp_path / "dev",
        tmp_path / "dev" / "termination-log",
    ]
    assert (tmp_path / "etc" / "hosts").read_text() == "x"  # existing target untouched
    assert (tmp_path / "dev" / "termination-log").is_file()
    assert ensure_mount_points(mounts) == []
