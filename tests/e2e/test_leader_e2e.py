"""Two operator replicas elect one leader on a Lease; only the leader acts, and when it
dies the other takes over without disturbing the running job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kubetrain_devcluster.jobs import (
    apply_job,
    job_pods,
    job_status,
    short_job,
    wait_checkpoint,
    wait_state,
)
from kubetrain_devcluster.operator import OperatorProcess, create_s3_secret, install
from localkube.services import wait_until

if TYPE_CHECKING:
    from localkube.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def replicas(cluster: Cluster, tmp_path: Path) -> Iterator[list[OperatorProcess]]:
    install(cluster)
    ops = [
        OperatorProcess(cluster, tmp_path / f"replica-{i}", args=("--leader-elect",))
        for i in range(2)
    ]
    for op in ops:
        op.workdir.mkdir()
        op.write_kubeconfig()
        op.start()
    yield ops
    for op in ops:
        op.kill()


def _log(op: OperatorProcess) -> str:
    return op.log_path.read_text(errors="replace")


def test_one_leader_acts_and_the_other_takes_over(
    cluster: Cluster, replicas: list[OperatorProcess], namespace: str
) -> None:
    wait_until(lambda: sum(op.ready() for op in replicas) == 1, timeout=60, what="one leader")
    leader, follower = sorted(replicas, key=lambda op: not op.ready())
    name = "led"
    create_s3_secret(cluster, namespace)
    job = short_job(name)
    job["spec"]["trainer"]["training"]["max_steps"] = 300
    apply_job(cluster, namespace, job)
    wait_state(cluster, leader, namespace, name, state="Running", timeout=120)
    wait_checkpoint(cluster, namespace, name, timeout=300)
    assert "created Pod" in _log(leader)
    assert "created" not in _log(follower) and not follower.ready()  # it waited, acting on nothing

    leader.kill()
    wait_until(follower.ready, timeout=60, what="the follower to lead")
    status = wait_state(cluster, follower, namespace, name, state="Succeeded", timeout=600)
    assert status["progress"]["step"] == 300
    assert status["restarts"]["total"] == 0  # the gang ran on through the handover
    names = sorted(p["metadata"]["name"] for p in job_pods(cluster, namespace, name))
    assert names == [f"{name}-0", f"{name}-1"]  # one gang, never two
    assert "leading" in _log(follower)
    assert job_status(cluster, namespace, name)["recovery"]["attempt"] == 0
