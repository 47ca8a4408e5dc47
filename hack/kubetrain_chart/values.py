"""The Helm chart's values, typed: what values.schema.json says (types, bounds, enums).

Defaults and descriptions are not here: they live in helm/kubetrain/values.yaml (its
`# --` comments), and schema.py joins the two. Every field is required, because Helm
validates the values merged over values.yaml: a key missing there is a key missing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kubetrain_core.config.base import CHECKPOINT_URI_PATTERN, ENDPOINT_PATTERN

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"  # a Secret name
IMAGE_TAG = r"^[A-Za-z0-9_.-]{0,128}$"
DURATION = r"^([0-9]+(ms|s|m|h))+$"
Object = dict[str, Any]  # a Kubernetes object the API server validates
StringMap = dict[str, str]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[int, Field(ge=0, le=86_400)]
Name = Annotated[str, Field(max_length=253)]


def _empty_or(pattern: str) -> str:
    """`pattern`, or the empty string (unset)."""
    return f"^$|{pattern}"


class Values(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Image(Values):
    repository: str = Field(min_length=1)
    tag: str = Field(pattern=IMAGE_TAG)


class OperatorImage(Image):
    pullPolicy: Literal["Always", "IfNotPresent", "Never"]


class PullSecret(Values):
    name: str = Field(min_length=1)


class Resources(Values):
    requests: dict[str, str | int]
    limits: dict[str, str | int]


class Operator(Values):
    image: OperatorImage
    imagePullSecrets: list[PullSecret]
    replicaCount: int = Field(ge=1, le=5)
    logLevel: Literal["info", "debug"]
    watchNamespaces: list[Annotated[str, Field(pattern=DNS1123_LABEL)]] = Field(
        json_schema_extra={"uniqueItems": True}
    )
    defaultTrainerImage: str
    defaultCheckpointUri: str = Field(pattern=_empty_or(CHECKPOINT_URI_PATTERN))
    defaultS3Endpoint: str = Field(pattern=_empty_or(ENDPOINT_PATTERN))
    defaultCredentialsSecret: Name
    reconcileIntervalSeconds: int = Field(ge=1, le=3600)
    restartBackoffSeconds: int = Field(ge=0, le=3600)
    restartBackoffMaxSeconds: Seconds
    failureSettleSeconds: Seconds
    ncclEnv: dict[str, str]
    healthPort: Port
    metricsPort: Port
    extraEnv: list[Object]
    resources: Resources
    podSecurityContext: Object
    securityContext: Object
    nodeSelector: StringMap
    tolerations: list[Object]
    affinity: Object
    priorityClassName: str
    podLabels: StringMap
    podAnnotations: StringMap


class Trainer(Values):
    image: Image


FieldName = Annotated[str, Field(pattern=r"^[a-zA-Z]+$")]


class Admission(Values):
    enabled: bool
    extraPodFields: list[FieldName] = Field(json_schema_extra={"uniqueItems": True})
    extraVolumeTypes: list[FieldName] = Field(json_schema_extra={"uniqueItems": True})
    allowSecretEnv: bool


class NetworkPolicy(Values):
    enabled: bool
    metricsPeers: list[Object]


class ServiceAccount(Values):
    create: bool
    name: Name
    annotations: StringMap


class Rbac(Values):
    create: bool


class Notifications(Values):
    extraSecretNames: list[Annotated[str, Field(max_length=253, pattern=DNS1123)]] = Field(
        json_schema_extra={"uniqueItems": True}
    )
    allowPrivateWebhooks: bool


class Crds(Values):
    enabled: bool
    keep: bool


class MetricsService(Values):
    enabled: bool
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"]
    annotations: StringMap


class Metrics(Values):
    service: MetricsService


class Monitor(Values):
    enabled: bool
    interval: str = Field(pattern=DURATION)
    labels: StringMap


class PrometheusRule(Values):
    enabled: bool
    labels: StringMap
    stalledMinutes: int = Field(ge=1, le=1440)
    checkpointMaxAgeSeconds: int = Field(ge=60)
    restartStormThreshold: int = Field(ge=1, le=1000)


class Dashboards(Values):
    enabled: bool
    namespace: str = Field(max_length=63)
    label: str = Field(min_length=1)
    labelValue: str
    annotations: StringMap


class HelmTest(Values):
    enabled: bool


class ChartValues(Values):
    nameOverride: str = Field(max_length=63)
    fullnameOverride: str = Field(max_length=63)
    commonLabels: StringMap
    operator: Operator
    trainer: Trainer
    admission: Admission
    networkPolicy: NetworkPolicy
    serviceAccount: ServiceAccount
    rbac: Rbac
    notifications: Notifications
    crds: Crds
    metrics: Metrics
    serviceMonitor: Monitor
    podMonitor: Monitor
    prometheusRule: PrometheusRule
    dashboards: Dashboards
    helmTest: HelmTest
