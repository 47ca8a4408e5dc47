"""values.schema.json from the typed values (values.py) and values.yaml's comments.

Types, bounds and enums come from the model; each key's description is its `# --`
comment in values.yaml (the helm-docs convention), so the text a user reads beside
a default is the text `helm install` errors and editors show. A key without a
comment, or a key the model does not have, is an error here.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import yaml

from kubetrain_chart.values import ChartValues

Schema = dict[str, Any]
_KEY = re.compile(r"^([A-Za-z0-9_]+):")


def descriptions(values_yaml: str) -> dict[str, str]:
    """Dotted key path -> the `# --` comment (and its continuation lines) above it."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    pending_indent = -1
    for line in values_yaml.splitlines():
        text = line.lstrip()
        indent = len(line) - len(text)
        if text.startswith("# -- "):
            pending, pending_indent = [text[5:].strip()], indent
        elif text.startswith("#") and pending and indent == pending_indent:
            pending.append(text[1:].strip())
        elif match := _KEY.match(text):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(1)))
            if pending:
                found[".".join(key for _, key in stack)] = " ".join(pending)
            pending = []
        else:
            pending = []
    return found


def _inline(node: Any, defs: Schema) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return _inline({**target, **rest}, defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _describe(node: Schema, path: str, texts: dict[str, str], missing: list[str]) -> None:
    """Give every property its description, keyed after its type (a readable file)."""
    for key, prop in (node.get("properties") or {}).items():
        dotted = f"{path}.{key}" if path else key
        if dotted not in texts:
            missing.append(dotted)
        described = {**prop, "description": texts.get(dotted, "")}
        head = [k for k in ("type", "description") if k in described]
        node["properties"][key] = {
            k: described[k] for k in head + sorted(k for k in described if k not in head)
        }
        _describe(node["properties"][key], dotted, texts, missing)


def schema(values_yaml: str) -> Schema:
    ChartValues.model_validate(yaml.safe_load(values_yaml))  # values.yaml fits the model
    raw = ChartValues.model_json_schema()
    body: Schema = _inline(raw, raw.pop("$defs", {}))
    missing: list[str] = []
    _describe(body, "", descriptions(values_yaml), missing)
    if missing:
        raise ValueError(f"values.yaml keys without a `# --` comment: {', '.join(missing)}")
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "kubetrain Helm chart values (generated from hack/kubetrain_chart)",
        **body,
    }


def render(values_yaml: str) -> str:
    return json.dumps(schema(values_yaml), indent=2) + "\n"
