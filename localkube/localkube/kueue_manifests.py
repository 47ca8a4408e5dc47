"""Kueue's release manifests as the local cluster uses them: its CRDs (the converted
ones served by its conversion webhook) and its webhook configurations, called by URL on
127.0.0.1 with the harness's CA, cut to Kueue's own kinds and the enabled frameworks.
tools/testbin.sh copies them beside the binary (`<testbin>/kueue-<version>/manifests/`).
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from localkube.binaries import MissingBinary, binary, install_dir

GROUP = "kueue.x-k8s.io"

# Framework -> the (API group, resource) its webhooks admit, where not "<group>/<kind>".
_FRAMEWORK_RESOURCES = {
    "pod": ("", "pods"),
    "deployment": ("apps", "deployments"),
    "statefulset": ("apps", "statefulsets"),
}
# Pod-based integrations: upstream's kustomization gives their webhooks the managed
# namespace selector, so pods in kube-system never wait on Kueue.
_POD_BASED = {"pods", "deployments", "statefulsets"}


def manifests_dir() -> Path:
    """The release's CRDs and webhook manifests: beside the binary, else in the cache."""
    for base in (binary("kueue").parent, install_dir("kueue")):
        if base is not None and (base / "manifests" / "webhook.yaml").is_file():
            return base / "manifests"
    raise MissingBinary("Kueue's manifests not found beside the binary: run `make testbin`")


def load(path: Path) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 20k lines
    return [doc for doc in yaml.load_all(path.read_text(), Loader=loader) if doc]


def client_config(url: str, ca_bundle: bytes) -> dict[str, Any]:
    return {"url": url, "caBundle": base64.b64encode(ca_bundle).decode()}


def converted_crds(kustomization: str) -> set[str]:
    """CRDs upstream serves through its conversion webhook (its active patches)."""
    found = re.findall(r"^- path: patches/webhook_in_(\w+)\.yaml", kustomization, re.MULTILINE)
    return {f"{plural}.{GROUP}" for plural in found}


def webhook_configurations(
    docs: Sequence[Mapping[str, Any]],
    ca_bundle: bytes,
    base_url: str,
    frameworks: Sequence[str],
    namespace_selector: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Upstream's webhook manifests, called by URL with our CA, cut to Kueue's own
    kinds and the enabled frameworks (a webhook nothing here serves would only add a
    way to fail), named as a release names them (`kueue-`)."""
    wanted = {
        _FRAMEWORK_RESOURCES.get(f) or (f.rpartition("/")[0], f"{f.rpartition('/')[2]}s")
        for f in frameworks
    }
    result = []
    for doc in docs:
        config = {
            **copy.deepcopy(dict(doc)),
            "metadata": {"name": f"kueue-{doc['metadata']['name']}"},
        }
        kept = []
        for hook in config["webhooks"]:
            rules = hook["rules"]
            targets = {
                (g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]
            }
            if not any(g == GROUP for g, _ in targets) and not targets & wanted:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = client_config(f"{base_url}{path}", ca_bundle)
            if {r for _, r in targets} & _POD_BASED:
                hook["namespaceSelector"] = namespace_selector
            kept.append(hook)
        result.append({**config, "webhooks": kept})
    return result
