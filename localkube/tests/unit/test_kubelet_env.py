"""Environment building and $(VAR) expansion of the process kubelet."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import pytest

from localkube.kubelet.env import (
    EnvError,
    PodFacts,
    build_env,
    expand,
    expand_command,
    field_value,
    parse_quantity,
)

POD: dict[str, Any] = {
    "metadata": {
        "name": "job-0",
        "namespace": "team",
        "uid": "u-1",
        "labels": {"app": "train", "rank": "0"},
        "annotations": {"note": "hi"},
    },
    "spec": {"nodeName": "node-1", "serviceAccountName": "trainer"},
}
FACTS = PodFacts(POD, pod_ip="10.213.0.7", host_ip="10.213.0.1", node_name="node-1")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


SECRETS: dict[str, dict[str, str]] = {"creds": {"user": _b64("alice"), "pass": _b64("s3cret")}}
CONFIGMAPS: dict[str, dict[str, str]] = {"cfg": {"LR": "0.1", "bad key": "x", "MODE": "fast"}}


def _secret(name: str) -> Mapping[str, str] | None:
    return SECRETS.get(name)


def _configmap(name: str) -> Mapping[str, str] | None:
    return CONFIGMAPS.get(name)


def _env(container: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    return build_env(
        container,
        FACTS,
        base_env=base or {},
        get_secret=_secret,
        get_configmap=_configmap,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "1-two"),
        ("$$(A)", "$(A)"),  # escaped reference stays literal
        ("$$$(A)", "$1"),
        ("$(MISSING)", "$(MISSING)"),  # undefined: left as written
        ("$(A", "$(A"),  # unclosed
        ("cost $5", "cost $5"),
        ("trailing $", "trailing $"),
        ("$()", "$()"),
        ("no refs", "no refs"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "two"}) == expected


def test_field_refs() -> None:
    assert field_value(FACTS, "metadata.name") == "job-0"
    assert field_value(FACTS, "metadata.namespace") == "team"
    assert field_value(FACTS, "status.podIP") == "10.213.0.7"
    assert field_value(FACTS, "status.hostIP") == "10.213.0.1"
    assert field_value(FACTS, "spec.nodeName") == "node-1"
    assert field_value(FACTS, "spec.serviceAccountName") == "trainer"
    assert field_value(FACTS, "metadata.labels['rank']") == "0"
    assert field_value(FACTS, "metadata.annotations['note']") == "hi"
    assert field_value(FACTS, "metadata.labels['absent']") == ""
    with pytest.raises(EnvError):
        field_value(FACTS, "spec.bogus")


def test_env_order_and_expansion() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {
                "name": "RANK_LABEL",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['rank']"}},
            },
            {"name": "ADDR", "value": "$(POD_IP):29400"},  # POD_IP defined later: not expanded
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(POD_IP):$(PORT)/$(CFG_LR)"},
            {"name": "USER", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
            {"name": "EMPTY"},
        ],
    }
    env = _env(container, base={"PORT": "8080", "PATH": "/bin"})
    assert env["CFG_LR"] == "0.1"
    assert "CFG_bad key" not in env  # invalid variable names from envFrom are skipped
    assert env["RANK_LABEL"] == "0"
    assert env["ADDR"] == "$(POD_IP):29400"
    assert env["URL"] == "http://10.213.0.7:8080/0.1"
    assert env["USER"] == "alice"
    assert env["MODE"] == "fast"
    assert env["EMPTY"] == ""
    assert env["PATH"] == "/bin"


def test_container_env_overrides_base_env() -> None:
    env = _env({"env": [{"name": "PATH", "value": "/opt/bin:$(PATH)"}]}, base={"PATH": "/bin"})
    assert env["PATH"] == "/opt/bin:/bin"


def test_secret_env_from_is_decoded() -> None:
    env = _env({"envFrom": [{"secretRef": {"name": "creds"}}]})
    assert env["pass"] == "s3cret"


def test_missing_references() -> None:
    missing_secret = {
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "no", "key": "k"}}}]
    }
    with pytest.raises(EnvError, match="not found"):
        _env(missing_secret)
    missing_key = {
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]
    }
    with pytest.raises(EnvError, match="key 'k'"):
        _env(missing_key)
    optional = {
        "env": [
            {
                "name": "X",
                "valueFrom": {"secretKeyRef": {"name": "no", "key": "k", "optional": True}},
            }
        ],
        "envFrom": [{"configMapRef": {"name": "none", "optional": True}}],
    }
    assert "X" not in _env(optional)
    with pytest.raises(EnvError):
        _env({"envFrom": [{"configMapRef": {"name": "none"}}]})


def test_resource_field_ref_rounds_up() -> None:
    container = {
        "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}},
        "env": [
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {
                "name": "MEM_MI",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
        ],
    }
    env = _env(container)
    assert env["CPU"] == "2"
    assert env["MEM_MI"] == "1024"


def test_parse_quantity() -> None:
    assert parse_quantity("500m") == 0.5
    assert parse_quantity("8Gi") == 8 * 2**30
    assert parse_quantity("2") == 2
    with pytest.raises(EnvError):
        parse_quantity("8 gigs")


def test_expand_command() -> None:
    env = {"N": "2", "EP": "job-0.job:29400"}
    argv = expand_command(["torchrun", "--nnodes=$(N)"], ["--rdzv-endpoint=$(EP)", "$$(N)"], env)
    assert argv == ["torchrun", "--nnodes=2", "--rdzv-endpoint=job-0.job:29400", "$(N)"]
    with pytest.raises(EnvError, match="no command"):
        expand_command(None, ["x"], env)
