"""Checkpoints through S3Storage against a real MinIO server: save, list, load, verify,
rotate; corruption is detected, an interrupted save is never resumed from, term claims
are conditional writes, and a dead writer's multipart uploads are aborted."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from botocore.exceptions import ClientError
from torch import nn

from kubetrain_core.config.schema import CheckpointConfig, S3Config
from kubetrain_devcluster.project import source_path
from kubetrain_trainer.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CorruptCheckpoint,
    NoUsableCheckpoint,
    ResumeRequest,
    RetryingStorage,
    S3Storage,
    checkpoint_dir,
)
from kubetrain_trainer.checkpoint.claims import claim_key
from kubetrain_trainer.checkpoint.state import read_state, write_state
from localkube.s3 import new_bucket, s3_env
from localkube.services import MinioServer

pytestmark = pytest.mark.integration

_MIB = 1024 * 1024


@pytest.fixture
def bucket(minio: MinioServer, monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in s3_env(minio).items():
        monkeypatch.setenv(key, value)
    return new_bucket(minio)


def _objects(minio: MinioServer, bucket: str) -> list[str]:
    pages = minio.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _step_dirs(minio: MinioServer, bucket: str, prefix: str) -> list[str]:
    dirs = {key[len(prefix) + 1 :].split("/")[0] for key in _objects(minio, bucket)}
    return sorted(d for d in dirs if d.startswith("step-"))


def _started(manager: CheckpointManager, local: Path) -> CheckpointManager:
    manager.start(ResumeRequest(), local)
    return manager


def test_each_storage_reads_the_credentials_of_its_time(
    minio: MinioServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """boto3's default session would keep the first keys it saw for the whole process
    (a test, an operator reading several buckets): every storage gets a fresh chain."""
    right = os.environ["AWS_SECRET_ACCESS_KEY"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ClientError):
        S3Storage(bucket, "creds", endpoint=minio.endpoint).put_bytes("x", b"1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", right)
    S3Storage(bucket, "creds", endpoint=minio.endpoint).put_bytes("x", b"1")
    assert _objects(minio, bucket) == ["creds/x"]


def test_s3_storage_operations(minio: MinioServer, bucket: str, tmp_path: Path) -> None:
    storage = S3Storage(
        bucket,
        "runs/a",
        endpoint=minio.endpoint,
        multipart_threshold=5 * _MIB,
        multipart_chunksize=5 * _MIB,
    )
    storage.put_bytes("step-1/a.json", b"{}")
    storage.put_bytes("step-10/a.json", b"[]")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * _MIB + 3))
    storage.put_file("step-10/big.bin", big)

    head = minio.client().head_object(Bucket=bucket, Key="runs/a/step-10/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # uploaded in three parts
    back = tmp_path / "back" / "big.bin"
    storage.get_file("step-10/big.bin", back)
    assert back.read_bytes() == big.read_bytes()
    # Fetched and hashed: the digest is of the bytes written, not of a part.
    hashed = tmp_path / "hashed" / "big.bin"
    digest = storage.get_file_sha256("step-10/big.bin", hashed)
    assert digest == hashlib.sha256(big.read_bytes()).hexdigest()
    assert hashed.read_bytes() == big.read_bytes()

    assert storage.get_bytes("step-1/a.json") == b"{}"
    assert storage.exists("step-10/a.json") and not storage.exists("step-10/nope")
    assert storage.list_keys() == ["step-1/a.json", "step-10/a.json", "step-10/big.bin"]
    assert storage.list_keys("step-1") == ["step-1/a.json"]
    assert storage.list_dirs() == ["step-1", "step-10"]
    with pytest.raises(FileNotFoundError):
        storage.get_bytes("step-1/missing")
    with pytest.raises(FileNotFoundError):
        storage.get_file("step-1/missing", tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        storage.get_file_sha256("step-1/missing", tmp_path / "hashed" / "missing")
    assert [p.name for p in (tmp_path / "hashed").iterdir()] == ["big.bin"]  # no temp left

    storage.delete_prefix("step-1")
    assert _objects(minio, bucket) == ["runs/a/step-10/a.json", "runs/a/step-10/big.bin"]


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    loss = model(torch.randn(16, 8)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.item())


def _save(
    manager: CheckpointManager,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stage_root: Path,
    *,
    step: int,
    val_loss: float,
) -> None:
    stage = stage_root / f"step-{step}"
    write_state(stage, model, optimizer, {"step": step}, rank=0)
    manager.save(step, stage, {"val_loss": val_loss}, epoch=step // 20)


def test_save_list_load_rotate(minio: MinioServer, bucket: str, tmp_path: Path) -> None:
    cfg = CheckpointConfig(
        uri=f"s3://{bucket}/jobs/demo",
        keep_last=2,
        keep_best=1,
        s3=S3Config(endpoint=minio.endpoint),
    )
    manager = _started(CheckpointManager.from_config(cfg, cfg.uri or ""), tmp_path / "none")
    torch.manual_seed(0)
    model, optimizer = _model()
    losses = {10: 3.0, 20: 1.0, 30: 2.0, 40: 2.5, 50: 2.2}
    saved: dict[int, dict[str, torch.Tensor]] = {}
    for step, val_loss in losses.items():
        _train_step(model, optimizer)
        _save(manager, model, optimizer, tmp_path / "stage", step=step, val_loss=val_loss)
        saved[step] = {k: v.clone() for k, v in model.state_dict().items()}
        if step == 30:
            assert manager.mark_good(30)

    # last two (40, 50) + best (20) + newest good (30)
    assert [info.step for info in manager.list()] == [20, 30, 40, 50]
    assert _step_dirs(minio, bucket, "jobs/demo") == [
        checkpoint_dir(s, 0) for s in (20, 30, 40, 50)
    ]
    latest = manager.latest()
    assert latest is not None and latest.uri == f"s3://{bucket}/jobs/demo/step-00000050-t0"
    assert latest.epoch == 2 and latest.metric("val_loss") == 2.2
    good = manager.latest(good_only=True)
    assert good is not None and good.step == 30

    # A fresh process resumes from the newest one, verified.
    torch.manual_seed(1)
    fresh, fresh_optimizer = _model()
    reader = CheckpointManager.from_config(cfg, cfg.uri or "")
    loaded = reader.start(ResumeRequest(), tmp_path / "local")
    assert loaded is not None and loaded.info.step == 50 and reader.term == 1
    extra = read_state(loaded.path, fresh, fresh_optimizer, rank=0)
    assert extra == {"step": 50}
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, saved[50][key]), key

    # A rollback to before step 40: the newest good one before it.
    rolled = CheckpointManager.from_config(cfg, cfg.uri or "")
    target = rolled.start(ResumeRequest(rollback_before=40, rollback_id="r"), tmp_path / "l2")
    assert target is not None and target.info.step == 30
    read_state(target.path, fresh, fresh_optimizer, rank=0)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, saved[30][key]), key


def test_corrupted_object_is_detected(minio: MinioServer, bucket: str, tmp_path: Path) -> None:
    s3 = S3Config(endpoint=minio.endpoint)
    manager = _started(CheckpointManager(f"s3://{bucket}/c", s3, keep_last=5), tmp_path / "l0")
    model, optimizer = _model()
    for step in (10, 20):
        _train_step(model, optimizer)
        _save(manager, model, optimizer, tmp_path / "stage", step=step, val_loss=1.0)

    client = minio.client()
    key = "c/step-00000020-t0/dcp/__0_0.distcp"
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    newest = manager.latest()
    assert newest is not None and newest.step == 20 and newest.committed
    with pytest.raises(CorruptCheckpoint, match="sha256"):
        manager.load(newest, tmp_path / "local")
    loaded = CheckpointManager(f"s3://{bucket}/c", s3).start(ResumeRequest(), tmp_path / "local")
    assert loaded is not None and loaded.info.step == 10

    client.delete_object(Bucket=bucket, Key="c/step-00000010-t0/trainer_state.pt")
    with pytest.raises(CorruptCheckpoint, match="missing"):
        manager.load(loaded.info, tmp_path / "local")
    with pytest.raises(NoUsableCheckpoint):  # nothing usable: never a silent start over
        CheckpointManager(f"s3://{bucket}/c", s3).start(ResumeRequest(), tmp_path / "local")
    assert _step_dirs(minio, bucket, "c") == [checkpoint_dir(10, 0), checkpoint_dir(20, 0)]


class _Killed(BaseException):
    """The process dying (not an error the trainer could handle)."""


class _CrashBeforeCommit(S3Storage):
    """The real S3 storage in a process that dies just before writing a manifest."""

    def put_bytes(self, key: str, data: bytes) -> None:
        if key.endswith("/manifest.json"):
            raise _Killed
        super().put_bytes(key, data)


def test_interrupted_save_is_not_resumed_from(
    minio: MinioServer, bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/i"
    s3 = S3Config(endpoint=minio.endpoint)
    manager = _started(CheckpointManager(uri, s3), tmp_path / "l0")
    model, optimizer = _model()
    _train_step(model, optimizer)
    _save(manager, model, optimizer, tmp_path / "stage", step=10, val_loss=1.0)
    committed_weights = {k: v.clone() for k, v in model.state_dict().items()}

    _train_step(model, optimizer)
    crashing = CheckpointManager(uri, storage=_CrashBeforeCommit(bucket, "i", minio.endpoint))
    crashing.start(ResumeRequest(), tmp_path / "l1")  # term 1
    with pytest.raises(_Killed):
        _save(crashing, model, optimizer, tmp_path / "stage", step=20, val_loss=1.0)
    assert any(k.startswith("i/step-00000020-t1/") for k in _objects(minio, bucket))

    restarted = CheckpointManager(uri, s3)
    assert [(i.step, i.torn) for i in restarted.scan()] == [(10, False), (20, True)]
    loaded = restarted.start(ResumeRequest(), tmp_path / "local")
    assert loaded is not None and loaded.info.step == 10
    fresh, fresh_optimizer = _model()
    assert read_state(loaded.path, fresh, fresh_optimizer, rank=0) == {"step": 10}
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, committed_weights[key]), key

    # The next commit cleans up the torn leftover: its writer (term 1) is fenced out.
    _save(restarted, model, optimizer, tmp_path / "stage", step=30, val_loss=1.0)
    assert _step_dirs(minio, bucket, "i") == [checkpoint_dir(10, 0), checkpoint_dir(30, 2)]


def test_claims_are_conditional_writes(minio: MinioServer, bucket: str) -> None:
    storage = S3Storage(bucket, "cond", minio.endpoint)
    assert storage.put_bytes_if_absent(claim_key(0), b"first")
    assert not storage.put_bytes_if_absent(claim_key(0), b"second")
    assert storage.get_bytes(claim_key(0)) == b"first"


def test_a_dead_writers_multipart_upload_is_aborted_by_the_next_term(
    minio: MinioServer, bucket: str, tmp_path: Path
) -> None:
    s3 = S3Config(endpoint=minio.endpoint)
    first = _started(CheckpointManager(f"s3://{bucket}/mp", s3), tmp_path / "l0")
    client = minio.client()
    # Term 0 was killed in the middle of a multipart upload: its parts stay in the bucket.
    key = f"mp/{checkpoint_dir(10, first.term)}/dcp/__0_0.distcp"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * _MIB)
    assert [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [
        key
    ]

    _started(CheckpointManager(f"s3://{bucket}/mp", s3), tmp_path / "l1")  # term 1
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# One torchrun worker: DDP on gloo, save through MinIO, then resume from it.
_DDP_WORKER = """
import json, sys
from pathlib import Path
import torch, torch.distributed as dist
from torch import nn
from kubetrain_trainer.checkpoint import CheckpointManager, ResumeRequest
from kubetrain_trainer.checkpoint.state import read_state, write_state

def all_gather_object(obj):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
root, uri = Path(sys.argv[1]), sys.argv[2]
torch.manual_seed(rank)
model = nn.parallel.DistributedDataParallel(nn.Linear(4, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
for _ in range(2):
    model(torch.randn(3, 4)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
manager = CheckpointManager(uri, rank=rank, world_size=world, all_gather_object=all_gather_object)
manager.start(ResumeRequest(), root / f"none-rank{rank}")
stage = root / f"stage-rank{rank}"
write_state(stage, model, optimizer, {"step": 10}, rank)
info = manager.save(10, stage, {"val_loss": 0.5})
weights = model.module.weight.detach().clone()
exp_avg = optimizer.state_dict()["state"][0]["exp_avg"].clone()
next_random = torch.rand(3)
with torch.no_grad():
    model.module.weight.zero_()
torch.manual_seed(1000)
reader = CheckpointManager(uri, rank=rank, world_size=world, all_gather_object=all_gather_object)
loaded = reader.start(ResumeRequest(), root / f"local-rank{rank}")
extra = read_state(loaded.path, model, optimizer, rank)
# One file per rank: two ranks printing at once can share a line of torchrun's stdout.
(root / f"result-rank{rank}.json").write_text(json.dumps({
    "rank": rank,
    "files": sorted(info.manifest.files),
    "loaded_step": loaded.info.step,
    "extra": extra,
    "weights": torch.equal(model.module.weight, weights),
    "exp_avg": torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], exp_avg),
    "rng": torch.equal(torch.rand(3), next_random),
}))
dist.destroy_process_group()
"""


def test_two_ddp_ranks_save_and_resume_through_minio(
    minio: MinioServer, bucket: str, tmp_path: Path
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    env = {
        **os.environ,
        **s3_env(minio),
        "AWS_ENDPOINT_URL": minio.endpoint,  # as the operator would set it
        "PYTHONPATH": source_path(),
        "GLOO_SOCKET_IFNAME": "lo",  # rank-to-rank traffic stays on loopback
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", str(script), str(tmp_path), f"s3://{bucket}/ddp"]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = [json.loads((tmp_path / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    expected_files = [
        "dcp/.metadata",
        "dcp/__0_0.distcp",
        "dcp/__1_0.distcp",
        "rng-rank0.pt",
        "rng-rank1.pt",
        "trainer_state.pt",
    ]
    for result in results:
        assert result["files"] == expected_files
        assert result["loaded_step"] == 10 and result["extra"] == {"step": 10}
        assert result["weights"] and result["exp_avg"] and result["rng"], result
    claims = [f"ddp/{claim_key(term)}" for term in (0, 1)]  # the writer's and the reader's
    assert _objects(minio, bucket) == sorted(
        [*claims, *(f"ddp/step-00000010-t0/{name}" for name in [*expected_files, "manifest.json"])]
    )


class _FailsOneFile(S3Storage):
    """The real S3 storage, whose upload of one file fails once the others are in flight."""

    def __init__(self, *args: Any, failing: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failing = failing
        self.started = threading.Event()

    def put_file(self, key: str, path: Path) -> None:
        if key.endswith(self.failing):
            self.started.wait(10)
            raise ConnectionError(f"connection reset uploading {key}")
        self.started.set()
        super().put_file(key, path)


def test_one_failing_file_among_concurrent_uploads_commits_nothing(
    minio: MinioServer, bucket: str, tmp_path: Path
) -> None:
    stage = tmp_path / "stage"
    (stage / "dcp").mkdir(parents=True)
    for i in range(6):
        (stage / "dcp" / f"__{i}_0.distcp").write_bytes(os.urandom(3 * _MIB + i))
    (stage / "trainer_state.pt").write_bytes(b"state")
    storage = _FailsOneFile(
        bucket,
        "f",
        minio.endpoint,
        multipart_threshold=5 * _MIB,
        multipart_chunksize=5 * _MIB,
        failing="dcp/__2_0.distcp",
    )
    retrying = RetryingStorage(storage, attempts=2, base_delay=0)
    manager = _started(CheckpointManager(f"s3://{bucket}/f", storage=retrying), tmp_path / "l0")
    with pytest.raises(CheckpointError, match="connection reset"):
        manager.save(10, stage)
    assert not any(k.endswith("/manifest.json") for k in _objects(minio, bucket))
    assert manager.list() == []

    storage.failing = "nothing-fails"
    info = manager.save(20, stage)
    assert info.manifest is not None and len(info.manifest.files) == 7
    loaded = CheckpointManager(f"s3://{bucket}/f", S3Config(endpoint=minio.endpoint)).start(
        ResumeRequest(), tmp_path / "resume"
    )
    assert loaded is not None and loaded.info.step == 20
    for name in info.manifest.files:
        assert (loaded.path / name).read_bytes() == (stage / name).read_bytes()
