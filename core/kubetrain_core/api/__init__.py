"""The TrainingJob API (kubetrain.io/v1alpha1) as pydantic models: one source of truth.

`spec.trainer` embeds the trainer's own TrainingConfig (snake_case) so that one
config file runs the same under `kubetrain train`, `kubetrain run` and the
operator. Kubernetes-native parts (resources, env, pod template pieces) are
kept as free-form objects here and validated by the API server's own types.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kubetrain_core.api.base import DNS1123, QUALIFIED_NAME, ApiModel
from kubetrain_core.api.notifications import (
    JOB_EVENTS,
    JobEvent,
    NotificationsSpec,
    NotificationStatus,
    SecretKeyRef,
    WebhookRef,
)
from kubetrain_core.api.spec import (
    CHECKPOINT_FIELDS,
    SET_BY_THE_JOB,
    CheckpointSpec,
    ElasticSpec,
    FaultToleranceSpec,
    MonitoringSpec,
    NaNPolicy,
    PodTemplateOverrides,
    RunPolicy,
    S3Settings,
    TemplateMetadata,
    TrainingJobSpec,
)
from kubetrain_core.api.status import (
    JOB_STATES,
    RESTART_CAUSES,
    STATE_PRECEDENCE,
    CheckpointRef,
    Condition,
    ConditionType,
    JobState,
    Progress,
    RecoveryStatus,
    RestartCounts,
    TrainingJobStatus,
    WorkerCounts,
)

__all__ = [
    "CHECKPOINT_FIELDS",
    "DNS1123",
    "JOB_EVENTS",
    "JOB_STATES",
    "MAX_JOB_NAME",
    "QUALIFIED_NAME",
    "RESTART_CAUSES",
    "SET_BY_THE_JOB",
    "STATE_PRECEDENCE",
    "ApiModel",
    "CheckpointRef",
    "CheckpointSpec",
    "Condition",
    "ConditionType",
    "ElasticSpec",
    "FaultToleranceSpec",
    "JobEvent",
    "JobState",
    "MonitoringSpec",
    "NaNPolicy",
    "NotificationStatus",
    "NotificationsSpec",
    "ObjectMeta",
    "PodTemplateOverrides",
    "Progress",
    "RecoveryStatus",
    "RestartCounts",
    "RunPolicy",
    "S3Settings",
    "SecretKeyRef",
    "TemplateMetadata",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "WebhookRef",
    "WorkerCounts",
]

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
