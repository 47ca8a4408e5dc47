"""The trainer against real MinIO, its live endpoints, preemption and AMP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from tests.integration.trainer_runs import (
    REPO,
    committed_steps,
    env_with,
    kubetrain,
    losses_by_step,
    records,
    tiny_config,
    write_config,
)

from localkube.s3 import new_bucket, s3_env
from localkube.services import MinioServer, free_port

pytestmark = pytest.mark.integration


def test_checkpoints_go_to_s3_and_a_second_run_resumes_from_them(
    minio: MinioServer, tmp_path: Path
) -> None:
    bucket = new_bucket(minio)
    cfg = tiny_config(
        tmp_path / "run",
        training={"max_steps": 10},
        checkpoint={
            "uri": f"s3://{bucket}/jobs/tiny",
            "keep_last": 2,
            "s3": {"endpoint": minio.endpoint},
        },
    )
    path = write_config(tmp_path / "c.yaml", cfg)
    env = env_with(**s3_env(minio))
    first = kubetrain("train", "--config", str(path), env=env)
    assert first.returncode == 0, first.stderr[-2000:]

    s3 = boto3.client(
        "s3", endpoint_url=minio.endpoint, aws_access_key_id=minio.access_key,
        aws_secret_access_key=minio.secret_key, region_name="us-east-1",
    )  # fmt: skip
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    manifests = sorted(k for k in keys if k.endswith("manifest.json"))
    assert manifests == [
        "jobs/tiny/step-00000005-t0/manifest.json",
        "jobs/tiny/step-00000010-t0/manifest.json",
    ]
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing went to local disk

    second = kubetrain("train", "--config", str(path), "training.max_steps=15", env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    resume = [r for r in records(tmp_path / "run", "event") if r["event"] == "resume"]
    assert resume and resume[-1]["uri"] == f"s3://{bucket}/jobs/tiny/step-00000010-t0"
    assert max(losses_by_step(tmp_path / "run")) == 15


def test_the_model_and_the_logs_outlive_the_run_dir_in_the_store(
    minio: MinioServer, tmp_path: Path
) -> None:
    bucket = new_bucket(minio)
    cfg = tiny_config(
        tmp_path / "run",
        training={"max_steps": 10},
        metrics={"tensorboard": True},
        checkpoint={"uri": f"s3://{bucket}/jobs/tiny", "s3": {"endpoint": minio.endpoint}},
    )
    result = kubetrain(
        "train",
        "--config",
        str(write_config(tmp_path / "c.yaml", cfg)),
        env=env_with(**s3_env(minio)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    s3 = minio.client()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    logs = "jobs/tiny/logs/attempt-0"
    body = s3.get_object(Bucket=bucket, Key=f"{logs}/metrics.jsonl")["Body"].read()
    assert body == (tmp_path / "run" / "metrics.jsonl").read_bytes()  # the whole log, at the end
    assert any(k.startswith(f"{logs}/tensorboard/events.out.tfevents.") for k in keys)
    export = {
        k.removeprefix("jobs/tiny/export/") for k in keys if k.startswith("jobs/tiny/export/")
    }
    assert {
        "model.safetensors",
        "config.json",
        "kubetrain-config.yaml",
        "kubetrain-tokenizer.json",
    } <= export


def test_rank0_serves_metrics_and_progress_while_training(tmp_path: Path) -> None:
    port = free_port()
    # Synchronous uploads: the loop records a commit, and the trainer hangs (below) right
    # after step 10's checkpoint, so an async commit might never reach /progress.
    cfg = tiny_config(
        tmp_path / "run",
        training={"max_steps": 50},
        metrics={"port": port},
        checkpoint={"async_upload": False},
    )
    path = write_config(tmp_path / "c.yaml", cfg)
    # The trainer hangs at step 12 (fault injection) so the endpoints can be read at rest.
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetrain_trainer", "train", "--config", str(path)],
        env=env_with(KUBETRAIN_FAULT_INJECT="hang@step=12", KUBETRAIN_JOB_NAME="tiny"),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        progress: dict = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and progress.get("step") != 12:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=2) as r:
                    progress = json.load(r)
            except OSError:
                continue
        assert progress["step"] == 12 and progress["totalSteps"] == 50
        assert progress["lastCheckpoint"]["step"] == 10
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'kubetrain_step{trainingjob="tiny"} 12.0' in text
        assert "kubetrain_loss{" in text and "kubetrain_tokens_per_second{" in text
        assert "kubetrain_checkpoint_save_seconds_count" in text
    finally:
        proc.kill()
        proc.wait()


def _training_until_signalled(
    tmp_path: Path, launcher: list[str]
) -> tuple[subprocess.Popen[bytes], Path]:
    """The trainer under `launcher` with no end and no periodic checkpoint, once it has
    logged 3 steps; and the path of its termination message. Its stderr: stderr.log."""
    cfg = tiny_config(
        tmp_path / "run", training={"max_steps": 100000}, checkpoint={"interval_steps": 100000}
    )
    log = tmp_path / "termination.json"
    path = write_config(tmp_path / "c.yaml", cfg)
    with (tmp_path / "stderr.log").open("wb") as stderr:  # the child keeps its own copy
        proc = subprocess.Popen(
            [*launcher, "-m", "kubetrain_trainer", "train", "--config", str(path)],
            env=env_with(KUBETRAIN_TERMINATION_LOG=str(log)), cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (
        metrics.exists() and metrics.read_text().count("\n") >= 3
    ):
        time.sleep(0.2)
    return proc, log


def test_sigterm_saves_a_checkpoint_and_exits_preempted(tmp_path: Path) -> None:
    proc, log = _training_until_signalled(tmp_path, [sys.executable])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    message = json.loads(log.read_text())
    assert message["reason"] == "Preempted"
    assert committed_steps(tmp_path / "run" / "checkpoints") == [message["step"]]


def _worker_pids(agent: int) -> dict[int, int]:
    """torchrun's workers by rank: its children, with RANK in their environment."""
    ranks = {}
    for child in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = next((e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[int(rank)] = int(child)
    return ranks


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step_with_one_checkpoint(
    tmp_path: Path,
) -> None:
    """An eviction signals one pod of a gang: its peers must join the save (a collective)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    proc, log = _training_until_signalled(tmp_path, [*torchrun, "--nproc-per-node=2"])
    workers = _worker_pids(proc.pid)
    assert sorted(workers) == [0, 1]
    os.kill(workers[1], signal.SIGTERM)  # rank 1 only; rank 0 hears of it in the all-reduce
    proc.wait(timeout=120)
    stderr = (tmp_path / "stderr.log").read_text(errors="replace")
    message = json.loads(log.read_text())
    assert message["reason"] == "Preempted", stderr[-3000:]
    # A checkpoint is committed once every rank wrote its part: rank 0 saved too.
    assert committed_steps(tmp_path / "run" / "checkpoints") == [message["step"]], stderr[-3000:]


def test_bf16_autocast_trains_on_cpu(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", training={"max_steps": 6, "precision": "bf16"})
    result = kubetrain("train", "--config", str(write_config(tmp_path / "c.yaml", cfg)))
    assert result.returncode == 0, result.stderr[-2000:]
    losses = losses_by_step(tmp_path / "run")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and losses[6] < losses[1]
