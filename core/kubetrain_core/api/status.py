"""status: what the operator observed and decided (conditions, progress, restarts, the
recovery memory across attempts)."""

from __future__ import annotations

import typing
from typing import Annotated, Literal

from pydantic import Field

from kubetrain_core.api.base import ApiModel
from kubetrain_core.api.notifications import NotificationStatus

ConditionType = Literal[
    "Created",
    "Queued",
    "Running",
    "Restarting",
    "Succeeded",
    "Failed",
    "Suspended",
    "ProgressReadable",
]
JobState = Literal[
    "Pending", "Created", "Queued", "Running", "Restarting", "Suspended", "Succeeded", "Failed"
]
JOB_STATES: tuple[JobState, ...] = typing.get_args(JobState)
# The state summarises the conditions: the first of these that is True names it (each is
# a condition type and a state); none: Pending.
STATE_PRECEDENCE: tuple[JobState, ...] = (
    "Failed",
    "Succeeded",
    "Suspended",
    "Restarting",
    "Running",
    "Queued",
    "Created",
)
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
    workerRestarts: int | None = Field(None, ge=0, le=1000)
    """Times the running attempt's workers were restarted inside their pods
    (faultTolerance.inPlaceRestarts), as rank 0's torchrun counts them."""
    worldSize: int | None = Field(None, ge=1, le=65536)
    """Processes training now: an elastic gang's present size x numProcPerNode."""
    globalBatchSize: int | None = Field(None, ge=1, le=2**40)
    """Sequences per optimizer step; an elastic gang keeps it (docs/operations.md)."""
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
    """Restarts after a node failed, or its kubelet or taint manager evicted a pod."""
    nan: int = Field(0, ge=0, le=1_000_000)
    """Rollbacks after non-finite loss."""
    error: int = Field(0, ge=0, le=1_000_000)
    """Restarts after a worker crashed or was killed."""
    hang: int = Field(0, ge=0, le=1_000_000)
    """Restarts after progress stalled for faultTolerance.progressDeadlineSeconds."""
    preempted: int = Field(0, ge=0, le=1_000_000)
    """Restarts after a preemption (the scheduler, Kueue) or an eviction through the
    Eviction API (a drain): the workers saved on SIGTERM; not counted against
    faultTolerance.maxRestarts."""
    startupTimeout: int = Field(0, ge=0, le=1_000_000)
    """Gangs released because a worker was not running faultTolerance.startupDeadlineSeconds
    after it was created (onStartupTimeout Restart); not counted against maxRestarts."""


# The causes a gang restart is counted under (status.restarts, the operator's metrics).
RESTART_CAUSES: tuple[str, ...] = tuple(f for f in RestartCounts.model_fields if f != "total")


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
    notifications: NotificationStatus | None = None
