"""Volumes of a process pod: what files each volume holds and where it is mounted.

Pure: API lookups are passed in. The kubelet writes the files under the pod's
state directory and the pod's init process bind-mounts them at their mountPaths
inside the pod's own mount namespace.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localkube.kubelet.env import EnvError, PodFacts, field_value, resource_value

# name -> {key: decoded bytes} (ConfigMap data + binaryData, or Secret data), None if absent.
BytesLookup = Callable[[str], Mapping[str, bytes] | None]
# (audience or "", expirationSeconds) -> a token bound to the pod.
TokenSource = Callable[[str, int], str]

DEFAULT_MODE = 0o644
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

Files = dict[str, tuple[bytes, int]]


class VolumeError(RuntimeError):
    """A volume cannot be set up (yet): missing object, unsupported type."""


@dataclass(frozen=True)
class Mount:
    """One bind mount inside the pod: host `source` appears at `target`."""

    source: str
    target: str
    read_only: bool
    is_file: bool


@dataclass(frozen=True)
class VolumeSources:
    """How the files of API-backed volumes are found."""

    facts: PodFacts
    get_secret: BytesLookup
    get_configmap: BytesLookup
    get_token: TokenSource
    ca_bytes: bytes


def _check_relative(path: str) -> str:
    norm = posixpath.normpath(path)
    if path.startswith("/") or norm == ".." or norm.startswith("../"):
        raise VolumeError(f"volume path {path!r} must be relative and stay inside the volume")
    return norm


def _key_files(
    data: Mapping[str, bytes] | None,
    spec: Mapping[str, Any],
    default_mode: int,
    what: str,
) -> Files:
    if data is None:
        if spec.get("optional", False):
            return {}
        raise VolumeError(f"{what} not found")
    items = spec.get("items")
    if not items:
        return {_check_relative(k): (v, default_mode) for k, v in data.items()}
    files: Files = {}
    for item in items:
        if item["key"] not in data:
            if spec.get("optional", False):
                continue
            raise VolumeError(f"key {item['key']!r} not found in {what}")
        files[_check_relative(item["path"])] = (data[item["key"]], item.get("mode", default_mode))
    return files


def _configmap_files(spec: Mapping[str, Any], sources: VolumeSources, default_mode: int) -> Files:
    name = spec["name"]
    if name == ROOT_CA_CONFIGMAP:
        # The harness knows its CA; no need to wait for the controller that publishes it.
        data: Mapping[str, bytes] | None = {"ca.crt": sources.ca_bytes}
    else:
        data = sources.get_configmap(name)
    return _key_files(data, spec, default_mode, f"configmap {name!r}")


def _downward_files(spec: Mapping[str, Any], sources: VolumeSources, default_mode: int) -> Files:
    files: Files = {}
    containers = (sources.facts.pod.get("spec") or {}).get("containers") or [{}]
    for item in spec.get("items") or []:
        try:
            if "fieldRef" in item:
                value = field_value(sources.facts, item["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in item:
                ref = item["resourceFieldRef"]
                container = next(
                    (c for c in containers if c.get("name") == ref.get("containerName")),
                    containers[0],
                )
                value = resource_value(container, ref["resource"], ref.get("divisor"), "0")
            else:
                raise VolumeError(f"unsupported downwardAPI item {sorted(item)}")
        except EnvError as err:
            raise VolumeError(str(err)) from err
        files[_check_relative(item["path"])] = (value.encode(), item.get("mode", default_mode))
    return files


def volume_files(volume: Mapping[str, Any], sources: VolumeSources) -> Files | None:
    """The files of one volume (relative path -> (content, mode)); None for a plain directory."""
    if "emptyDir" in volume or "hostPath" in volume:
        return None
    if "configMap" in volume:
        spec = volume["configMap"]
        return _configmap_files(spec, sources, spec.get("defaultMode", DEFAULT_MODE))
    if "secret" in volume:
        spec = volume["secret"]
        name = spec["secretName"]
        return _key_files(
            sources.get_secret(name),
            spec,
            spec.get("defaultMode", DEFAULT_MODE),
            f"secret {name!r}",
        )
    if "downwardAPI" in volume:
        spec = volume["downwardAPI"]
        return _downward_files(spec, sources, spec.get("defaultMode", DEFAULT_MODE))
    if "projected" in volume:
        spec = volume["projected"]
        mode = spec.get("defaultMode", DEFAULT_MODE)
        files: Files = {}
        for source in spec.get("sources") or []:
            if "serviceAccountToken" in source:
                tok = source["serviceAccountToken"]
                token = sources.get_token(
                    tok.get("audience", ""), int(tok.get("expirationSeconds", 3600))
                )
                files[_check_relative(tok["path"])] = (token.encode(), mode)
            elif "configMap" in source:
                files.update(_configmap_files(source["configMap"], sources, mode))
            elif "secret" in source:
                sec = source["secret"]
                files.update(
                    _key_files(
                        sources.get_secret(sec["name"]), sec, mode, f"secret {sec['name']!r}"
                    )
                )
            elif "downwardAPI" in source:
                files.update(_downward_files(source["downwardAPI"], sources, mode))
            else:
                raise VolumeError(f"unsupported projected source {sorted(source)}")
        return files
    kinds = sorted(k for k in volume if k != "name")
    raise VolumeError(f"volume {volume.get('name')!r}: unsupported type {kinds}")


def volume_source_dir(volume: Mapping[str, Any], volumes_dir: Path) -> Path:
    """Where a volume's content lives on the host."""
    if "hostPath" in volume:
        return Path(str(volume["hostPath"]["path"]))
    return volumes_dir / str(volume["name"])


def plan_mounts(
    container: Mapping[str, Any], volumes: Sequence[Mapping[str, Any]], volumes_dir: Path
) -> list[Mount]:
    """The container's volumeMounts as bind mounts, in order (parents before children)."""
    by_name = {v["name"]: v for v in volumes}
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        volume = by_name.get(vm["name"])
        if volume is None:
            raise VolumeError(f"volumeMount {vm['name']!r} names no volume of the pod")
        source = volume_source_dir(volume, volumes_dir)
        sub_path = vm.get("subPath") or ""
        if sub_path:
            source = source / _check_relative(sub_path)
        read_only = bool(vm.get("readOnly", False)) or any(
            kind in volume for kind in ("configMap", "secret", "downwardAPI", "projected")
        )
        # A subPath may name one file of the volume; otherwise it is a directory.
        is_file = bool(sub_path) and source.is_file()
        mounts.append(Mount(str(source), posixpath.normpath(vm["mountPath"]), read_only, is_file))
    mounts.sort(key=lambda m: m.target.count("/"))
    return mounts


def ensure_mount_points(mounts: list[Mount]) -> list[Path]:
    """Create missing mount points on the host; return what was created (parents first).

    A bind mount needs its target to exist. The pod's mount namespace shares the
    host's filesystem, so these empty files and directories appear on the host too;
    the kubelet removes them when it exits.
    """
    created: list[Path] = []
    for mount in mounts:
        target = Path(mount.target)
        missing: list[Path] = []
        parent = target if not mount.is_file else target.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            directory.mkdir(exist_ok=True)
            created.append(directory)
        if mount.is_file and not target.exists():
            target.touch()
            created.append(target)
    return created
