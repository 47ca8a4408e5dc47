"""What a TrainingJob may put into its worker pods: the allow-list, and its checks (pure).

The operator creates pods with rights its tenants may not have, so a job gets less
than a pod author: scheduling fields, volumes of safe kinds, a few security context
fields that keep the pod restricted, image pull secrets. Everything else in
`spec.template.spec` (hostNetwork, hostPID, initContainers, serviceAccountName,
hostPath volumes, Secret volumes, ...) is refused, and so are env vars read from
Secrets, names the operator or torchrun own, and labels the operator relies on.

This module is the one home of those lists: the operator enforces them (a job that
breaks one fails with InvalidSpec naming the field), and `admission.py` turns them
into a ValidatingAdmissionPolicy, so `kubectl apply` already refuses it. A cluster
admin widens them with operator settings (Helm values under `admission`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kubetrain_core import cel
from kubetrain_core.names import PREFIX

# Pod spec fields a job may set (builders merge them into the operator's own spec).
POD_FIELDS = (
    "nodeSelector",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "priorityClassName",
    "schedulerName",
    "runtimeClassName",
    "imagePullSecrets",
    "terminationGracePeriodSeconds",
    "securityContext",
    "volumes",
    "volumeMounts",  # a convenience: mounts for the trainer container
)
# Fields an admin may add to POD_FIELDS (operator setting); never the operator's own.
OPERATOR_FIELDS = ("containers", "restartPolicy", "hostname", "subdomain")
VOLUME_TYPES = ("emptyDir", "configMap", "persistentVolumeClaim", "ephemeral", "downwardAPI")
PROJECTED_SOURCES = ("configMap", "downwardAPI")  # projected volumes of these only
# The pod security context stays restricted: a job may only pick its groups and ids.
SECURITY_CONTEXT_FIELDS = (
    "fsGroup",
    "fsGroupChangePolicy",
    "supplementalGroups",
    "runAsUser",
    "runAsGroup",
)
RESERVED_MOUNT_PATHS = ("/etc/kubetrain", "/tmp", "/dev/shm")  # /dev/shm: spec.shmSize
RESERVED_VOLUMES = ("kubetrain-config", "kubetrain-scratch", "kubetrain-shm")
# Env names the operator or torchrun set; the fault injection switch is the tenant's own.
RESERVED_ENV_PREFIXES = ("KUBETRAIN_", "PET_", "TORCHELASTIC_")
RESERVED_ENV_NAMES = (
    "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
    "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
)  # fmt: skip
ALLOWED_RESERVED_ENV = ("KUBETRAIN_FAULT_INJECT",)
# kueue.x-k8s.io/*: the operator makes each attempt's gang one Kueue pod group from the
# job's own kueue.x-k8s.io/queue-name label; a pod-level label would split the gang.
# scheduling.x-k8s.io/* (coscheduling's pod-group label) and scheduling.k8s.io/*
# (Volcano's group-name annotation): the PodGroup of spec.scheduling.gang.
GROUP_PREFIXES = ("kueue.x-k8s.io/", "scheduling.x-k8s.io/", "scheduling.k8s.io/")
RESERVED_LABEL_PREFIXES = (f"{PREFIX}/", *GROUP_PREFIXES)
RESERVED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
)
RESERVED_ANNOTATION_PREFIXES = (f"{PREFIX}/", *GROUP_PREFIXES)
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
RDZV_PORT = 29400  # torchrun's rendezvous on pod 0


@dataclass(frozen=True)
class Allowed:
    """The lists in force: the defaults plus what the cluster admin added."""

    pod_fields: frozenset[str] = frozenset(POD_FIELDS)
    volume_types: frozenset[str] = frozenset(VOLUME_TYPES)
    secret_env: bool = False  # env valueFrom.secretKeyRef

    @classmethod
    def widened(cls, pod_fields: list[str], volume_types: list[str], secret_env: bool) -> Allowed:
        extra = set(pod_fields) - set(OPERATOR_FIELDS)
        return cls(
            frozenset(POD_FIELDS) | extra, frozenset(VOLUME_TYPES) | set(volume_types), secret_env
        )


def reserved_env_cel(name: str) -> str:
    """CEL: the env var name `name` (an expression) is one the operator or torchrun sets."""
    reserved = cel.starts_with_any(name, RESERVED_ENV_PREFIXES, RESERVED_ENV_NAMES)
    return f"(!({name} in {cel.cel_list(ALLOWED_RESERVED_ENV)}) && {reserved})"


def reserved_env(name: str) -> bool:
    if name in ALLOWED_RESERVED_ENV:
        return False
    return name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES)


def reserved_label(key: str) -> bool:
    return key in RESERVED_LABELS or key.startswith(RESERVED_LABEL_PREFIXES)


def _volume_problems(volumes: Any, allowed: Allowed) -> list[str]:
    problems = []
    for i, volume in enumerate(volumes if isinstance(volumes, list) else []):
        where = f"spec.template.spec.volumes[{i}]"
        if not isinstance(volume, dict):
            problems.append(f"{where}: must be an object")
            continue
        if volume.get("name") in RESERVED_VOLUMES:
            problems.append(f"{where}.name: {volume['name']!r} is the operator's")
        kinds = [k for k in volume if k != "name"]
        for kind in kinds:
            if kind == "projected":
                sources = (volume[kind] or {}).get("sources") or []
                bad = {k for s in sources if isinstance(s, dict) for k in s} - set(
                    PROJECTED_SOURCES
                )
                if bad:
                    problems.append(f"{where}.projected: sources {sorted(bad)} are not allowed")
            elif kind not in allowed.volume_types:
                problems.append(
                    f"{where}.{kind}: volume type not allowed in a TrainingJob (allowed: "
                    f"{', '.join(sorted(allowed.volume_types | {'projected'}))})"
                )
    return problems


def _mount_problems(mounts: Any) -> list[str]:
    problems = []
    for i, mount in enumerate(mounts if isinstance(mounts, list) else []):
        where = f"spec.template.spec.volumeMounts[{i}]"
        if not isinstance(mount, dict):
            problems.append(f"{where}: must be an object")
            continue
        path = str(mount.get("mountPath", "")).rstrip("/")
        if any(
            path == p or path.startswith(f"{p}/") or p.startswith(f"{path}/")
            for p in RESERVED_MOUNT_PATHS
        ):
            shm = " (for a bigger /dev/shm set spec.shmSize)" if "/dev/shm" in path else ""
            problems.append(
                f"{where}.mountPath: {path!r} overlaps the operator's {RESERVED_MOUNT_PATHS}{shm}"
            )
        if mount.get("name") in RESERVED_VOLUMES:
            problems.append(f"{where}.name: {mount['name']!r} is the operator's")
        if mount.get("mountPropagation") not in (None, "None", "HostToContainer"):
            problems.append(f"{where}.mountPropagation: only None or HostToContainer")
    return problems


def _env_problems(env: list[dict[str, Any]], allowed: Allowed) -> list[str]:
    problems = []
    for i, var in enumerate(env):
        name = str(var.get("name", ""))
        if not ENV_NAME.match(name):
            problems.append(
                f"spec.env[{i}].name: {name!r} is not a valid environment variable name"
            )
        elif reserved_env(name):
            problems.append(f"spec.env[{i}].name: {name} is set by the operator or torchrun")
        source = var.get("valueFrom") or {}
        if isinstance(source, dict) and "secretKeyRef" in source and not allowed.secret_env:
            problems.append(
                f"spec.env[{i}].valueFrom.secretKeyRef: a job may not read Secrets into env "
                "(spec.checkpoint.s3.credentialsSecretName names the S3 credentials)"
            )
    return problems


def fixed_problems(spec: dict[str, Any]) -> list[str]:
    """What no setting allows: reserved env names, labels, annotations, mounts, root."""
    template = spec.get("template") or {}
    pod = template.get("spec") or {}
    found = _mount_problems(pod.get("volumeMounts"))
    context = pod.get("securityContext") or {}
    for key in ("runAsUser", "runAsGroup"):
        if isinstance(context, dict) and context.get(key) == 0:
            found.append(f"spec.template.spec.securityContext.{key}: must not be 0 (root)")
    found += _env_problems(spec.get("env") or [], Allowed(secret_env=True))
    meta = template.get("metadata") or {}
    found += [
        f"spec.template.metadata.labels.{key}: reserved for the operator{_instead(key)}"
        for key in meta.get("labels") or {}
        if reserved_label(key)
    ]
    found += [
        f"spec.template.metadata.annotations.{key}: reserved for the operator{_instead(key)}"
        for key in meta.get("annotations") or {}
        if key.startswith(RESERVED_ANNOTATION_PREFIXES)
    ]
    return found


def _instead(key: str) -> str:
    """What to write instead of a pod group's reserved label or annotation `key`."""
    if key.startswith("kueue.x-k8s.io/"):
        return " (label the TrainingJob with kueue.x-k8s.io/queue-name)"
    if key.startswith(GROUP_PREFIXES):
        return " (set spec.scheduling.gang: the operator makes the PodGroup)"
    return ""


def problems(spec: dict[str, Any], allowed: Allowed) -> list[str]:
    """Every way `spec` (the job's spec, as stored) breaks the lists, with field paths."""
    pod = (spec.get("template") or {}).get("spec") or {}
    found = [
        f"spec.template.spec.{key}: not allowed in a TrainingJob (allowed: "
        f"{', '.join(sorted(allowed.pod_fields))}); a cluster admin may allow more"
        for key in pod
        if key not in allowed.pod_fields
    ]
    found += _volume_problems(pod.get("volumes"), allowed)
    context = pod.get("securityContext") or {}
    found += [
        f"spec.template.spec.securityContext.{key}: not allowed (allowed: "
        f"{', '.join(SECURITY_CONTEXT_FIELDS)}); the pod stays restricted"
        for key in (context if isinstance(context, dict) else {})
        if key not in SECURITY_CONTEXT_FIELDS
    ]
    env = spec.get("env") or []
    if not allowed.secret_env:
        found += [p for p in _env_problems(env, allowed) if "secretKeyRef" in p]
    return found + fixed_problems(spec)
