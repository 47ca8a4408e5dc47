"""What the operator adds to workers for multi-node GPU training (builders): a
memory-backed /dev/shm of spec.shmSize, and NCCL settings for GPU jobs (pure)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tests.unit.test_reconcile import SETTINGS, _job

from kubetrain_core.api import RecoveryStatus, TrainingJob
from kubetrain_operator import builders

GPU = {"limits": {"nvidia.com/gpu": 1}}


def _pod(job: TrainingJob, **settings: Any) -> dict[str, Any]:
    return builders.build_pod(job, 0, RecoveryStatus(), replace(SETTINGS, **settings))


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


def test_shm_size_mounts_a_memory_backed_dev_shm_of_that_size() -> None:
    pod = _pod(_job(shmSize="8Gi"))
    [shm] = [v for v in pod["spec"]["volumes"] if v["name"] == builders.SHM_VOLUME]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    mounts = {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/dev/shm"] == builders.SHM_VOLUME
    plain = _pod(_job())
    assert builders.SHM_VOLUME not in [v["name"] for v in plain["spec"]["volumes"]]


def test_gpu_workers_get_ncc_defaults_then_the_clusters_settings_then_their_own() -> None:
    cluster = {"NCCL_SOCKET_IFNAME": "eth0", "NCCL_DEBUG": "INFO"}
    own = [{"name": "NCCL_SOCKET_IFNAME", "value": "ib0"}]
    env = _env(_pod(_job(resources=GPU, env=own), nccl_env=cluster))
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"  # the operator's default
    assert env["NCCL_DEBUG"] == "INFO"  # the cluster's over the default
    assert env["NCCL_SOCKET_IFNAME"] == "ib0"  # the job's over the cluster's
    names = [e["name"] for e in _pod(_job(resources=GPU, env=own))["spec"]["containers"][0]["env"]]
    assert names.count("NCCL_SOCKET_IFNAME") == 1  # one entry: no duplicate names
    cpu = _env(_pod(_job(), nccl_env=cluster))
    assert not [k for k in cpu if k.startswith(("NCCL_", "TORCH_NCCL_"))]
