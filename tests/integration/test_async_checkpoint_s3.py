"""Asynchronous checkpoint uploads against a real MinIO, including an outage mid-upload.

Every committed checkpoint must verify (CheckpointManager.load re-hashes each file),
whatever happened to the server while it was being written.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from tests.integration.trainer_runs import (
    REPO,
    env_with,
    kubetrain,
    losses_by_step,
    records,
    tiny_config,
    write_config,
)

from kubetrain_core.config.schema import S3Config
from kubetrain_devcluster.project import source_path
from kubetrain_trainer.checkpoint import CheckpointInfo, CheckpointManager, ResumeRequest, S3Storage
from kubetrain_trainer.checkpoint.async_save import AsyncCheckpointer
from localkube.s3 import new_bucket, running_minio, s3_env
from localkube.services import MinioServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def minio(tmp_path: Path) -> Iterator[MinioServer]:
    # One server per test: the outage test stops and restarts it.
    with running_minio(tmp_path / "minio") as server:
        yield server


@pytest.fixture
def s3_creds(minio: MinioServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_env(minio).items():
        monkeypatch.setenv(key, value)
    # boto3's default session caches the first credentials it finds; each test's
    # server has its own secret.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


def _manager(minio: MinioServer, uri: str) -> CheckpointManager:
    return CheckpointManager(uri, S3Config(endpoint=minio.endpoint), keep_last=100)


def _verified(manager: CheckpointManager, local: Path) -> list[int]:
    """Steps of the committed checkpoints, each downloaded and checked against its manifest."""
    steps = []
    for info in manager.list():
        manager.load(info, local)  # raises CorruptCheckpoint on any mismatch
        steps.append(info.step)
    return steps


def _wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while not check():
        assert proc.poll() is None, f"the trainer exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _last_step(run_dir: Path) -> int:
    try:
        return max(losses_by_step(run_dir), default=0)
    except (FileNotFoundError, ValueError):  # not written yet, or a line half written
        return 0


@pytest.mark.usefixtures("s3_creds")
def test_async_uploads_commit_what_sync_does_and_resume_is_exact(
    minio: MinioServer, tmp_path: Path
) -> None:
    bucket = new_bucket(minio)
    env = env_with(**s3_env(minio))
    runs: dict[str, Path] = {}
    for mode in ("sync", "async", "reference"):
        runs[mode] = tmp_path / mode
        cfg = tiny_config(
            runs[mode],
            training={"max_steps": 30 if mode == "reference" else 20},
            checkpoint={
                "uri": f"s3://{bucket}/{mode}",
                "async_upload": mode != "sync",
                "s3": {"endpoint": minio.endpoint},
            },
        )
        result = kubetrain(
            "train", "--config", str(write_config(tmp_path / f"{mode}.yaml", cfg)), env=env
        )
        assert result.returncode == 0, result.stderr[-2000:]

    sync = _verified(_manager(minio, f"s3://{bucket}/sync"), tmp_path / "dl-sync")
    asynchronous = _verified(_manager(minio, f"s3://{bucket}/async"), tmp_path / "dl-async")
    assert sync == asynchronous == [5, 10, 15, 20]
    assert losses_by_step(runs["sync"]) == losses_by_step(runs["async"])
    events = [r for r in records(runs["async"], "event") if r["event"] == "checkpoint"]
    assert [e["step"] for e in events] == [5, 10, 15, 20]

    # Resume the async run to 30 steps: the same losses as 30 steps without a break.
    result = kubetrain(
        "train", "--config", str(tmp_path / "async.yaml"), "training.max_steps=30", env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = [r for r in records(runs["async"], "event") if r["event"] == "resume"]
    assert resumed and resumed[-1]["uri"] == f"s3://{bucket}/async/step-00000020-t0"
    after = {s: v for s, v in losses_by_step(runs["async"]).items() if s > 20}
    reference = losses_by_step(runs["reference"])
    assert sorted(after) == list(range(21, 31))
    assert after == {s: reference[s] for s in after}


@pytest.mark.usefixtures("s3_creds")
def test_minio_outage_during_training_breaks_no_checkpoint(
    minio: MinioServer, tmp_path: Path
) -> None:
    bucket = new_bucket(minio)
    uri = f"s3://{bucket}/outage"
    run = tmp_path / "run"
    cfg = tiny_config(
        run,
        training={"max_steps": 1_000_000, "eval_steps": 1_000_000},
        checkpoint={
            "uri": uri,
            "interval_steps": 50,
            "keep_last": 3,
            "s3": {"endpoint": minio.endpoint},
        },
        metrics={"log_steps": 10, "console": False},
    )
    path = write_config(tmp_path / "c.yaml", cfg)
    termination = tmp_path / "termination.json"
    stderr = tmp_path / "trainer.err"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubetrain_trainer", "train", "--config", str(path)],
            env=env_with(**s3_env(minio), KUBETRAIN_TERMINATION_LOG=str(termination)),
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        manager = _manager(minio, uri)
        _wait_for("a first committed checkpoint", lambda: bool(manager.list()), proc)
        minio.stop()

        # A checkpoint upload meets the outage and retries; training goes on past its step.
        def pending_step() -> int | None:
            text = stderr.read_text(errors="replace")
            retried = text.find(" failed (attempt ")
            if retried < 0:
                return None
            started = re.findall(r"uploading checkpoint at step (\d+)", text[:retried])
            return int(started[-1]) if started else None

        _wait_for("an upload to hit the outage", lambda: pending_step() is not None, proc)
        outage_step = pending_step()
        assert outage_step is not None
        _wait_for(
            "training to continue during the outage",
            lambda: _last_step(run) > outage_step,
            proc,
        )
        minio.start()

        # Later checkpoints commit once MinIO is back.
        _wait_for(
            "a checkpoint after the outage",
            lambda: any(i.step > outage_step for i in manager.list()),
            proc,
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 143, stderr.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    committed = _verified(manager, tmp_path / "dl")
    assert committed and max(committed) > outage_step
    newest = committed[-1]
    # The preemption checkpoint was flushed before the process exited.
    assert json.loads(termination.read_text())["step"] == newest

    result = kubetrain(
        "train", "--config", str(path), f"training.max_steps={newest + 10}",
        env=env_with(**s3_env(minio)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = [r for r in records(run, "event") if r["event"] == "resume"]
    assert resumed[-1]["uri"] == f"{uri}/step-{newest:08d}-t0"


@pytest.mark.usefixtures("s3_creds")
def test_an_upload_that_outlasts_its_retries_stays_uncommitted(
    minio: MinioServer, tmp_path: Path
) -> None:
    bucket = new_bucket(minio)
    # One botocore attempt and three quick outer tries: the outage outlasts them.
    storage = S3Storage(bucket, "direct", endpoint=minio.endpoint, max_attempts=1)
    manager = CheckpointManager(storage.root_uri, keep_last=10, storage=storage)
    manager.start(ResumeRequest(), tmp_path / "none")
    saver = AsyncCheckpointer(manager, retry={"attempts": 3, "base_delay": 0.1})

    def staged(step: int) -> Path:
        staging = tmp_path / f"staging-{step}"
        (staging / "dcp").mkdir(parents=True)
        (staging / "dcp" / "shard.bin").write_bytes(bytes([step]) * 4096)
        (staging / "trainer_state.pt").write_bytes(b"state %d" % step)
        return staging

    saver.submit(5, staged(5))
    assert [r.committed for r in saver.wait()] == [True]
    minio.stop()
    saver.submit(10, staged(10))
    [failed] = saver.wait()
    assert not failed.committed and failed.error
    assert not (tmp_path / "staging-10").exists()
    minio.start()

    assert all(not i.committed for i in manager.scan() if i.step == 10)
    saver.submit(15, staged(15))
    [ok] = saver.wait()
    saver.close()
    assert ok.committed
    assert _verified(manager, tmp_path / "dl") == [5, 15]
    infos: list[CheckpointInfo] = manager.scan()
    assert [i.step for i in infos] == [5, 15]  # the failed one's leftovers are rotated away


# Two torchrun ranks (DDP on gloo): each snapshots, hands the snapshot to the worker and
# keeps training (all-reduces on the training group) while the worker writes it with
# DCP on the checkpoint group, uploads to MinIO and commits. Then both ranks restore.
_TWO_RANK_WORKER = """
import json, sys
from pathlib import Path
import torch, torch.distributed as dist
from datetime import timedelta
from torch import nn
from kubetrain_trainer.checkpoint import CheckpointManager, ResumeRequest
from kubetrain_trainer.checkpoint.async_save import AsyncCheckpointer, group_collectives
from kubetrain_trainer.checkpoint.state import read_state

# A collective mixed up between the groups fails within a minute instead of hanging.
dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank, world = dist.get_rank(), dist.get_world_size()
root, uri = Path(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
model = nn.parallel.DistributedDataParallel(nn.Linear(64, 64))
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)

def train(steps):
    for _ in range(steps):
        model(torch.randn(8, 64)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()

def all_gather_object(obj):
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out

train(2)
manager = CheckpointManager(uri, rank=rank, world_size=world, all_gather_object=all_gather_object)
manager.start(ResumeRequest(), root / f"none-rank{rank}")
saver = AsyncCheckpointer(manager, collectives=group_collectives())
snapshot = saver.snapshot(model, optimizer, {"step": 2}, rank)
weights = model.module.weight.detach().clone()
saver.submit(2, root / f"stage-rank{rank}", {"val_loss": 0.5}, snapshot=snapshot)
train(30)  # all-reduces on the training group while the worker saves
moved = not torch.equal(model.module.weight, weights)
[result] = saver.wait()
saver.close()
reader = CheckpointManager(uri, rank=rank, world_size=world, all_gather_object=all_gather_object)
loaded = reader.start(ResumeRequest(), root / f"local-rank{rank}")
extra = read_state(loaded.path, model, optimizer, rank)
# A file per rank: two ranks printing at once can share a line of torchrun's output.
(root / f"result-rank{rank}.json").write_text(json.dumps({
    "rank": rank,
    "committed": result.committed,
    "files": sorted(result.info.manifest.files),
    "world_size": result.info.manifest.world_size,
    "moved": moved,
    "extra": extra,
    "restored": torch.equal(model.module.weight, weights),
}))
dist.destroy_process_group()
"""


@pytest.mark.usefixtures("s3_creds")
def test_two_ranks_write_on_the_checkpoint_group_while_training_all_reduces(
    minio: MinioServer, tmp_path: Path
) -> None:
    bucket = new_bucket(minio)
    script = tmp_path / "worker.py"
    script.write_text(_TWO_RANK_WORKER)
    env = {
        **os.environ,
        **s3_env(minio),
        "AWS_ENDPOINT_URL": minio.endpoint,
        "PYTHONPATH": source_path(),
        "GLOO_SOCKET_IFNAME": "lo",  # rank-to-rank traffic stays on loopback
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", str(script), str(tmp_path), f"s3://{bucket}/two"]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads((tmp_path / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    for result in results:
        assert result["committed"] and result["world_size"] == 2
        assert result["moved"]  # training went on while the checkpoint was written
        assert result["restored"]  # and the checkpoint holds the weights of step 2
        assert result["extra"] == {"step": 2}
        assert {"dcp/.metadata", "rng-rank0.pt", "rng-rank1.pt", "trainer_state.pt"} <= set(
            result["files"]
        )
    assert _verified(_manager(minio, f"s3://{bucket}/two"), tmp_path / "dl") == [2]
