"""metrics.wandb and metrics.webhook: defaults, bounds, the rejected values, the CRD."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubetrain_core import crd
from kubetrain_core.config import (
    ConfigError,
    MetricsConfig,
    WandbConfig,
    WebhookConfig,
    parse_config,
)

MINIMAL: dict[str, Any] = {"data": {"path": "corpus.txt"}, "training": {"max_steps": 10}}


def errors_of(metrics: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({**MINIMAL, "metrics": metrics})
    return info.value.errors


def test_both_are_off_by_default_and_hold_no_secret() -> None:
    metrics = parse_config(MINIMAL).metrics
    assert metrics.wandb == WandbConfig()
    assert metrics.webhook == WebhookConfig()
    assert (metrics.wandb.enabled, metrics.wandb.project, metrics.wandb.mode) == (
        False,
        "kubetrain",
        "online",
    )
    assert (metrics.wandb.entity, metrics.wandb.group, metrics.wandb.tags) == (None, None, [])
    hook = metrics.webhook
    assert (hook.enabled, hook.url_env, hook.format) == (False, "KUBETRAIN_WEBHOOK_URL", "discord")
    assert hook.events == ["start", "evaluation", "rollback", "failed", "finished"]
    assert (hook.timeout_seconds, hook.max_attempts) == (5.0, 3)
    # No field could hold the key or the URL.
    assert not {"api_key", "key", "token"} & WandbConfig.model_fields.keys()
    assert "url" not in WebhookConfig.model_fields


def test_sections_parse_from_yaml_values() -> None:
    metrics = parse_config(
        {
            **MINIMAL,
            "metrics": {
                "wandb": {"enabled": True, "mode": "offline", "entity": "team", "tags": ["a"]},
                "webhook": {"enabled": True, "format": "slack", "events": ["failed"]},
            },
        }
    ).metrics
    assert metrics.wandb.mode == "offline" and metrics.wandb.tags == ["a"]
    assert metrics.webhook.format == "slack" and metrics.webhook.events == ["failed"]


@pytest.mark.parametrize(
    ("metrics", "field"),
    [
        ({"webhook": {"events": ["start", "deploy"]}}, "metrics.webhook.events.1"),
        ({"webhook": {"format": "teams"}}, "metrics.webhook.format"),
        ({"webhook": {"url": "https://hooks.example/x"}}, "metrics.webhook.url"),
        ({"webhook": {"url_env": "https://hooks.example/x"}}, "metrics.webhook.url_env"),
        ({"webhook": {"url_env": ""}}, "metrics.webhook.url_env"),
        ({"webhook": {"timeout_seconds": 0}}, "metrics.webhook.timeout_seconds"),
        ({"webhook": {"timeout_seconds": 61}}, "metrics.webhook.timeout_seconds"),
        ({"webhook": {"max_attempts": 0}}, "metrics.webhook.max_attempts"),
        ({"webhook": {"max_attempts": 11}}, "metrics.webhook.max_attempts"),
        ({"webhook": {"events": ["start"] * 6}}, "metrics.webhook.events"),
        ({"wandb": {"mode": "disabled"}}, "metrics.wandb.mode"),
        ({"wandb": {"api_key": "x" * 40}}, "metrics.wandb.api_key"),
        ({"wandb": {"project": ""}}, "metrics.wandb.project"),
        ({"wandb": {"project": "a/b"}}, "metrics.wandb.project"),
        ({"wandb": {"project": "p" * 129}}, "metrics.wandb.project"),
        ({"wandb": {"tags": ["t" * 65]}}, "metrics.wandb.tags.0"),
        ({"wandb": {"tags": [f"t{i}" for i in range(33)]}}, "metrics.wandb.tags"),
    ],
)
def test_out_of_bounds_and_unknown_values_name_their_field(
    metrics: dict[str, Any], field: str
) -> None:
    errors = errors_of(metrics)
    assert any(e.startswith(f"{field}:") for e in errors), errors


def test_the_edges_of_the_bounds_are_accepted() -> None:
    hook = WebhookConfig(timeout_seconds=60, max_attempts=10, events=["rollback"])
    assert (hook.timeout_seconds, hook.max_attempts) == (60.0, 10)
    assert WandbConfig(project="p" * 128, tags=["t" * 64] * 32).tags[0] == "t" * 64
    with pytest.raises(ValidationError):
        WebhookConfig(timeout_seconds=0.05)


def test_the_crd_bounds_and_describes_them() -> None:
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    metrics = schema["properties"]["spec"]["properties"]["trainer"]["properties"]["metrics"]
    wandb = metrics["properties"]["wandb"]["properties"]
    hook = metrics["properties"]["webhook"]["properties"]
    assert wandb["project"]["maxLength"] == 128 and wandb["tags"]["maxItems"] == 32
    assert wandb["tags"]["items"]["maxLength"] == 64
    assert wandb["mode"]["enum"] == ["online", "offline"]
    assert hook["events"]["items"]["enum"] == [
        "start",
        "evaluation",
        "rollback",
        "failed",
        "finished",
    ]
    assert hook["max_attempts"]["maximum"] == 10 and hook["timeout_seconds"]["maximum"] == 60
    assert "WANDB_API_KEY" in metrics["properties"]["wandb"]["description"]
    assert "environment variable" in hook["url_env"]["description"]
    assert MetricsConfig.model_fields["webhook"].default == WebhookConfig()
