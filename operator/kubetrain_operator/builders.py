"""Pure builders: a TrainingJob -> the Kubernetes objects that run it (plain dicts).

No I/O. The reconciler decides *which* objects should exist; these functions
say *what* they look like. Pod names are fixed (`<job>-<index>`) so that a
create is idempotent: an operator restarted mid-way gets 409, never a twin.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import PurePosixPath
from typing import Any

from kubetrain_core import pod_policy
from kubetrain_core.api import RecoveryStatus, TrainingJob
from kubetrain_core.config import to_yaml
from kubetrain_core.contract import DEFAULT_TERMINATION_LOG, Env
from kubetrain_core.job_config import trainer_config
from kubetrain_core.names import GROUP, KIND, PREFIX, VERSION
from kubetrain_operator import gang, queueing
from kubetrain_operator.settings import Settings

Obj = dict[str, Any]

JOB_LABEL = f"{PREFIX}/job-name"
INDEX_LABEL = f"{PREFIX}/replica-index"
ATTEMPT_LABEL = f"{PREFIX}/attempt"
RDZV_PORT = pod_policy.RDZV_PORT
CONFIG_DIR = "/etc/kubetrain"
CONFIG_FILE = "trainer.yaml"
CONTAINER = "trainer"
# The trainer image's user (Dockerfile: useradd --uid 65532); pods run as it, never root.
TRAINER_UID = 65532
SCRATCH_DIR = "/tmp"  # run dir, checkpoint staging, tempfile, HOME: all under one emptyDir
SCRATCH_VOLUME = "kubetrain-scratch"
SHM_VOLUME = "kubetrain-shm"  # spec.shmSize
# GPU workers: a failed or timed-out NCCL collective tears the process down (so torchrun,
# the in-place restart or the operator acts) instead of leaving it blocked; NCCL warns.
NCCL_DEFAULTS = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_DEBUG": "WARN"}


def pod_name(job_name: str, index: int) -> str:
    return f"{job_name}-{index}"


def common_labels(job_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubetrain",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "kubetrain-operator",
        JOB_LABEL: job_name,
    }


def owner_reference(job: TrainingJob) -> Obj:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": job.metadata.name,
        "uid": job_uid(job),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(job: TrainingJob, name: str, labels: dict[str, str] | None = None) -> Obj:
    # The operator's labels come last: a job's own never override them.
    return {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": {**(labels or {}), **common_labels(job.metadata.name)},
        "ownerReferences": [owner_reference(job)],
    }


def job_uid(job: TrainingJob) -> str:
    return str((job.metadata.model_extra or {}).get("uid", ""))


def checkpoint_uri(job: TrainingJob, settings: Settings) -> str | None:
    """spec.checkpoint.uri, else the operator's default base + <namespace>/<name>/<uid>:
    a re-created job (a new UID) starts a store of its own."""
    if job.spec.checkpoint.uri:
        return job.spec.checkpoint.uri
    if settings.default_checkpoint_uri:
        base = settings.default_checkpoint_uri.rstrip("/")
        return f"{base}/{job.metadata.namespace}/{job.metadata.name}/{job_uid(job)}"
    return None


SIGNING_KEY = "checkpoint-key"  # the data key of the signing Secret


def signing_secret_name(job: TrainingJob) -> str:
    return job.spec.checkpoint.signingKeySecretName or f"{job.metadata.name}-checkpoint-key"


def build_signing_secret(job: TrainingJob, key: str) -> Obj | None:
    """The Secret holding the job's manifest signing key (`key`: fresh random text from
    the caller), or None when the job names a Secret of its own."""
    if job.spec.checkpoint.signingKeySecretName:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(job, signing_secret_name(job)),
        "stringData": {SIGNING_KEY: key},
    }


def build_network_policy(job: TrainingJob, settings: Settings) -> Obj | None:
    """Who may reach the job's pods: each other on any port (rendezvous, collectives), the
    operator's pods and the metrics peers on the metrics port, nobody else."""
    if not settings.network_policy:
        return None
    gang = {"podSelector": {"matchLabels": {JOB_LABEL: job.metadata.name}}}
    operator = {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": settings.operator_namespace}
        },
        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(job, f"{job.metadata.name}-workers"),
        "spec": {
            **gang,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [gang]},
                {
                    "from": [operator, *settings.metrics_peers],
                    "ports": [{"protocol": "TCP", "port": job.spec.monitoring.port}],
                },
            ],
        },
    }


def build_pod_group(job: TrainingJob) -> Obj | None:
    """The gang scheduler's PodGroup of spec.scheduling.gang (gang.py), or None."""
    return gang.pod_group(job, _meta(job, gang.group_name(job)))


def credentials_secret(job: TrainingJob, settings: Settings) -> str | None:
    if job.spec.checkpoint.s3.credentialsSecretName:
        return job.spec.checkpoint.s3.credentialsSecretName
    uses_default = not job.spec.checkpoint.uri and checkpoint_uri(job, settings) is not None
    return settings.default_credentials_secret if uses_default else None


def run_dir(job: TrainingJob) -> str:
    return f"/tmp/kubetrain/{job.metadata.namespace}/{job.metadata.name}"


# Rendered configs by what they are made of (the job's name, UID and spec, the settings):
# rendering the YAML was the largest CPU cost of a resync, and a job's spec rarely changes.
_RENDERED: dict[bytes, str] = {}
_RENDERED_MAX = 4096
_rendered_lock = threading.Lock()


def worker_config(job: TrainingJob, settings: Settings) -> str:
    """The trainer config every worker reads (the ConfigMap): spec.trainer with the
    job-level settings and the operator's defaults folded in."""
    made_of = (
        job.metadata.namespace,
        job.metadata.name,
        job_uid(job),
        job.spec.model_dump_json(),
        repr(settings),
    )
    key = hashlib.sha256(repr(made_of).encode()).digest()
    with _rendered_lock:
        cached = _RENDERED.get(key)
    if cached is None:
        cached = _render_config(job, settings)
        with _rendered_lock:
            if len(_RENDERED) >= _RENDERED_MAX:
                _RENDERED.clear()
            _RENDERED[key] = cached
    return cached


def _render_config(job: TrainingJob, settings: Settings) -> str:
    uri = checkpoint_uri(job, settings)
    default = not job.spec.checkpoint.uri and uri is not None
    cfg = trainer_config(
        job,
        run_dir=run_dir(job),
        checkpoint_uri=uri or f"{run_dir(job)}/checkpoints",
        s3_endpoint=settings.default_s3_endpoint if default else None,
        metrics_port=job.spec.monitoring.port,
    )
    return to_yaml(cfg)


def build_service(job: TrainingJob) -> Obj:
    """Headless Service: `<job>-<index>.<job>` resolves to each worker, before it is ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, job.metadata.name),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: job.metadata.name},
            "ports": [
                {"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT},
                {"name": "metrics", "port": job.spec.monitoring.port},
            ],
        },
    }


def build_configmap(job: TrainingJob, settings: Settings) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(job, f"{job.metadata.name}-config"),
        "data": {CONFIG_FILE: worker_config(job, settings)},
    }


def torchrun_command(job: TrainingJob, index: int, settings: Settings) -> list[str]:
    """Static rendezvous on pod 0: the gang is fixed (the operator restarts it whole), and
    static ranks put global rank 0 (progress, metrics) on pod 0. A one-pod job rendezvous
    inside its pod and needs no Service. An elastic gang uses c10d instead."""
    name = job.metadata.name
    master = f"{pod_name(name, 0)}.{name}" if job.spec.numNodes > 1 else "127.0.0.1"
    if job.spec.elastic is None:
        nodes = str(job.spec.numNodes)
        rendezvous = [f"--node-rank={index}", f"--master-addr={master}"]
        rendezvous.append(f"--master-port={RDZV_PORT}")
    else:
        nodes = f"{job.spec.min_nodes()}:{job.spec.numNodes}"
        rendezvous = _elastic_rendezvous(job, index, master)
    return [
        *settings.torchrun,
        f"--nnodes={nodes}",
        f"--nproc-per-node={job.spec.procs_per_node()}",
        *rendezvous,
        f"--max-restarts={job.spec.faultTolerance.inPlaceRestarts}",  # in-place restarts
        "-m",
        "kubetrain_trainer",
        "train",
        "--config",
        str(PurePosixPath(CONFIG_DIR) / CONFIG_FILE),
    ]


# c10d rendezvous of an elastic gang: a member that stops sending keep-alives is out
# after ELASTIC_KEEP_ALIVE_SECONDS x 3, and a round closes ELASTIC_LAST_CALL_SECONDS
# after minNodes joined (at once when all numNodes did).
ELASTIC_KEEP_ALIVE_SECONDS = 2
ELASTIC_LAST_CALL_SECONDS = 5


def _elastic_rendezvous(job: TrainingJob, index: int, host: str) -> list[str]:
    """torchrun's c10d rendezvous on pod 0's store. c10d ranks the members by address, so
    each pod names itself by its stable DNS name: pod 0 sorts first and holds global rank
    0 (progress, metrics) in every round."""
    name = job.metadata.name
    conf = {
        "is_host": str(index == 0).lower(),  # pod 0 serves the store; the rest connect
        "keep_alive_interval": ELASTIC_KEEP_ALIVE_SECONDS,
        "keep_alive_max_attempt": 3,
        "last_call_timeout": ELASTIC_LAST_CALL_SECONDS,
    }
    return [
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={host}:{RDZV_PORT}",
        f"--rdzv-id={name}",
        "--rdzv-conf=" + ",".join(f"{k}={v}" for k, v in conf.items()),
        f"--local-addr={pod_name(name, index)}.{name}",
    ]


def build_env(
    job: TrainingJob, index: int, recovery: RecoveryStatus, settings: Settings
) -> list[Obj]:
    env: list[Obj] = [
        {"name": Env.JOB_NAME, "value": job.metadata.name},
        {"name": Env.NAMESPACE, "value": job.metadata.namespace or ""},
        {"name": Env.JOB_UID, "value": job_uid(job)},
        {"name": Env.RESTART_COUNT, "value": str(recovery.attempt)},
        {"name": Env.SKIP_BATCHES, "value": recovery.skipBatches},
        {"name": Env.LR_SCALE, "value": repr(recovery.lrScale)},
        {"name": Env.RUN_DIR, "value": f"{run_dir(job)}/{index}"},
        {"name": Env.TERMINATION_LOG, "value": DEFAULT_TERMINATION_LOG},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # The image's HOME is on the read-only root filesystem; caches go to scratch.
        {"name": "HOME", "value": SCRATCH_DIR},
    ]
    if recovery.rollbackBeforeStep is not None:
        env.append({"name": Env.ROLLBACK_BEFORE, "value": str(recovery.rollbackBeforeStep)})
        env.append({"name": Env.ROLLBACK_ID, "value": recovery.rollbackId or ""})
    key_ref = {"secretKeyRef": {"name": signing_secret_name(job), "key": SIGNING_KEY}}
    env.append({"name": Env.CHECKPOINT_KEY, "valueFrom": key_ref})
    secret = credentials_secret(job, settings)
    if secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = {"secretKeyRef": {"name": secret, "key": key}}
            env.append({"name": key, "valueFrom": ref})
    if job.spec.elastic is not None:
        # Each round's workers get a store of their own on rank 0's pod: on the agent's
        # shared store a gang that grows back never learns the new master address.
        env.append({"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"})
    own = {e.get("name") for e in job.spec.env}
    if job.spec.gpus_per_node():  # the cluster's NCCL settings, unless the job sets its own
        nccl = {**NCCL_DEFAULTS, **settings.nccl_env}
        env += [{"name": k, "value": v} for k, v in nccl.items() if k not in own]
    return env + [dict(e) for e in job.spec.env]  # user env last: it may override


def pod_security_context() -> Obj:
    """The restricted Pod Security Standard, as the trainer image's user."""
    return {
        "runAsNonRoot": True,
        "runAsUser": TRAINER_UID,
        "runAsGroup": TRAINER_UID,
        "fsGroup": TRAINER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Obj:
    # The root filesystem stays read-only: everything the trainer writes is under
    # SCRATCH_DIR (an emptyDir) or in S3.
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _tolerations(job: TrainingJob) -> list[Obj]:
    seconds = job.spec.faultTolerance.nodeFailureTolerationSeconds
    return [
        {
            "key": f"node.kubernetes.io/{taint}",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": seconds,
        }
        for taint in ("not-ready", "unreachable")
    ]


def build_pod(job: TrainingJob, index: int, recovery: RecoveryStatus, settings: Settings) -> Obj:
    name = job.metadata.name
    spec = job.spec
    port = spec.monitoring.port
    labels = {**spec.template.metadata.labels, INDEX_LABEL: str(index)}
    labels[ATTEMPT_LABEL] = str(recovery.attempt)
    labels |= queueing.pod_labels(job, recovery.attempt)  # one Kueue pod group per attempt
    labels |= gang.pod_labels(job)
    annotations = {**spec.template.metadata.annotations, **queueing.pod_annotations(job)}
    annotations |= gang.pod_annotations(job)
    if index == 0:  # global rank 0 serves /metrics and /progress
        annotations |= {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics",
        }
    container: Obj = {
        "name": CONTAINER,
        "image": spec.image or settings.default_image,
        "command": torchrun_command(job, index, settings),
        "env": build_env(job, index, recovery, settings),
        "ports": [
            {"name": "rdzv", "containerPort": RDZV_PORT},
            {"name": "metrics", "containerPort": port},
        ],
        "resources": dict(spec.resources),
        "volumeMounts": [
            {"name": "kubetrain-config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_DIR},
        ],
        "securityContext": container_security_context(),
        "terminationMessagePath": DEFAULT_TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.working_dir:
        container["workingDir"] = settings.working_dir
    overrides = dict(spec.template.spec)
    pod_spec: Obj = {
        "restartPolicy": "Never",  # the operator restarts the whole gang
        "hostname": pod_name(name, index),
        "subdomain": name,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [
            {"name": "kubetrain-config", "configMap": {"name": f"{name}-config"}},
            {"name": SCRATCH_VOLUME, "emptyDir": {}},
            *overrides.pop("volumes", []),
        ],
        "tolerations": [*_tolerations(job), *overrides.pop("tolerations", [])],
    }
    if spec.shmSize:
        shm = {"medium": "Memory", "sizeLimit": spec.shmSize}
        pod_spec["volumes"].append({"name": SHM_VOLUME, "emptyDir": shm})
        container["volumeMounts"].append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    extra_mounts = overrides.pop("volumeMounts", [])  # convenience: mounts for the trainer
    container["volumeMounts"] += extra_mounts
    for key in pod_policy.OPERATOR_FIELDS:
        overrides.pop(key, None)  # owned by the operator
    # The job may pick groups and ids; the restricted settings always hold.
    pod_spec["securityContext"] = {**overrides.pop("securityContext", {}), **pod_security_context()}
    for key in ("runAsUser", "runAsGroup"):  # ... but a job's own non-root ids win
        chosen = (spec.template.spec.get("securityContext") or {}).get(key)
        if chosen:
            pod_spec["securityContext"][key] = chosen
    pod_spec |= overrides
    scheduler = gang.scheduler_name(job)
    if scheduler:
        pod_spec["schedulerName"] = scheduler
    # The trainer never talks to the API server: no token, unless the job names an
    # identity (an admin allowed serviceAccountName, e.g. for cloud storage access).
    pod_spec.setdefault("automountServiceAccountToken", "serviceAccountName" in overrides)
    meta = _meta(job, pod_name(name, index), labels)
    meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
