"""Kueue's plain pod groups: how a TrainingJob waits in a queue (pure).

A job labelled `kueue.x-k8s.io/queue-name` (Kueue's label, on the job as on any job
kind) hands each attempt's gang to Kueue as one pod group, admitted all or nothing:
every pod carries the queue name, the group name `<job>-<attempt>` and the group's
size, and Kueue's webhook gates the pods (`kueue.x-k8s.io/admission`) until the group's
Workload has quota. Kueue integrates pods, not custom resources, without Go code of
ours: this is its documented path for other controllers.

A group is not retriable in Kueue's sense: when a gang fails, its pods finish the
Workload, Kueue releases them and the quota, and the operator's next attempt is a new
group that queues again (a retriable group would hold its pods until replacements of
the same names exist, which the operator creates only once the old ones are gone). A
preemption is Kueue's TerminationTarget condition on the pods (pod_facts).
"""

from __future__ import annotations

from typing import Any

from kubetrain_core.api import TrainingJob

GROUP = "kueue.x-k8s.io"
QUEUE_LABEL = f"{GROUP}/queue-name"
GROUP_LABEL = f"{GROUP}/pod-group-name"
GROUP_COUNT_ANNOTATION = f"{GROUP}/pod-group-total-count"
RETRIABLE_ANNOTATION = f"{GROUP}/retriable-in-group"
ADMISSION_GATE = f"{GROUP}/admission"
VERSION = "v1beta2"  # Kueue v0.17's storage version
WORKLOADS = "workloads"  # plural, in GROUP/VERSION

Obj = dict[str, Any]


def queue_of(job: TrainingJob) -> str | None:
    """The LocalQueue the job asks for, or None: not queued through Kueue."""
    labels = (job.metadata.model_extra or {}).get("labels") or {}
    queue = labels.get(QUEUE_LABEL)
    return str(queue) if queue else None


def group_name(job: TrainingJob, attempt: int) -> str:
    """The pod group (and Kueue's Workload) of one attempt's gang."""
    return f"{job.metadata.name}-{attempt}"


def pod_labels(job: TrainingJob, attempt: int) -> dict[str, str]:
    queue = queue_of(job)
    return {} if queue is None else {QUEUE_LABEL: queue, GROUP_LABEL: group_name(job, attempt)}


def pod_annotations(job: TrainingJob) -> dict[str, str]:
    if queue_of(job) is None:
        return {}
    return {GROUP_COUNT_ANNOTATION: str(job.spec.numNodes), RETRIABLE_ANNOTATION: "false"}


def gated(pod: Obj) -> bool:
    """Whether Kueue still holds the pod back (not admitted yet)."""
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(g.get("name") == ADMISSION_GATE for g in gates)


def waiting_reason(workload: Obj | None) -> str:
    """Why Kueue has not admitted a group, in Kueue's words (its Workload's QuotaReserved
    condition), or what is known without it."""
    for cond in ((workload or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "QuotaReserved" and cond.get("status") == "False":
            return str(cond.get("message") or cond.get("reason") or "pending")[:1024]
    if workload is None:
        return "Kueue has not made the gang's Workload yet"
    return "pending"
