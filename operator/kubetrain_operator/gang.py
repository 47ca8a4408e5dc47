"""Gang scheduling: the PodGroup of a job's gang and how its pods join it (pure).

With `spec.scheduling.gang` the operator creates one PodGroup per job (minMember =
numNodes, or an elastic job's minNodes; owned by the job, so deleted with it) and sends
the pods to the gang scheduler, which binds all of them or none: a gang that does not
fit holds no node.
Two schedulers are supported, each reading its own PodGroup kind:

- scheduler-plugins' coscheduling plugin: scheduling.x-k8s.io/v1alpha1 PodGroup, pods
  labelled `scheduling.x-k8s.io/pod-group`, schedulerName scheduler-plugins-scheduler;
- Volcano: scheduling.volcano.sh/v1beta1 PodGroup, pods annotated
  `scheduling.k8s.io/group-name`, schedulerName volcano.

The PodGroup outlives attempts: each attempt's pods are created only once the previous
attempt's are gone (same names), so the group never counts two gangs at once. A
single-pod job is placed whole by any scheduler and gets no PodGroup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetrain_core.api import TrainingJob

Obj = dict[str, Any]


@dataclass(frozen=True)
class GangKind:
    """One gang scheduler: its PodGroup API and how a pod names its group."""

    group: str
    version: str
    scheduler_name: str
    member_label: str | None = None
    member_annotation: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


PLURAL = "podgroups"  # of both kinds
KINDS = {
    "Coscheduling": GangKind(
        "scheduling.x-k8s.io",
        "v1alpha1",
        "scheduler-plugins-scheduler",
        member_label="scheduling.x-k8s.io/pod-group",
    ),
    "Volcano": GangKind(
        "scheduling.volcano.sh",
        "v1beta1",
        "volcano",
        member_annotation="scheduling.k8s.io/group-name",
    ),
}


def kind_of(job: TrainingJob) -> GangKind | None:
    """The gang scheduler the job's pods go to; None: no PodGroup (no gang asked for, or
    a single pod, which every scheduler places whole)."""
    gang = job.spec.scheduling.gang
    if gang is None or job.spec.numNodes < 2:
        return None
    return KINDS[gang.podGroup]


def group_name(job: TrainingJob) -> str:
    return job.metadata.name


def pod_group(job: TrainingJob, meta: Obj) -> Obj | None:
    """The job's PodGroup (`meta`: its name, namespace, labels and owner), or None."""
    kind, gang = kind_of(job), job.spec.scheduling.gang
    if kind is None or gang is None:
        return None
    spec: Obj = {"minMember": job.spec.min_nodes()}
    if gang.podGroup == "Coscheduling":
        spec["scheduleTimeoutSeconds"] = gang.scheduleTimeoutSeconds
    elif gang.volcanoQueue:
        spec["queue"] = gang.volcanoQueue
    priority = job.spec.template.spec.get("priorityClassName")
    if priority and gang.podGroup == "Volcano":
        spec["priorityClassName"] = priority
    return {"apiVersion": kind.api_version, "kind": "PodGroup", "metadata": meta, "spec": spec}


def pod_labels(job: TrainingJob) -> dict[str, str]:
    kind = kind_of(job)
    if kind is None or kind.member_label is None:
        return {}
    return {kind.member_label: group_name(job)}


def pod_annotations(job: TrainingJob) -> dict[str, str]:
    kind = kind_of(job)
    if kind is None or kind.member_annotation is None:
        return {}
    return {kind.member_annotation: group_name(job)}


def scheduler_name(job: TrainingJob) -> str | None:
    """The gang scheduler's usual name, unless the template names one (an admin may run
    it under another name)."""
    kind = kind_of(job)
    if kind is None or job.spec.template.spec.get("schedulerName"):
        return None
    return kind.scheduler_name


def missing_api_message(obj: Obj) -> str:
    """Why a PodGroup create found no API (404): what to install or change."""
    return (
        f"spec.scheduling.gang: this cluster has no {obj['apiVersion']} PodGroup API;"
        " install that gang scheduler (docs/operations.md) or remove spec.scheduling.gang"
    )
