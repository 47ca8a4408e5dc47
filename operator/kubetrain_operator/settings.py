"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from kubetrain_core.names import PREFIX

TORCHRUN = ("python", "-m", "torch.distributed.run")
# Prometheus, in whatever namespace it runs (the chart's networkPolicy.metricsPeers).
DEFAULT_METRICS_PEERS: tuple[dict[str, Any], ...] = (
    {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    },
)


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in os.environ.get(name, "").split(",") if v.strip())


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class Settings:
    default_image: str = "ghcr.io/kubetrain/kubetrain-trainer:0.1.0"
    """Trainer image for jobs whose spec.image is empty."""
    torchrun: list[str] = field(default_factory=lambda: list(TORCHRUN))
    """How the worker container starts torchrun (KUBETRAIN_TORCHRUN, shell-split). The module
    form needs only `python` on PATH, so it works in any image with torch installed."""
    working_dir: str | None = None
    """workingDir of trainer containers (KUBETRAIN_WORKING_DIR); None keeps the image's
    WORKDIR, which holds examples/ so relative data paths resolve."""
    default_checkpoint_uri: str | None = None
    """Base URI for jobs without spec.checkpoint.uri; the job gets <base>/<namespace>/<name>."""
    default_s3_endpoint: str | None = None
    """S3 endpoint used with the default checkpoint URI."""
    default_credentials_secret: str | None = None
    """Secret (in the job's namespace) with S3 credentials for the default checkpoint URI."""
    annotation_prefix: str = PREFIX
    """kopf keeps its handler progress in annotations under this prefix."""
    finalizer: str = f"{PREFIX}/finalizer"
    reconcile_interval_seconds: float = 5.0
    """Level-based resync period of every job (pod events trigger reconciles in between)."""
    restart_backoff_seconds: int = 5
    """First gang-restart delay; doubles with each restart up to restart_backoff_max_seconds."""
    restart_backoff_max_seconds: int = 300
    workers: int = 16
    """Threads that run reconciles (KUBETRAIN_WORKERS): kopf's handler threads, and half
    as many for pod events. A reconcile mostly waits for the API server, so more threads
    than cores keep the API server busy; one job never holds more than one."""
    progress_timeout_seconds: float = 2.0
    """Timeout of one read of rank 0's /progress."""
    network_policy: bool = True
    """Give each job a NetworkPolicy (KUBETRAIN_NETWORK_POLICY): its pods reach each other
    on any port, the operator and metrics_peers reach the metrics port, nobody else."""
    metrics_peers: tuple[dict[str, Any], ...] = DEFAULT_METRICS_PEERS
    """NetworkPolicyPeers that may scrape rank 0 (KUBETRAIN_METRICS_PEERS, a JSON list)."""
    operator_namespace: str = "kubetrain-system"
    """The operator's own namespace (POD_NAMESPACE): its pods may read /progress."""
    extra_pod_fields: tuple[str, ...] = ()
    """Pod spec fields jobs may set beyond pod_policy.POD_FIELDS (KUBETRAIN_EXTRA_POD_FIELDS,
    comma-separated): a cluster admin's widening, e.g. serviceAccountName."""
    extra_volume_types: tuple[str, ...] = ()
    """Volume types beyond pod_policy.VOLUME_TYPES (KUBETRAIN_EXTRA_VOLUME_TYPES), e.g. nfs."""
    allow_secret_env: bool = False
    """Whether jobs may read Secrets into env with valueFrom.secretKeyRef
    (KUBETRAIN_ALLOW_SECRET_ENV=true)."""
    failure_settle_seconds: int = 50
    """After a worker fails with a plain error while its peers still look alive, wait up to
    this long (KUBETRAIN_FAILURE_SETTLE_SECONDS) for the peers to exit or their node to turn
    NotReady, so a dead node is recorded as NodeFailure and not as the peer's error. Match
    the controller-manager's --node-monitor-grace-period (50 s by default)."""
    nccl_env: dict[str, str] = field(default_factory=dict)
    """Environment for the workers of GPU jobs (KUBETRAIN_NCCL_ENV, a JSON object): the
    cluster's NCCL network facts, e.g. NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_IB_GID_INDEX;
    over builders.NCCL_DEFAULTS, under a job's own spec.env."""
    notify_allow_private: bool = False
    """Whether spec.notifications may post to a webhook whose host resolves to a
    loopback, private, link-local or other non-public address
    (KUBETRAIN_NOTIFY_ALLOW_PRIVATE=true): off, a tenant cannot make the operator POST
    into the cluster's or the cloud's internal network."""

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            default_image=env.get("KUBETRAIN_DEFAULT_IMAGE", cls.default_image),
            torchrun=shlex.split(env.get("KUBETRAIN_TORCHRUN", shlex.join(TORCHRUN))),
            working_dir=env.get("KUBETRAIN_WORKING_DIR") or None,
            default_checkpoint_uri=env.get("KUBETRAIN_DEFAULT_CHECKPOINT_URI") or None,
            default_s3_endpoint=env.get("KUBETRAIN_DEFAULT_S3_ENDPOINT") or None,
            default_credentials_secret=env.get("KUBETRAIN_DEFAULT_CREDENTIALS_SECRET") or None,
            reconcile_interval_seconds=float(env.get("KUBETRAIN_RECONCILE_INTERVAL", "5")),
            restart_backoff_seconds=_env_int("KUBETRAIN_RESTART_BACKOFF_SECONDS", 5),
            restart_backoff_max_seconds=_env_int("KUBETRAIN_RESTART_BACKOFF_MAX_SECONDS", 300),
            failure_settle_seconds=_env_int("KUBETRAIN_FAILURE_SETTLE_SECONDS", 50),
            workers=max(1, _env_int("KUBETRAIN_WORKERS", 16)),
            network_policy=env.get("KUBETRAIN_NETWORK_POLICY", "true").lower() != "false",
            metrics_peers=tuple(json.loads(env["KUBETRAIN_METRICS_PEERS"]))
            if env.get("KUBETRAIN_METRICS_PEERS")
            else DEFAULT_METRICS_PEERS,
            operator_namespace=env.get("POD_NAMESPACE", "kubetrain-system"),
            extra_pod_fields=_env_list("KUBETRAIN_EXTRA_POD_FIELDS"),
            extra_volume_types=_env_list("KUBETRAIN_EXTRA_VOLUME_TYPES"),
            allow_secret_env=env.get("KUBETRAIN_ALLOW_SECRET_ENV", "").lower() == "true",
            notify_allow_private=env.get("KUBETRAIN_NOTIFY_ALLOW_PRIVATE", "").lower() == "true",
            nccl_env={
                str(k): str(v) for k, v in json.loads(env.get("KUBETRAIN_NCCL_ENV") or "{}").items()
            },
        )
