"""Container environment and `$(VAR)` expansion, following the kubelet's rules.

Pure functions: the API lookups (Secrets, ConfigMaps) are passed in as callables,
so the rules can be unit-tested without a cluster.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# name -> the object's `data` (values base64-encoded for Secrets), or None when absent.
ObjectLookup = Callable[[str], Mapping[str, str] | None]

_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
# envFrom skips keys that are not valid variable names (the kubelet emits an event instead).
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class EnvError(RuntimeError):
    """A referenced Secret, ConfigMap or key is missing and not optional."""


@dataclass(frozen=True)
class PodFacts:
    """What the downward API can see of a pod beyond its manifest."""

    pod: Mapping[str, Any]
    pod_ip: str
    host_ip: str
    node_name: str


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand `$(VAR)` references the way Kubernetes does.

    `$$` is an escaped `$`; a reference to an undefined variable, or an unclosed
    `$(`, stays as written.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            advance = 1
            if nxt == "$":
                out.append("$")
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                else:
                    name = text[cursor + 2 : close]
                    out.append(env.get(name, f"$({name})"))
                    advance = close - cursor
            else:
                out.append("$" + nxt)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def field_value(facts: PodFacts, path: str) -> str:
    """The value of a downward-API fieldRef path."""
    meta = facts.pod.get("metadata", {})
    spec = facts.pod.get("spec", {})
    simple: dict[str, str] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName") or facts.node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": facts.pod_ip,
        "status.podIPs": facts.pod_ip,
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
    }
    if path in simple:
        return simple[path]
    match = _LABEL_REF.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise EnvError(f"unsupported fieldRef fieldPath {path!r}")


_SUFFIXES = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(text: str) -> float:
    """A resource quantity ("500m", "8Gi", "2") as a number."""
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise EnvError(f"not a resource quantity: {text!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def resource_value(
    container: Mapping[str, Any], resource: str, divisor: str | None, node_allocatable: str
) -> str:
    """resourceFieldRef: the limit (falling back to node allocatable) or request, rounded up."""
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    if kind == "limits":
        raw = (resources.get("limits") or {}).get(name, node_allocatable)
    elif kind == "requests":
        raw = (resources.get("requests") or {}).get(name, "0")
    else:
        raise EnvError(f"unsupported resourceFieldRef {resource!r}")
    value = parse_quantity(raw) / parse_quantity(divisor or "1")
    return str(math.ceil(value - 1e-9))


def _decode(data: Mapping[str, str], key: str, is_secret: bool) -> str:
    raw = data[key]
    return base64.b64decode(raw).decode() if is_secret else raw


def _key_ref(
    ref: Mapping[str, Any], lookup: ObjectLookup, is_secret: bool, what: str
) -> str | None:
    optional = bool(ref.get("optional", False))
    data = lookup(ref["name"])
    if data is None:
        if optional:
            return None
        raise EnvError(f"{what} {ref['name']!r} not found")
    if ref["key"] not in data:
        if optional:
            return None
        raise EnvError(f"key {ref['key']!r} not found in {what} {ref['name']!r}")
    return _decode(data, ref["key"], is_secret)


def build_env(
    container: Mapping[str, Any],
    facts: PodFacts,
    *,
    base_env: Mapping[str, str],
    get_secret: ObjectLookup,
    get_configmap: ObjectLookup,
    node_cpu: str = "1",
    node_memory: str = "1Gi",
) -> dict[str, str]:
    """The environment of one container, in the kubelet's order.

    `base_env` plays the role of the service environment: lowest precedence, but
    visible to `$(VAR)` expansion. envFrom comes next (not expanded), then `env`
    entries in order, each expanded against everything defined before it.
    """
    defined: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, lookup, is_secret in (
            ("configMapRef", get_configmap, False),
            ("secretRef", get_secret, True),
        ):
            ref = source.get(kind)
            if ref is None:
                continue
            data = lookup(ref["name"])
            if data is None:
                if ref.get("optional", False):
                    continue
                raise EnvError(f"{kind} {ref['name']!r} not found")
            for key in sorted(data):
                name = prefix + key
                if _ENV_NAME.match(name):
                    defined[name] = _decode(data, key, is_secret)

    allocatable = {"cpu": node_cpu, "memory": node_memory}
    for entry in container.get("env") or []:
        name = entry["name"]
        if "value" in entry or "valueFrom" not in entry:
            defined[name] = expand(entry.get("value", ""), {**base_env, **defined})
            continue
        source = entry["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_value(facts, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            resource = ref["resource"]
            value = resource_value(
                container,
                resource,
                ref.get("divisor"),
                allocatable.get(resource.split(".")[-1], "0"),
            )
        elif "secretKeyRef" in source:
            value = _key_ref(source["secretKeyRef"], get_secret, True, "secret")
        elif "configMapKeyRef" in source:
            value = _key_ref(source["configMapKeyRef"], get_configmap, False, "configmap")
        else:
            raise EnvError(f"unsupported valueFrom in env {name!r}: {sorted(source)}")
        if value is not None:
            defined[name] = value
    return {**base_env, **defined}


def expand_command(
    command: Sequence[str] | None,
    args: Sequence[str] | None,
    env: Mapping[str, str],
    entrypoint: Sequence[str] | None = None,
) -> list[str]:
    """command + args with `$(VAR)` expanded; without a command, the image's `entrypoint`
    (known only for the project's own images) runs with the args, as in a runtime."""
    command = command or entrypoint
    argv = [expand(part, env) for part in [*(command or []), *(args or [])]]
    if not command:
        # There is no image to supply an entrypoint: the process kubelet runs commands only.
        raise EnvError("container has no command (images are not run by the process kubelet)")
    return argv
