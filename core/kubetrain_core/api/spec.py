"""spec: what a TrainingJob asks for (the gang, the trainer config, checkpoints, recovery,
the pod template pieces a tenant controls), with the CEL rules beside their validators."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

from kubetrain_core import cel, pod_policy
from kubetrain_core.api.base import (
    DNS1123,
    ENV_VAR_SCHEMA,
    FREE_FORM,
    QUALIFIED_NAME,
    QUANTITY_PATTERN,
    RESOURCES_SCHEMA,
    AnnotationValue,
    ApiModel,
    K8sObject,
    LabelValue,
)
from kubetrain_core.api.notifications import NotificationsSpec
from kubetrain_core.config import TrainingConfig
from kubetrain_core.config.base import CHECKPOINT_URI_PATTERN, MetricMode, MetricName
from kubetrain_core.config.schema import CheckpointConfig, S3Config

# The job's checkpoint settings are the trainer's (config/schema.py: defaults, bounds and
# descriptions live there), spelled in camelCase; job_config.py folds them back in.
CHECKPOINT_FIELDS = {
    "intervalSteps": "interval_steps",
    "keepLast": "keep_last",
    "keepBest": "keep_best",
    "bestMetric": "best_metric",
    "bestMode": "best_mode",
    "resume": "resume",
    "asyncUpload": "async_upload",
}


def _same_as(model: type[BaseModel], name: str) -> Any:
    """The trainer config's field `name`: its default, bounds and description."""
    return FieldInfo.merge_field_infos(model.model_fields[name])


class S3Settings(ApiModel):
    """S3 connection for s3:// checkpoint URIs (MinIO or AWS)."""

    endpoint: str | None = _same_as(S3Config, "endpoint")
    region: str | None = _same_as(S3Config, "region")
    credentialsSecretName: str | None = Field(None, max_length=253, pattern=DNS1123)
    """Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, injected as env."""


class CheckpointSpec(ApiModel):
    """Where and how often the job checkpoints: the one place for it in a TrainingJob
    (the trainer config's checkpoint section, camelCase)."""

    uri: str | None = Field(
        None,
        max_length=2048,
        pattern=CHECKPOINT_URI_PATTERN,
        json_schema_extra=cel.immutable("uri"),
    )
    """Where checkpoints go: s3://bucket/prefix or file:///path (a volume shared by all
    workers). Unset: the operator's default base + <namespace>/<name>/<uid> (kubetrain
    run: runs/<name>/checkpoints). Two jobs must not share one: the second is refused."""
    intervalSteps: int = _same_as(CheckpointConfig, "interval_steps")
    keepLast: int = _same_as(CheckpointConfig, "keep_last")
    keepBest: int = _same_as(CheckpointConfig, "keep_best")
    bestMetric: MetricName = _same_as(CheckpointConfig, "best_metric")
    bestMode: MetricMode = _same_as(CheckpointConfig, "best_mode")
    resume: bool = _same_as(CheckpointConfig, "resume")
    asyncUpload: bool = _same_as(CheckpointConfig, "async_upload")
    signingKeySecretName: str | None = Field(None, max_length=253, pattern=DNS1123)
    """Secret whose key `checkpoint-key` signs the job's manifests. Unset: the operator
    creates a Secret <name>-checkpoint-key for the job (deleted with it); name one of your
    own to let a re-created job resume the checkpoints of an earlier one."""
    s3: S3Settings = S3Settings()

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                "!has(self.uri) || self.uri.startsWith('s3://') || !has(self.s3)"
                " || (!has(self.s3.endpoint) && !has(self.s3.credentialsSecretName))",
                "checkpoint.s3 settings apply to s3:// URIs only",
                fieldPath=".s3",
            )
        )
    )

    @model_validator(mode="after")
    def _s3_settings_need_s3(self) -> Self:
        s3_only = self.s3.endpoint or self.s3.credentialsSecretName
        if self.uri and not self.uri.startswith("s3://") and s3_only:
            raise ValueError("checkpoint.s3 settings apply to s3:// URIs only")
        return self


class NaNPolicy(ApiModel):
    """Tier-2 NaN recovery: roll the gang back to an older good checkpoint."""

    action: Literal["Rollback", "Fail"] = "Rollback"
    """What the operator does when the trainer exits with the NaN exit code."""
    maxRollbacks: int = Field(3, ge=0, le=100)
    """Rollbacks to older checkpoints before the job fails with NaNRollbackBudgetExhausted."""
    skipBatches: int = Field(0, ge=0, le=1_000_000)
    """Extra batches skipped after the ones that produced NaN, on each rollback."""
    lrScalePercent: int = Field(100, ge=1, le=100)
    """Scale the learning rate to this percentage after a rollback."""


class FaultToleranceSpec(ApiModel):
    """Gang restarts and rollbacks, with a budget per cause."""

    startupDeadlineSeconds: int = Field(600, ge=30, le=86_400)
    """A worker pod not running this long after it was created (unschedulable, an image
    that cannot be pulled, a missing Secret or ConfigMap) is reported in the Running
    condition with the pod's own reason; then onStartupTimeout applies."""
    onStartupTimeout: Literal["Wait", "Restart", "Fail"] = "Wait"
    """Wait: keep the pods and keep reporting (the cause may be fixed, capacity may come);
    Restart: delete the gang and create it again after the restart backoff, so a gang
    that only partly scheduled frees the nodes it holds (counted in
    status.restarts.startupTimeout, not against maxRestarts); Fail: fail the job with
    reason StartupDeadlineExceeded and delete its pods."""

    maxRestarts: int = Field(3, ge=0, le=1000)
    """Gang restarts allowed for infrastructure failures and crashes."""
    inPlaceRestarts: int = Field(0, ge=0, le=100)
    """A failed worker process (a crash, an error exit, a peer lost while the pods stay)
    is restarted inside the running pods this many times per attempt (torchrun
    --max-restarts): every worker of the gang restarts and resumes from the newest
    checkpoint, keeping its pod, node and pulled image; only then is the gang recreated.
    Outcomes the operator must act on (an invalid config, a NaN that needs a rollback, a
    preemption) end the pod at once; a lost pod or node recreates the gang as before."""
    nan: NaNPolicy = NaNPolicy()
    nodeFailureTolerationSeconds: int = Field(30, ge=0, le=3600)
    """Workers tolerate a NotReady/unreachable node this long before eviction."""
    progressDeadlineSeconds: int | None = Field(None, ge=10, le=86400)
    """No step progress for this long counts as a hang and restarts the gang. The clock
    starts when the gang is Running, so it also covers start-up and resuming: set it
    above the time those take."""


class RunPolicy(ApiModel):
    """Job lifecycle: suspension, deadlines, clean-up."""

    suspend: bool = False
    """Delete the pods but keep checkpoints; training continues from them when unsuspended."""
    activeDeadlineSeconds: int | None = Field(None, ge=1, le=31_536_000)
    """Fail the job when it has been active longer than this."""
    ttlSecondsAfterFinished: int | None = Field(None, ge=0, le=31_536_000)
    """Delete the finished job after this many seconds."""
    cleanPodPolicy: Literal["All", "Running", "None"] = "Running"
    """Which pods to delete when the job finishes."""


class TemplateMetadata(ApiModel):
    """Labels and annotations added to every worker pod."""

    labels: dict[str, LabelValue] = Field(default_factory=dict, max_length=64)
    """Labels added to every worker pod (not kubetrain.io/* nor app.kubernetes.io/name,
    component, managed-by: the operator's own; nor kueue.x-k8s.io/*, scheduling.x-k8s.io/*,
    scheduling.k8s.io/*: the pod groups the operator makes)."""
    annotations: dict[str, AnnotationValue] = Field(default_factory=dict, max_length=64)
    """Annotations added to every worker pod (not kubetrain.io/*, kueue.x-k8s.io/*,
    scheduling.x-k8s.io/*, scheduling.k8s.io/*)."""

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                "!has(self.labels) || self.labels.all(k, k.matches(r'" + QUALIFIED_NAME + "')"
                " && !"
                + cel.starts_with_any(
                    "k", pod_policy.RESERVED_LABEL_PREFIXES, pod_policy.RESERVED_LABELS
                )
                + ")",
                "template.metadata.labels: keys must be qualified names and not the operator's"
                " (kubetrain.io/*, app.kubernetes.io/name, component, managed-by) nor a pod"
                " group's (kueue.x-k8s.io/*: label the TrainingJob with"
                " kueue.x-k8s.io/queue-name; scheduling.x-k8s.io/*, scheduling.k8s.io/*: set"
                " spec.scheduling.gang)",
                fieldPath=".labels",
                reason="FieldValueForbidden",
            ),
            cel.rule(
                "!has(self.annotations) || self.annotations.all(k, k.matches(r'"
                + QUALIFIED_NAME
                + "') && !"
                + cel.starts_with_any("k", pod_policy.RESERVED_ANNOTATION_PREFIXES)
                + ")",
                "template.metadata.annotations: keys must be qualified names and not"
                " kubetrain.io/* nor a pod group's (kueue.x-k8s.io/*, scheduling.x-k8s.io/*,"
                " scheduling.k8s.io/*)",
                fieldPath=".annotations",
                reason="FieldValueForbidden",
            ),
        )
    )

    @field_validator("labels", "annotations")
    @classmethod
    def _qualified_keys(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if len(k) > 316 or not re.match(QUALIFIED_NAME, k)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a qualified name (prefix/name)")
        return value


class PodTemplateOverrides(ApiModel):
    """Pieces of the worker pod template that the user controls."""

    metadata: TemplateMetadata = TemplateMetadata()
    spec: K8sObject = Field(
        default_factory=dict, json_schema_extra={**FREE_FORM, "maxProperties": 32}
    )
    """Pod spec fields merged into every worker, from an allow-list: nodeSelector,
    affinity, tolerations, topologySpreadConstraints, priorityClassName, schedulerName,
    runtimeClassName, imagePullSecrets, terminationGracePeriodSeconds, securityContext
    (fsGroup, fsGroupChangePolicy, supplementalGroups, runAsUser, runAsGroup), volumes
    (emptyDir, configMap, persistentVolumeClaim, ephemeral, downwardAPI, projected) and
    volumeMounts (for the trainer container). A cluster admin may allow more
    (docs/security.md)."""


class GangScheduling(ApiModel):
    """All-or-nothing placement: the gang's pods are bound together or not at all, so a
    half-placed gang never holds nodes that another gang could use. Needs that scheduler
    in the cluster (docs/operations.md); single-pod jobs need no PodGroup and get none."""

    podGroup: Literal["Coscheduling", "Volcano"] = "Coscheduling"
    """The PodGroup the operator creates for the job (minMember = numNodes): Coscheduling,
    the scheduler-plugins coscheduling plugin's (scheduling.x-k8s.io/v1alpha1; pods go to
    schedulerName scheduler-plugins-scheduler), or Volcano's (scheduling.volcano.sh/v1beta1;
    schedulerName volcano). spec.template.spec.schedulerName, when set, wins."""
    scheduleTimeoutSeconds: int = Field(60, ge=1, le=86_400)
    """Coscheduling: how long the members already placed wait for the rest before all are
    released and tried again."""
    volcanoQueue: str | None = Field(None, max_length=253, pattern=DNS1123)
    """Volcano: the queue of the PodGroup; unset: Volcano's default queue."""


class SchedulingSpec(ApiModel):
    """How the gang is placed."""

    gang: GangScheduling | None = None
    """Gang scheduling through a PodGroup; unset: the default scheduler places each pod on
    its own (faultTolerance.startupDeadlineSeconds then reports, or with onStartupTimeout
    Restart releases, a gang that never fully starts)."""


class ElasticSpec(ApiModel):
    """A gang that shrinks and grows: numNodes is its largest size. When a worker pod other
    than pod 0 or its node is lost, the others re-form the gang without it (torchrun's
    c10d rendezvous, an in-place restart from the newest checkpoint) and train on while
    the operator recreates the pod; the gang grows back when that pod runs. Every size
    trains the same global batch: the ranks run more micro-batches each. Losing pod 0
    (the rendezvous host) restarts the whole gang."""

    minNodes: int = Field(ge=1, le=1023)
    """The fewest pods the gang trains with (torchrun --nnodes=minNodes:numNodes); below
    numNodes."""


class MonitoringSpec(ApiModel):
    """Where rank 0 serves its metrics and progress."""

    port: int = Field(9090, ge=1024, le=65535)
    """Port of rank 0's /metrics and /progress endpoints (not 29400: the rendezvous)."""


# Trainer config fields that a TrainingJob sets elsewhere: one place for each.
SET_BY_THE_JOB = {
    "checkpoint": "checkpointing is set in spec.checkpoint (uri, intervalSteps, keepLast,"
    " keepBest, bestMetric, resume, asyncUpload, s3): move these settings there, in camelCase",
    "metrics.port": "rank 0 serves on spec.monitoring.port: set that instead",
    "run_dir": "kubetrain chooses the run dir (runs/<name> under kubetrain run): remove it",
    "optimization.global_batch_ranks": "the operator sets it to numNodes x numProcPerNode"
    " (the global batch every size of an elastic gang keeps): remove it",
}


def _present(data: Any, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _has(var: str, path: str) -> str:
    """CEL: the dotted `path` is set under `var` (every level checked)."""
    parts = path.split(".")
    return " && ".join(f"has({var}.{'.'.join(parts[: i + 1])})" for i in range(len(parts)))


# CEL: the GPUs requested per worker, as the API server sees them (limits, else requests;
# 0 when neither asks for any); gpus_per_node() in Python.
_GPU = "'nvidia.com/gpu'"
_GPU_LIMIT = (
    f"(has(self.resources) && has(self.resources.limits) && {_GPU} in self.resources.limits"
    f" ? int(self.resources.limits[{_GPU}])"
    f" : has(self.resources) && has(self.resources.requests) && {_GPU} in self.resources.requests"
    f" ? int(self.resources.requests[{_GPU}]) : 0)"
)


class TrainingJobSpec(ApiModel):
    """Desired state of a TrainingJob: a gang of torchrun workers running the trainer."""

    image: str | None = Field(None, min_length=1, max_length=1024, pattern=r"^\S+$")
    """Trainer image; unset: the operator's default."""
    numNodes: int = Field(1, ge=1, le=1024, json_schema_extra=cel.immutable("numNodes"))
    """Pods in the gang (torchrun --nnodes)."""
    numProcPerNode: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto", json_schema_extra=cel.immutable("numProcPerNode")
    )
    """torchrun --nproc-per-node; auto = GPUs requested per pod, else 1."""
    resources: K8sObject = Field(default_factory=dict, json_schema_extra=RESOURCES_SCHEMA)
    """core/v1 ResourceRequirements for each worker (nvidia.com/gpu allowed)."""
    env: list[K8sObject] = Field(
        default_factory=list, max_length=128, json_schema_extra={"items": ENV_VAR_SCHEMA}
    )
    """Extra core/v1 EnvVar entries for the trainer container; they win over the NCCL
    settings the operator adds to GPU jobs (docs/operations.md)."""
    shmSize: str | None = Field(None, max_length=32, pattern=QUANTITY_PATTERN)
    """A memory-backed /dev/shm of this size in every worker (a resource.Quantity, e.g.
    8Gi): DataLoader worker processes and NCCL's transport within a node use it, and
    container runtimes give 64Mi. It counts against the pod's memory. Unset: the
    runtime's /dev/shm."""
    trainer: TrainingConfig = Field(json_schema_extra=cel.immutable("trainer"))
    """The trainer's config: the document `kubetrain train --config` reads, without what
    the job sets (checkpoint: spec.checkpoint; metrics.port: spec.monitoring.port;
    run_dir: kubetrain's)."""
    checkpoint: CheckpointSpec = CheckpointSpec()
    faultTolerance: FaultToleranceSpec = FaultToleranceSpec()
    runPolicy: RunPolicy = RunPolicy()
    scheduling: SchedulingSpec = SchedulingSpec()
    elastic: ElasticSpec | None = Field(None, json_schema_extra=cel.immutable("elastic"))
    """Train on with fewer pods when some are lost; unset: a fixed gang of numNodes."""
    template: PodTemplateOverrides = PodTemplateOverrides()
    monitoring: MonitoringSpec = MonitoringSpec()
    notifications: NotificationsSpec | None = None

    def gpus_per_node(self) -> int:
        for part in ("limits", "requests"):
            value = (self.resources.get(part) or {}).get("nvidia.com/gpu")
            if value is not None:
                return int(value)
        return 0

    def procs_per_node(self) -> int:
        if self.numProcPerNode == "auto":
            return max(1, self.gpus_per_node())
        return self.numProcPerNode

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            *(
                cel.rule(
                    f"!({_has('self.trainer', path)})",
                    f"trainer.{path}: in a TrainingJob, {where}",
                    fieldPath=f".trainer.{path}",
                    reason="FieldValueForbidden",
                )
                for path, where in SET_BY_THE_JOB.items()
            ),
            cel.rule(
                f"!has(self.monitoring) || !has(self.monitoring.port)"
                f" || self.monitoring.port != {pod_policy.RDZV_PORT}",
                f"spec.monitoring.port: {pod_policy.RDZV_PORT} is the rendezvous port; pick"
                " another",
                fieldPath=".monitoring.port",
                reason="FieldValueInvalid",
            ),
            cel.rule(
                "!has(self.elastic) || self.elastic.minNodes < self.numNodes",
                "spec.elastic.minNodes must be below numNodes (the largest gang); for a gang"
                " of fixed size leave spec.elastic out",
                fieldPath=".elastic.minNodes",
                reason="FieldValueInvalid",
            ),
            cel.rule(
                "!has(self.elastic) || (has(self.faultTolerance)"
                " && has(self.faultTolerance.inPlaceRestarts)"
                " && self.faultTolerance.inPlaceRestarts >= 1)",
                "spec.elastic needs faultTolerance.inPlaceRestarts >= 1: the pods that remain"
                " re-form the gang through an in-place restart",
                fieldPath=".faultTolerance.inPlaceRestarts",
                reason="FieldValueInvalid",
            ),
            cel.rule(
                f"type(self.numProcPerNode) == string || {_GPU_LIMIT} == 0"
                f" || {_GPU_LIMIT} >= self.numProcPerNode",
                "numProcPerNode exceeds the nvidia.com/gpu requested per node;"
                " use numProcPerNode: auto or request more GPUs",
                fieldPath=".numProcPerNode",
                reason="FieldValueInvalid",
            ),
        )
    )

    @model_validator(mode="before")
    @classmethod
    def _trainer_fields_set_by_the_job(cls, data: Any) -> Any:
        trainer = data.get("trainer") if isinstance(data, dict) else None
        problems = [
            f"trainer.{path}: in a TrainingJob, {where}"
            for path, where in SET_BY_THE_JOB.items()
            if _present(trainer, path)
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return data

    @model_validator(mode="after")
    def _nothing_reserved(self) -> Self:
        problems = pod_policy.fixed_problems(
            {"env": self.env, "template": self.template.model_dump(mode="json")}
        )
        if self.monitoring.port == pod_policy.RDZV_PORT:
            problems.append(f"spec.monitoring.port: {pod_policy.RDZV_PORT} is the rendezvous port")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _elastic_range(self) -> Self:
        if self.elastic is None:
            return self
        problems = []
        if self.elastic.minNodes >= self.numNodes:
            problems.append(
                "spec.elastic.minNodes must be below numNodes (the largest gang); for a gang"
                " of fixed size leave spec.elastic out"
            )
        if self.faultTolerance.inPlaceRestarts < 1:
            problems.append(
                "spec.elastic needs faultTolerance.inPlaceRestarts >= 1: the pods that remain"
                " re-form the gang through an in-place restart"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def min_nodes(self) -> int:
        """The fewest pods the gang trains with: elastic.minNodes, else numNodes."""
        return self.elastic.minNodes if self.elastic else self.numNodes

    @model_validator(mode="after")
    def _procs_fit_gpus(self) -> Self:
        gpus = self.gpus_per_node()
        if gpus and self.numProcPerNode != "auto" and self.numProcPerNode > gpus:
            raise ValueError(
                f"numProcPerNode ({self.numProcPerNode}) exceeds the nvidia.com/gpu requested "
                f"per node ({gpus}); use numProcPerNode: auto or request more GPUs"
            )
        return self
