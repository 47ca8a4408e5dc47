"""The CRD generator: structural, bounded, described, and in sync with crds/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain_core import crd
from kubetrain_core.api import TrainingJob

ROOT = Path(__file__).resolve().parents[2]


def _spec_and_status() -> tuple[dict[str, Any], dict[str, Any]]:
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"], schema["properties"]["status"]


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_every_field_has_a_description() -> None:
    spec, status = _spec_and_status()
    missing = [
        path
        for root, name in ((spec, "spec"), (status, "status"))
        for path, node in _walk(root, name)
        for child, sub in node.get("properties", {}).items()
        if not sub.get("description")
        and f"{path}.{child}" not in ("spec.trainer.optimization.optimizer.betas[]",)
    ]
    assert missing == []


def test_every_string_number_and_list_is_bounded() -> None:
    spec, status = _spec_and_status()
    unbounded = []
    for root, name in ((spec, "spec"), (status, "status")):
        for path, node in _walk(root, name):
            kind = node.get("type")
            if kind == "string" and "maxLength" not in node and "enum" not in node:
                unbounded.append(path)
            elif (
                kind in ("integer", "number")
                and not {"minimum", "maximum"} <= node.keys()
                and "enum" not in node
            ):
                if not path.endswith("betas[]"):  # betas are bounded by a CEL rule
                    unbounded.append(path)
            elif (kind == "array" and "maxItems" not in node) or (
                kind == "object" and "additionalProperties" in node and "maxProperties" not in node
            ):
                unbounded.append(path)
    assert unbounded == []


def test_schema_is_structural() -> None:
    """No $ref, no titles, no type inside anyOf except the int-or-string pair, a type or
    an explicit escape hatch on every node."""
    text = crd.render()
    assert "$ref" not in text and "title:" not in text
    spec, status = _spec_and_status()
    for root, name in ((spec, "spec"), (status, "status")):
        for path, node in _walk(root, name):
            escapes = {"x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields"}
            assert "type" in node or escapes & node.keys(), path
            assert not ("properties" in node and "additionalProperties" in node), path
            if "anyOf" in node:
                assert node.get("x-kubernetes-int-or-string") is True, path
                assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path


def test_nullable_replaces_null_alternatives() -> None:
    spec, _ = _spec_and_status()
    image = spec["properties"]["image"]
    assert image["type"] == "string" and image["nullable"] is True


def test_trainer_config_is_embedded_with_its_descriptions() -> None:
    spec, _ = _spec_and_status()
    trainer = spec["properties"]["trainer"]
    assert trainer["required"] == ["data", "training"]
    lr = trainer["properties"]["optimization"]["properties"]["optimizer"]["properties"]["lr"]
    assert lr["description"] == "Peak learning rate."
    assert lr["exclusiveMinimum"] is True and lr["minimum"] == 0.0


def test_cel_rules_cover_cross_field_checks() -> None:
    spec, _ = _spec_and_status()
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("nvidia.com/gpu" in r and "numProcPerNode" in r for r in rules)
    numnodes = spec["properties"]["numNodes"]["x-kubernetes-validations"]
    assert {"rule": "self == oldSelf"} | numnodes[0] == numnodes[0]
    ckpt = spec["properties"]["checkpoint"]
    assert any("s3://" in r["rule"] for r in ckpt["x-kubernetes-validations"])


def test_status_conditions_are_a_map_list_and_subresource_is_on() -> None:
    version = crd.crd()["spec"]["versions"][0]
    _, status = _spec_and_status()
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["required"] == ["type", "status"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns_and_short_name() -> None:
    spec = crd.crd()["spec"]
    columns = {c["name"]: c["jsonPath"] for c in spec["versions"][0]["additionalPrinterColumns"]}
    assert columns["State"] == ".status.state"
    assert columns["Step"] == ".status.progress.step"
    assert columns["Loss"] == ".status.progress.loss"
    assert columns["Restarts"] == ".status.restarts.total"
    assert {"Nodes", "Age"} <= columns.keys()
    assert spec["names"]["shortNames"] == ["tj"]


def test_status_has_no_defaults_spec_keeps_scalar_defaults() -> None:
    spec, status = _spec_and_status()
    assert all("default" not in node for _, node in _walk(status))
    assert spec["properties"]["numNodes"]["default"] == 1
    assert all(not isinstance(n.get("default"), dict | list) for _, n in _walk(spec))


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("trainingjob*.yaml")))
def test_examples_validate_against_the_models(example: Path) -> None:
    job = TrainingJob.model_validate(yaml.safe_load(example.read_text()))
    assert len(job.metadata.name) <= crd.MAX_JOB_NAME
