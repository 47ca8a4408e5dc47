"""The TrainingJob API (kubetrain.io/v1alpha1) as pydantic models: one source of truth.

`spec.trainer` embeds the trainer's own TrainingConfig (snake_case) so that one
config file runs the same under `kubetrain train`, `kubetrain run` and the
operator. Kubernetes-native parts (resources, env, pod template pieces) are
kept as free-form objects here and validated by the API server's own types.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kubetrain_operator import pod_policy
from kubetrain_trainer.config import TrainingConfig
from kubetrain_trainer.config.schema import CHECKPOINT_URI_PATTERN, ENDPOINT_PATTERN

GROUP = "kubetrain.io"
VERSION = "v1alpha1"
KIND = "TrainingJob"
PLURAL = "trainingjobs"

DNS1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A qualified name (label and annotation keys): an optional DNS prefix and a name.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
K8sObject = dict[str, Any]
LabelKey = Annotated[str, Field(max_length=316, pattern=QUALIFIED_NAME)]
LabelValue = Annotated[
    str, Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
]
AnnotationValue = Annotated[str, Field(max_length=4096)]

# Kubernetes-native parts keep their dict form in Python; in the CRD they get the
# shape the API server needs (structural, bounded) and core/v1 validates the rest
# when the pods are created.
FREE_FORM: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
_QUANTITY: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "x-kubernetes-int-or-string": True,
    "pattern": (  # resource.Quantity, as core/v1 publishes it
        r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"  # never negative
        r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
    ),
}
_QUANTITIES: dict[str, Any] = {
    "type": "object",
    "maxProperties": 32,
    "additionalProperties": _QUANTITY,
    "x-kubernetes-validations": [
        {
            "rule": f"self.all(k, k.matches(r'{QUALIFIED_NAME}'))",
            "message": "resource names are qualified names, e.g. cpu, memory, nvidia.com/gpu",
        }
    ],
}
RESOURCES_SCHEMA: dict[str, Any] = {
    "properties": {
        "limits": {**_QUANTITIES, "description": "Maximum compute resources per worker."},
        "requests": {**_QUANTITIES, "description": "Compute resources reserved per worker."},
    },
    "additionalProperties": False,
}
ENV_VAR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {
            "type": "string",
            "maxLength": 256,
            "pattern": pod_policy.ENV_NAME.pattern,
            "description": "Variable name (not one the operator or torchrun sets).",
        },
        "value": {"type": "string", "maxLength": 8192, "description": "Literal value."},
        "valueFrom": {
            "type": "object",
            "description": "core/v1 EnvVarSource: secretKeyRef, configMapKeyRef, fieldRef, ...",
            **FREE_FORM,
        },
    },
    "x-kubernetes-validations": [
        {
            "rule": f"!{pod_policy.reserved_env_cel('self.name')}",
            "messageExpression": "self.name + ' is set by the operator or torchrun and cannot"
            " be overridden'",
            "message": "names the operator or torchrun set (KUBETRAIN_*, PET_*, TORCHELASTIC_*,"
            " MASTER_ADDR, RANK, WORLD_SIZE, ...) cannot be overridden",
            "reason": "FieldValueForbidden",
        }
    ],
}


class ApiModel(BaseModel):
    """camelCase Kubernetes-style section; unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)


class S3Settings(ApiModel):
    """S3 connection for s3:// checkpoint URIs (MinIO or AWS)."""

    endpoint: str | None = Field(None, max_length=2048, pattern=ENDPOINT_PATTERN)
    """S3 endpoint URL (e.g. http://minio.minio:9000, no credentials in it); empty means AWS."""
    region: str | None = Field(None, max_length=64)
    """S3 region."""
    credentialsSecretName: str | None = Field(None, max_length=253, pattern=DNS1123)
    """Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, injected as env."""


class CheckpointSpec(ApiModel):
    """Job-level checkpoint settings; they override spec.trainer.checkpoint."""

    uri: str | None = Field(None, max_length=2048, pattern=CHECKPOINT_URI_PATTERN)
    """Where checkpoints go: s3://bucket/prefix or file:///path (a volume shared by all
    workers). Unset: the operator's default base + <namespace>/<name>/<uid>. Two jobs
    must not share one: the second is refused."""
    intervalSteps: int | None = Field(None, ge=1, le=1_000_000_000)
    """Overrides spec.trainer.checkpoint.interval_steps."""
    keepLast: int | None = Field(None, ge=1, le=10_000)
    """Overrides spec.trainer.checkpoint.keep_last."""
    signingKeySecretName: str | None = Field(None, max_length=253, pattern=DNS1123)
    """Secret whose key `checkpoint-key` signs the job's manifests. Unset: the operator
    creates a Secret <name>-checkpoint-key for the job (deleted with it); name one of your
    own to let a re-created job resume the checkpoints of an earlier one."""
    s3: S3Settings = S3Settings()


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
    onStartupTimeout: Literal["Wait", "Fail"] = "Wait"
    """Wait: keep the pods and keep reporting (the cause may be fixed, capacity may come);
    Fail: fail the job with reason StartupDeadlineExceeded and delete its pods."""

    maxRestarts: int = Field(3, ge=0, le=1000)
    """Gang restarts allowed for infrastructure failures and crashes."""
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
    component, managed-by: the operator's own)."""
    annotations: dict[str, AnnotationValue] = Field(default_factory=dict, max_length=64)
    """Annotations added to every worker pod (not kubetrain.io/*)."""

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


class MonitoringSpec(ApiModel):
    """Where rank 0 serves its metrics and progress."""

    port: int = Field(9090, ge=1024, le=65535)
    """Port of rank 0's /metrics and /progress endpoints (not 29400: the rendezvous)."""


class TrainingJobSpec(ApiModel):
    """Desired state of a TrainingJob: a gang of torchrun workers running the trainer."""

    image: str | None = Field(None, min_length=1, max_length=1024, pattern=r"^\S+$")
    """Trainer image; unset: the operator's default."""
    numNodes: int = Field(1, ge=1, le=1024)
    """Pods in the gang (torchrun --nnodes)."""
    numProcPerNode: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"
    """torchrun --nproc-per-node; auto = GPUs requested per pod, else 1."""
    resources: K8sObject = Field(default_factory=dict, json_schema_extra=RESOURCES_SCHEMA)
    """core/v1 ResourceRequirements for each worker (nvidia.com/gpu allowed)."""
    env: list[K8sObject] = Field(
        default_factory=list, max_length=128, json_schema_extra={"items": ENV_VAR_SCHEMA}
    )
    """Extra core/v1 EnvVar entries for the trainer container."""
    trainer: TrainingConfig
    """The trainer's config: the same document `kubetrain train --config` reads."""
    checkpoint: CheckpointSpec = CheckpointSpec()
    faultTolerance: FaultToleranceSpec = FaultToleranceSpec()
    runPolicy: RunPolicy = RunPolicy()
    template: PodTemplateOverrides = PodTemplateOverrides()
    monitoring: MonitoringSpec = MonitoringSpec()

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
    def _procs_fit_gpus(self) -> Self:
        gpus = self.gpus_per_node()
        if gpus and self.numProcPerNode != "auto" and self.numProcPerNode > gpus:
            raise ValueError(
                f"numProcPerNode ({self.numProcPerNode}) exceeds the nvidia.com/gpu requested "
                f"per node ({gpus}); use numProcPerNode: auto or request more GPUs"
            )
        return self


ConditionType = Literal[
    "Created", "Running", "Restarting", "Succeeded", "Failed", "Suspended", "ProgressReadable"
]
JobState = Literal[
    "Pending", "Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed"
]
Timestamp = Annotated[str, Field(max_length=64, json_schema_extra={"format": "date-time"})]
Reason = Annotated[str, Field(max_length=128)]
Message = Annotated[str, Field(max_length=4096)]


class Condition(ApiModel):
    """One observation of the job's state (Kubernetes API conventions)."""

    type: ConditionType
    """Condition type: Created, Running, Restarting, Succeeded, Failed, Suspended or
    ProgressReadable (False while rank 0's /progress cannot be read)."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: Reason = ""
    """Machine-readable CamelCase cause of the last transition."""
    message: Message = ""
    """Human-readable details (for failures: the trainer's termination message)."""
    lastTransitionTime: Timestamp | None = None
    """When status last changed."""
    observedGeneration: int | None = Field(None, ge=0, le=2**62)
    """metadata.generation the condition was set for."""


class CheckpointRef(ApiModel):
    """A committed checkpoint."""

    step: int = Field(0, ge=0, le=2**62)
    """Optimizer steps the checkpoint holds."""
    uri: str = Field("", max_length=2048)
    """Where the checkpoint lives."""
    time: Timestamp | None = None
    """When it was committed."""


class Progress(ApiModel):
    """Training progress, read from rank 0's /progress endpoint."""

    step: int = Field(0, ge=0, le=2**62)
    """Optimizer steps done."""
    totalSteps: int | None = Field(None, ge=0, le=2**62)
    """Optimizer steps the run will take."""
    epoch: float | None = Field(None, ge=0, le=1e12)
    """Epochs done (fractional)."""
    loss: float | None = Field(None, ge=-1e30, le=1e30)
    """Latest training loss."""
    valLoss: float | None = Field(None, ge=-1e30, le=1e30)
    """Latest validation loss."""
    tokensPerSecond: float | None = Field(None, ge=0, le=1e15)
    """Training throughput of the whole gang."""
    lastCheckpoint: CheckpointRef | None = None
    resumedFrom: str | None = Field(None, max_length=2048)
    """The checkpoint the running attempt started from; empty: it started at step 0."""
    updateTime: Timestamp | None = None
    """When the operator last read the progress; cleared when the gang stops."""
    lastStepTime: Timestamp | None = None
    """When the step last advanced (or the gang last started): the hang detector's clock."""
    unreadableSince: Timestamp | None = None
    """When reads of /progress began to fail; the hang clock stands still until they work."""


class RestartCounts(ApiModel):
    """Gang restarts by cause."""

    total: int = Field(0, ge=0, le=1_000_000)
    """All gang restarts."""
    nodeFailure: int = Field(0, ge=0, le=1_000_000)
    """Restarts after a node failed or a pod was evicted."""
    nan: int = Field(0, ge=0, le=1_000_000)
    """Rollbacks after non-finite loss."""
    error: int = Field(0, ge=0, le=1_000_000)
    """Restarts after a worker crashed or was killed."""
    hang: int = Field(0, ge=0, le=1_000_000)
    """Restarts after progress stalled for faultTolerance.progressDeadlineSeconds."""


class WorkerCounts(ApiModel):
    """Worker pods of the current attempt, by phase."""

    pending: int = Field(0, ge=0, le=1024)
    """Pods created but not running yet."""
    running: int = Field(0, ge=0, le=1024)
    """Pods running."""
    succeeded: int = Field(0, ge=0, le=1024)
    """Pods that exited 0."""
    failed: int = Field(0, ge=0, le=1024)
    """Pods that failed."""


class RecoveryStatus(ApiModel):
    """What the next attempt of the gang starts from (the operator's memory across attempts)."""

    attempt: int = Field(0, ge=0, le=1_000_000)
    """Gang generation: pods of attempt N are labelled kubetrain.io/attempt=N."""
    rollbackBeforeStep: int | None = Field(None, ge=0, le=2**62)
    """The last NaN rollback: resume from the newest good checkpoint before this step."""
    rollbackId: str | None = Field(None, max_length=128)
    """That rollback request's id; the trainer applies each id once."""
    skipBatches: str = Field("", max_length=4096)
    """Step ranges whose batches are skipped."""
    lrScale: float = Field(1.0, gt=0, le=1)
    """Learning-rate multiplier after rollbacks."""
    restartAfter: Timestamp | None = None
    """Backoff: the next attempt's pods are created after this time."""
    restartTime: Timestamp | None = None
    """When the last gang restart was decided (recovery time runs until all pods run again)."""
    lastFailure: Message = ""
    """The last failure's reason and message."""
    highestStep: int = Field(0, ge=0, le=10**12)
    """The highest step any attempt reached: steps up to it are redone after a restart."""
    productiveSeconds: float = Field(0.0, ge=0, le=1e12)
    """Wall time spent on steps beyond highestStep (goodputPercent's numerator)."""


class TrainingJobStatus(ApiModel):
    """Observed state of a TrainingJob, written by the operator."""

    state: JobState = "Pending"
    """Summary of the conditions (the State printer column)."""
    observedGeneration: int | None = Field(None, ge=0, le=2**62)
    """metadata.generation the status describes."""
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Latest observations, one per type."""
    startTime: Timestamp | None = None
    """When the operator first created the job's pods."""
    completionTime: Timestamp | None = None
    """When the job succeeded or failed."""
    allRunningTime: Timestamp | None = None
    """When all pods of the first attempt were first running."""
    workers: WorkerCounts = WorkerCounts()
    progress: Progress | None = None
    restarts: RestartCounts = RestartCounts()
    recovery: RecoveryStatus = RecoveryStatus()
    goodputPercent: float | None = Field(None, ge=0, le=100)
    """Share of wall time spent on training steps that were kept."""


# Pods are "<job>-<index>" (a hostname, a label value): the name leaves room for the
# index within 63 characters, and starts with a letter (a DNS-1035 label, the Service).
MAX_JOB_NAME = 52
DNS1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=MAX_JOB_NAME, pattern=DNS1035)
    namespace: str | None = None


class TrainingJob(BaseModel):
    model_config = ConfigDict(extra="allow")
    apiVersion: Literal["kubetrain.io/v1alpha1"]
    kind: Literal["TrainingJob"]
    metadata: ObjectMeta
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None
