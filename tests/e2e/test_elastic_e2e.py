"""An elastic TrainingJob (spec.elastic, min 1, max 2) on the local cluster: a node stop
takes pod 1, pod 0 trains on alone without waiting for a replacement, and the gang
grows back to two when a node with room joins; the run ends at its exact step count,
with no gang restart. Two nodes of its own, 1 CPU each, so each holds one worker and
the recreated pod 1 has nowhere to go until the third node comes.

The figures (node stop to the first step of the shrunk gang; replacement node Ready
to the first step of the regrown one) are printed and recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from kubetrain_devcluster.jobs import apply_job, job_pods, job_status, short_job, wait_state
from kubetrain_devcluster.operator import OperatorProcess, create_s3_secret
from localkube.api import MERGE_PATCH
from localkube.kubelet import NodeSpec
from localkube.services import wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from localkube.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LABEL = "kubetrain.io/elastic-test-node"
STEPS = 600
NAME = "elastic"


def _add_node(cluster: Cluster, group: str) -> str:
    node = f"{group}-{secrets.token_hex(3)}"
    cluster.add_node(NodeSpec(node, cpu="1", labels={LABEL: group}))
    taint = {"key": LABEL, "value": group, "effect": "NoSchedule"}
    body = {"spec": {"taints": [taint]}}
    cluster.api.request("PATCH", f"/api/v1/nodes/{node}", body, content_type=MERGE_PATCH)
    return node


@pytest.fixture
def nodes(cluster: Cluster) -> Iterator[list[str]]:
    group = f"elastic-{secrets.token_hex(2)}"
    made = [_add_node(cluster, group) for _ in range(2)]
    try:
        yield made
    finally:
        for node in made:
            cluster.stop_node(node)
            cluster.api.request("DELETE", f"/api/v1/nodes/{node}")


def _job(group: str) -> dict[str, Any]:
    job = short_job(NAME)
    spec = job["spec"]
    spec["trainer"]["training"]["max_steps"] = STEPS
    spec["trainer"]["metrics"]["log_steps"] = 1  # every step in rank 0's log
    spec["elastic"] = {"minNodes": 1}
    spec["faultTolerance"] |= {"inPlaceRestarts": 3, "nodeFailureTolerationSeconds": 5}
    spec["template"] = {
        "spec": {
            "nodeSelector": {LABEL: group},
            "tolerations": [{"key": LABEL, "operator": "Equal", "value": group}],
        }
    }
    return job


def _pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return next(p for p in job_pods(cluster, namespace, NAME) if p["metadata"]["name"] == name)


def _starts(log: Path) -> list[tuple[int, int | None]]:
    """Each start of rank 0's workers: its world size and the first step it logged."""
    text = log.read_text(errors="replace")
    parts = re.split(r"world of (\d+) ranks", text)[1:]
    found = [re.search(r"^step (\d+)/", rest, re.MULTILINE) for rest in parts[1::2]]
    return [
        (int(w), int(f.group(1)) if f else None) for w, f in zip(parts[::2], found, strict=True)
    ]


def _trains_as(log: Path, world: int, after: int) -> int | None:
    """The first step of the first start after the first `after` starts whose world is
    `world`, once it has one."""
    later = [s for s in _starts(log)[after:] if s[0] == world]
    return later[0][1] if later else None


def _seconds_until_trains_as(log: Path, world: int, after: int, what: str) -> float:
    """Seconds from now until a start after the first `after` trains with `world` ranks."""
    began = time.monotonic()
    wait_until(lambda: _trains_as(log, world, after) is not None, timeout=240, what=what)
    return time.monotonic() - began


def test_an_elastic_gang_trains_through_a_node_stop_and_grows_back(
    cluster: Cluster, operator: OperatorProcess, namespace: str, nodes: list[str]
) -> None:
    create_s3_secret(cluster, namespace)
    group = cluster.api.get(f"/api/v1/nodes/{nodes[0]}")["metadata"]["labels"][LABEL]
    apply_job(cluster, namespace, _job(group))
    wait_until(
        lambda: (job_status(cluster, namespace, NAME).get("progress") or {}).get("step", 0) >= 60,
        timeout=300,
        what="the gang of two to train 60 steps",
    )
    status = job_status(cluster, namespace, NAME)
    assert status["progress"]["worldSize"] == 2 and status["progress"]["globalBatchSize"] == 16
    log = cluster.pod_log_path(namespace, f"{NAME}-0", "trainer")
    lost = cluster.pod_node(namespace, f"{NAME}-1")

    # A gang starts once minNodes run and grows as the rest come: the starts so far.
    assert _starts(log)[-1][0] == 2
    started = len(_starts(log))
    cluster.stop_node(lost)  # pod 1 and its node are gone
    shrunk_s = _seconds_until_trains_as(log, 1, started, "pod 0 to train on alone")
    alone_from = _trains_as(log, 1, started)
    shrunk = len(_starts(log))

    def short() -> bool:
        st = job_status(cluster, namespace, NAME)
        running = next(c for c in st["conditions"] if c["type"] == "Running")
        progress = st.get("progress") or {}
        return running["reason"] == "ElasticGangShort" and progress.get("worldSize") == 1

    wait_until(short, timeout=120, what="status to show the gang of one")
    assert not _pod(cluster, namespace, f"{NAME}-1")["spec"].get("nodeName"), "nowhere to go"
    before = (job_status(cluster, namespace, NAME).get("progress") or {}).get("step", 0)
    wait_until(
        lambda: job_status(cluster, namespace, NAME)["progress"]["step"] > before + 5,
        timeout=60,
        what="the gang of one to train on meanwhile",
    )
    assert not _pod(cluster, namespace, f"{NAME}-1")["spec"].get("nodeName"), "still nowhere"

    nodes.append(_add_node(cluster, group))  # capacity returns
    grown_s = _seconds_until_trains_as(log, 2, shrunk, "the gang to grow back to two")
    status = wait_state(cluster, operator, namespace, NAME, state="Succeeded", timeout=600)
    assert status["progress"]["step"] == STEPS
    assert status["restarts"]["total"] == 0  # never a gang restart
    assert status["progress"]["globalBatchSize"] == 16  # kept through every size
    print(
        f"\nelastic: node stop -> first step of the gang of one {shrunk_s:.1f} s"
        f" (from step {alone_from}); new node Ready -> first step of two {grown_s:.1f} s"
    )
