"""Elastic gangs: the spec's rules, the c10d command, the global batch every size keeps,
and the reconcile decisions (a lost member is replaced while the rest trains on)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubetrain_core.api import RecoveryStatus, TrainingJob
from kubetrain_core.config import OptimizationConfig
from kubetrain_core.contract import TerminationMessage
from kubetrain_operator import builders
from kubetrain_operator.actions import (
    Action,
    CreateObject,
    DeletePods,
    EmitEvent,
    Observed,
    PatchStatus,
)
from kubetrain_operator.progress import parse_progress
from kubetrain_operator.reconcile import reconcile
from kubetrain_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(default_checkpoint_uri="s3://ckpt", restart_backoff_seconds=10)
RUNNING = {
    "state": "Running",
    "startTime": "2026-01-01T11:59:30Z",
    "conditions": [{"type": "Running", "status": "True", "reason": "AllWorkersRunning"}],
}


def _data(**spec: Any) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
    data["metadata"] |= {"namespace": "ns", "uid": "u1", "generation": 1}
    data["spec"] |= {
        "numNodes": 3,
        "elastic": {"minNodes": 1},
        "faultTolerance": {"inPlaceRestarts": 3},
    } | spec
    return data


def _job(status: dict[str, Any] | None = None, **spec: Any) -> TrainingJob:
    data = _data(**spec)
    if status is not None:
        data["status"] = status
    return TrainingJob.model_validate(data)


def _pod(index: int, phase: str, node: str = "", **status: Any) -> dict[str, Any]:
    pod = builders.build_pod(_job(), index, RecoveryStatus(), SETTINGS)
    pod["status"] = {"phase": phase, **status}
    pod["spec"]["nodeName"] = node or f"n{index}"
    return pod


def _exited(code: int, reason: str = "") -> dict[str, Any]:
    term: dict[str, Any] = {"exitCode": code}
    if reason:
        term["message"] = TerminationMessage(reason, "why").to_json()
    return {"containerStatuses": [{"name": "trainer", "state": {"terminated": term}}]}


def _run(
    job: TrainingJob, pods: list[dict[str, Any]], lost: frozenset[str] = frozenset()
) -> list[Action]:
    config = builders.build_configmap(job, SETTINGS)["data"]
    observed = Observed(pods, True, config, NOW, lost_nodes=lost)
    return reconcile(job, observed, SETTINGS)


def _status(actions: list[Action]) -> dict[str, Any]:
    return next(a.status for a in actions if isinstance(a, PatchStatus))


def _deleted(actions: list[Action]) -> list[DeletePods]:
    return [a for a in actions if isinstance(a, DeletePods)]


def _running(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Running")


# ---- the spec ---------------------------------------------------------------------------


def test_min_nodes_must_be_below_num_nodes_and_in_place_restarts_set() -> None:
    with pytest.raises(ValidationError, match="minNodes must be below numNodes"):
        _job(elastic={"minNodes": 3})
    with pytest.raises(ValidationError, match=r"inPlaceRestarts >= 1"):
        _job(faultTolerance={})
    assert _job().spec.min_nodes() == 1
    assert _job(elastic=None).spec.min_nodes() == 3


def test_the_trainer_config_sizes_the_global_batch_for_the_largest_gang() -> None:
    cfg = builders.worker_config(_job(numProcPerNode=2), SETTINGS)
    assert yaml.safe_load(cfg)["optimization"]["global_batch_ranks"] == 6
    fixed = builders.worker_config(_job(elastic=None), SETTINGS)
    assert yaml.safe_load(fixed)["optimization"].get("global_batch_ranks") is None
    data = _data()
    data["spec"]["trainer"].setdefault("optimization", {})["global_batch_ranks"] = 2
    with pytest.raises(ValidationError, match=r"optimization\.global_batch_ranks"):
        TrainingJob.model_validate(data)


def test_every_world_size_runs_the_same_micro_batches_per_step() -> None:
    opt = OptimizationConfig(accumulation_steps=2, global_batch_ranks=4)
    assert [opt.micro_batches(w) for w in (4, 2, 1)] == [2, 4, 8]  # 8 micro-batches a step
    assert opt.micro_batches(3) == 3  # 9: rounded up where 3 ranks cannot split 8
    assert OptimizationConfig(accumulation_steps=3).micro_batches(5) == 3  # not elastic


# ---- the pods -----------------------------------------------------------------------------


def test_an_elastic_gang_rendezvous_with_c10d_on_pod_zero() -> None:
    job = _job()
    name = job.metadata.name
    zero, two = (builders.torchrun_command(job, i, SETTINGS) for i in (0, 2))
    assert "--nnodes=1:3" in zero and f"--rdzv-endpoint={name}-0.{name}:29400" in zero
    assert "--rdzv-backend=c10d" in zero and "--max-restarts=3" in zero
    conf = next(a for a in zero if a.startswith("--rdzv-conf="))
    assert "is_host=true" in conf and "is_host=false" in next(
        a for a in two if a.startswith("--rdzv-conf=")
    )
    assert f"--local-addr={name}-2.{name}" in two  # c10d ranks by address: pod 0 first
    assert not [a for a in zero if a.startswith(("--node-rank", "--master-addr"))]
    env = {
        e["name"]: e.get("value") for e in builders.build_env(job, 0, RecoveryStatus(), SETTINGS)
    }
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    fixed = _job(elastic=None)
    assert "--node-rank=2" in builders.torchrun_command(fixed, 2, SETTINGS)
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in str(
        builders.build_env(fixed, 0, RecoveryStatus(), SETTINGS)
    )


def test_the_pod_group_needs_only_min_nodes() -> None:
    job = _job(scheduling={"gang": {}})
    group = builders.build_pod_group(job)
    assert group is not None and group["spec"]["minMember"] == 1


# ---- reconcile ------------------------------------------------------------------------------


def test_a_lost_member_is_replaced_while_the_rest_trains_on() -> None:
    job = _job(RUNNING)
    pods = [_pod(0, "Running"), _pod(1, "Running"), _pod(2, "Running")]
    actions = _run(job, pods, lost=frozenset({"n1"}))
    status = _status(actions)
    assert status["recovery"].get("attempt", 0) == 0 and status["restarts"]["total"] == 0
    name = job.metadata.name
    assert _deleted(actions) == [DeletePods((f"{name}-1",), "WorkerLost", grace_seconds=0)]
    assert any(isinstance(a, EmitEvent) and a.reason == "WorkerLost" for a in actions)
    running = _running(status)
    assert running["status"] == "True" and running["reason"] == "ElasticGangShort"
    assert "2 of 3 workers running" in running["message"]

    # Once its pod is gone it is created anew, same attempt, and joins when it runs.
    actions = _run(_job(status), [pods[0], pods[2]])
    created = [a.body for a in actions if isinstance(a, CreateObject) and a.body["kind"] == "Pod"]
    assert [p["metadata"]["name"] for p in created] == [f"{name}-1"]
    assert created[0]["metadata"]["labels"][builders.ATTEMPT_LABEL] == "0"
    assert not _deleted(actions)


def test_a_member_whose_trainer_crashed_is_replaced_the_same_way() -> None:
    job = _job(RUNNING)
    pods = [_pod(0, "Running"), _pod(1, "Running"), _pod(2, "Failed", **_exited(1))]
    actions = _run(job, pods)
    assert _deleted(actions) == [DeletePods((f"{job.metadata.name}-2",), "WorkerLost")]
    assert _status(actions)["restarts"]["total"] == 0


@pytest.mark.parametrize(
    ("why", "pods", "lost"),
    [
        ("pod 0 hosts the rendezvous", [("Running", {}), ("Failed", _exited(1))], {"n0"}),
        ("below minNodes", [("Running", {}), ("Failed", _exited(1)), ("Running", {})], {"n2"}),
        (
            "a NaN needs a rollback",
            [("Running", {}), ("Failed", _exited(65, "NaNUnrecoverable"))],
            set(),
        ),
        ("a preemption", [("Running", {}), ("Failed", _exited(143, "Preempted"))], set()),
    ],
)
def test_what_needs_the_whole_gang_restarts_it(
    why: str, pods: list[tuple[str, dict[str, Any]]], lost: set[str]
) -> None:
    min_nodes = 2 if why == "below minNodes" else 1
    job = _job(RUNNING, elastic={"minNodes": min_nodes})
    gang = [_pod(i, phase, **extra) for i, (phase, extra) in enumerate(pods)]
    status = _status(_run(job, gang, lost=frozenset(lost)))
    assert status["recovery"]["attempt"] == 1, why
    assert status["state"] == "Restarting", why


def test_a_replacement_waiting_for_capacity_neither_times_out_nor_blocks_success() -> None:
    job = _job(RUNNING, faultTolerance={"inPlaceRestarts": 1, "onStartupTimeout": "Restart"})
    waiting = _pod(1, "Pending")
    waiting["metadata"]["creationTimestamp"] = "2026-01-01T10:00:00Z"  # hours ago
    pods = [_pod(0, "Running"), waiting, _pod(2, "Running")]
    status = _status(_run(job, pods))
    assert status["recovery"].get("attempt", 0) == 0 and _running(status)["status"] == "True"

    done = _pod(0, "Succeeded", **_exited(0, "Succeeded"))
    finished = _status(_run(job, [done, waiting, _pod(2, "Succeeded", **_exited(0))]))
    assert finished["state"] == "Succeeded"


def test_progress_reports_the_world_and_the_global_batch() -> None:
    progress = parse_progress({"step": 5, "worldSize": 2, "globalBatchSize": 64})
    assert progress is not None and (progress.worldSize, progress.globalBatchSize) == (2, 64)
    odd = parse_progress({"step": 5, "worldSize": 0, "globalBatchSize": "x"})
    assert odd is not None and odd.worldSize is None and odd.globalBatchSize is None


def test_a_fixed_gang_still_restarts_whole_on_a_lost_node() -> None:
    job = _job(RUNNING, elastic=None)
    pods = [_pod(0, "Failed", **_exited(1)), _pod(1, "Running"), _pod(2, "Running")]
    actions = _run(job, pods, lost=frozenset({"n1"}))
    status = _status(actions)
    assert status["recovery"]["attempt"] == 1 and status["restarts"]["nodeFailure"] == 1
