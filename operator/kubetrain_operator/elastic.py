"""Elastic gangs (spec.elastic): which lost workers the gang goes on without (pure).

Pod 0 hosts torchrun's c10d rendezvous store and global rank 0. While it runs, the
other pods may go: torchrun's agents re-form the gang without a lost member (every
worker restarts in place and resumes from the newest checkpoint) as long as minNodes
remain, and the operator recreates the lost member's pod, which joins when it runs:
torchrun restarts the workers once more and the gang is whole again. Every loss costs
the survivors one of faultTolerance.inPlaceRestarts (their workers fail with the peer),
so a member that keeps failing ends in a gang restart, under maxRestarts as usual.
Whatever needs the whole gang (pod 0 lost, a NaN rollback, an invalid config, a
preemption, fewer than minNodes left) takes the gang path.
"""

from __future__ import annotations

from typing import Any

from kubetrain_core.api import TrainingJob
from kubetrain_core.policy import Cause
from kubetrain_operator.pod_facts import failure_of, index_of, node_of, phase_of

Obj = dict[str, Any]

# Failures of one member that its peers can survive: its process or its node.
MEMBER_CAUSES = (Cause.ERROR, Cause.NODE_FAILURE)


def lost_members(
    job: TrainingJob, live: dict[int, Obj], failed: list[Obj], lost_nodes: frozenset[str]
) -> list[Obj]:
    """The members of an elastic gang to replace while the rest trains on: failed,
    deleted, or on a node that stopped answering. Empty when the job is not elastic or
    the loss needs the whole gang restarted."""
    elastic = job.spec.elastic
    zero = live.get(0)
    if elastic is None or zero is None or zero in failed or node_of(zero) in lost_nodes:
        return []
    gone = [
        p for p in live.values() if index_of(p) != 0 and (p in failed or node_of(p) in lost_nodes)
    ]
    if any(phase_of(p) == "Failed" and failure_of(p)[0] not in MEMBER_CAUSES for p in gone):
        return []  # the trainer's own verdict (NaN, config, preemption): the gang acts on it
    if len(live) - len(gone) < elastic.minNodes:
        return []
    return sorted(gone, key=index_of)


def running_message(job: TrainingJob, running: int) -> str | None:
    """The Running condition's message while an elastic gang trains short of its full
    size, or None when it is full or cannot train."""
    elastic = job.spec.elastic
    if elastic is None or not elastic.minNodes <= running < job.spec.numNodes:
        return None
    return (
        f"{running} of {job.spec.numNodes} workers running (elastic, at least"
        f" {elastic.minNodes}): training on, the rest join when they run"
    )
