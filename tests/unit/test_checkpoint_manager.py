"""CheckpointManager on LocalStorage: commit protocol, verification, fallback, rotation."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from kubetrain_trainer.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CorruptCheckpoint,
    LocalStorage,
    step_dir,
)


def _stage(root: Path, step: int, rank: int = 0, size: int = 64) -> Path:
    """A rank's local staging directory with a couple of state-like files."""
    directory = root / f"stage-rank{rank}" / step_dir(step)
    (directory / "dcp").mkdir(parents=True, exist_ok=True)
    (directory / "dcp" / f"__{rank}_0.distcp").write_bytes(bytes([step % 256, rank]) * size)
    (directory / f"rng-rank{rank}.pt").write_bytes(f"rng {step} {rank}".encode())
    return directory


def _manager(tmp_path: Path, **kwargs: Any) -> CheckpointManager:
    return CheckpointManager(str(tmp_path / "ckpt"), **kwargs)


def _steps(manager: CheckpointManager, **kwargs: Any) -> list[int]:
    return [info.step for info in manager.list(**kwargs)]


def test_save_commits_with_manifest_of_every_file(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    info = manager.save(120, _stage(tmp_path, 120), {"val_loss": 2.5}, epoch=3)

    assert info.committed and info.step == 120
    assert info.uri == f"{(tmp_path / 'ckpt').as_uri()}/step-00000120"
    manifest = json.loads((tmp_path / "ckpt" / "step-00000120" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"dcp/__0_0.distcp", "rng-rank0.pt"}
    assert manifest["step"] == 120 and manifest["epoch"] == 3 and manifest["world_size"] == 1
    assert manifest["metrics"] == {"val_loss": 2.5}
    latest = manager.latest()
    assert latest is not None and latest.step == 120 and latest.metric("val_loss") == 2.5


def test_directory_without_manifest_is_not_committed(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    manager.save(10, _stage(tmp_path, 10))
    # A crash mid-save: rank files uploaded, no manifest.
    storage = manager.storage
    for path in _stage(tmp_path, 20).rglob("*"):
        if path.is_file():
            storage.put_file(f"step-00000020/{path.name}", path)

    assert _steps(manager) == [10]
    assert _steps(manager, include_uncommitted=True) == [10, 20]
    latest = manager.latest()
    assert latest is not None and latest.step == 10
    newest_any = manager.latest(committed_only=False)
    assert newest_any is not None and newest_any.step == 20 and not newest_any.committed
    loaded = manager.load_latest(tmp_path / "local")
    assert loaded is not None and loaded.info.step == 10


def test_unparseable_manifest_is_not_committed(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    manager.save(10, _stage(tmp_path, 10))
    manager.save(20, _stage(tmp_path, 20))
    manifest = tmp_path / "ckpt" / "step-00000020" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:-20])  # torn write

    assert _steps(manager) == [10]
    with pytest.raises(CorruptCheckpoint):
        manager.resolve(manager.storage.uri("step-00000020"))


def test_nothing_to_load(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    assert manager.latest() is None
    assert manager.list() == []
    assert manager.load_latest(tmp_path / "local") is None


def test_load_verifies_and_returns_identical_files(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    staged = _stage(tmp_path, 30)
    info = manager.save(30, staged)
    local = manager.load(info, tmp_path / "local")
    assert local == tmp_path / "local" / "step-00000030"
    for name in ("dcp/__0_0.distcp", "rng-rank0.pt"):
        assert (local / name).read_bytes() == (staged / name).read_bytes()
    assert not (local / "manifest.json").exists()


def test_flipped_byte_is_caught_and_load_latest_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = _manager(tmp_path)
    manager.save(10, _stage(tmp_path, 10))
    info = manager.save(20, _stage(tmp_path, 20))
    shard = tmp_path / "ckpt" / "step-00000020" / "dcp" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[7] ^= 0x01
    shard.write_bytes(bytes(data))  # same size, one bit different

    with pytest.raises(CorruptCheckpoint, match="sha256"):
        manager.load(info, tmp_path / "local")
    assert not (tmp_path / "local" / "step-00000020").exists()  # no half-verified leftovers

    with caplog.at_level(logging.WARNING):
        loaded = manager.load_latest(tmp_path / "local")
    assert loaded is not None and loaded.info.step == 10
    assert any(
        "step-00000020" in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records
    )


def test_missing_or_truncated_file_is_corrupt(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    info = manager.save(10, _stage(tmp_path, 10))
    (tmp_path / "ckpt" / "step-00000010" / "rng-rank0.pt").unlink()
    with pytest.raises(CorruptCheckpoint, match="missing"):
        manager.load(info, tmp_path / "local")

    info = manager.save(20, _stage(tmp_path, 20))
    shard = tmp_path / "ckpt" / "step-00000020" / "dcp" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(CorruptCheckpoint, match="bytes"):
        manager.load(info, tmp_path / "local")
    assert manager.load_latest(tmp_path / "local") is None  # both are bad


def test_rotation_keeps_last_n_and_best_k(tmp_path: Path) -> None:
    manager = _manager(tmp_path, keep_last=2, keep_best=2)
    losses = {10: 5.0, 20: 1.0, 30: 3.0, 40: 1.5, 50: 4.0, 60: 6.0, 70: 7.0}
    for step, loss in losses.items():
        manager.save(step, _stage(tmp_path, step), {"val_loss": loss})
    # best two by val_loss: 20 (1.0), 40 (1.5); last two: 60, 70
    assert _steps(manager, include_uncommitted=True) == [20, 40, 60, 70]


def test_rotation_ignores_checkpoints_without_the_metric(tmp_path: Path) -> None:
    manager = _manager(tmp_path, keep_last=1, keep_best=1)
    manager.save(10, _stage(tmp_path, 10), {"val_loss": 2.0})
    manager.save(20, _stage(tmp_path, 20))
    manager.save(30, _stage(tmp_path, 30), {"val_loss": float("nan")})  # diverged: ranks last
    manager.save(40, _stage(tmp_path, 40))
    assert _steps(manager) == [10, 40]


def test_rotation_never_deletes_newest_good(tmp_path: Path) -> None:
    manager = _manager(tmp_path, keep_last=1)
    manager.save(10, _stage(tmp_path, 10))
    assert manager.mark_good(10, healthy_steps=5)
    for step in (20, 30, 40):
        manager.save(step, _stage(tmp_path, step))
    assert _steps(manager) == [10, 40]
    good = manager.latest(good_only=True)
    assert good is not None and good.step == 10 and good.good

    assert manager.mark_good(40)
    manager.save(50, _stage(tmp_path, 50))
    assert _steps(manager) == [40, 50]  # 10 is no longer the newest good one
    loaded = manager.load_latest(tmp_path / "local", good_only=True)
    assert loaded is not None and loaded.info.step == 40


def test_mark_good_needs_a_committed_checkpoint(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    assert not manager.mark_good(10)
    manager.storage.put_bytes("step-00000010/rng-rank0.pt", b"x")
    assert not manager.mark_good(10)
    assert manager.latest(good_only=True) is None
    other_rank = CheckpointManager(
        str(tmp_path / "ckpt"),
        rank=1,
        world_size=2,
        barrier=lambda: None,
        all_gather_object=lambda o: [o, o],
    )
    manager.save(20, _stage(tmp_path, 20))
    assert not other_rank.mark_good(20)  # only rank 0 writes markers
    assert manager.mark_good(20)


def test_uncommitted_leftovers_older_than_newest_committed_are_removed(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    manager.save(10, _stage(tmp_path, 10))
    manager.storage.put_bytes("step-00000005/dcp/__0_0.distcp", b"crashed")
    manager.storage.put_bytes("step-00000030/dcp/__0_0.distcp", b"in flight?")
    assert manager.rotate() == [5]
    assert _steps(manager, include_uncommitted=True) == [10, 30]

    manager.storage.put_bytes("step-00000015/dcp/__0_0.distcp", b"crashed")
    manager.save(20, _stage(tmp_path, 20))
    # 15 is an old leftover; 30 is newer than the save, so an abandoned timeline.
    assert _steps(manager, include_uncommitted=True) == [10, 20]


def test_saving_an_older_step_discards_the_abandoned_future(tmp_path: Path) -> None:
    manager = _manager(tmp_path, keep_last=10)
    for step in (10, 20, 30):
        manager.save(step, _stage(tmp_path, step))
    manager.mark_good(20)
    # Rolled back to 10: the new timeline saves step 20 again.
    fresh = _stage(tmp_path, 20, size=100)
    manager.save(20, fresh)
    assert _steps(manager) == [10, 20]
    info = manager.latest()
    assert info is not None and not info.good  # the old marker belonged to the old 20
    local = manager.load(info, tmp_path / "local")
    assert (local / "dcp" / "__0_0.distcp").read_bytes() == (
        fresh / "dcp" / "__0_0.distcp"
    ).read_bytes()


def test_resolve_names_a_committed_checkpoint(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    manager.save(10, _stage(tmp_path, 10))
    info = manager.resolve(manager.storage.uri("step-00000010") + "/")
    assert info.step == 10 and info.committed
    with pytest.raises(CorruptCheckpoint):
        manager.resolve(manager.storage.uri("step-00000020"))
    with pytest.raises(ValueError, match="not a checkpoint under"):
        manager.resolve("s3://elsewhere/step-00000010")


def test_reserved_and_escaping_names_are_refused(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    (tmp_path / "m.json").write_text("{}")
    for name in ("manifest.json", "good.json", "../x", "/abs"):
        with pytest.raises(CheckpointError, match="invalid checkpoint file name"):
            manager.save(10, {name: tmp_path / "m.json"})
    assert manager.list(include_uncommitted=True) == []


class _ThreadGroup:
    """Collectives for ranks running as threads: a stand-in for a process group."""

    def __init__(self, world_size: int) -> None:
        self._barrier = threading.Barrier(world_size, timeout=30)
        self._slots: list[Any] = [None] * world_size

    def barrier(self) -> None:
        self._barrier.wait()

    def all_gather(self, rank: int, obj: Any) -> list[Any]:
        self._slots[rank] = obj
        self._barrier.wait()
        gathered = list(self._slots)
        self._barrier.wait()  # nobody overwrites a slot before everyone has read
        return gathered


def _save_on_ranks(tmp_path: Path, world_size: int, stage: Any) -> list[Any]:
    group = _ThreadGroup(world_size)
    results: list[Any] = [None] * world_size

    def run(rank: int) -> None:
        manager = CheckpointManager(
            str(tmp_path / "ckpt"),
            rank=rank,
            world_size=world_size,
            barrier=group.barrier,
            all_gather_object=lambda obj: group.all_gather(rank, obj),
        )
        try:
            results[rank] = manager.save(40, stage(rank))
        except Exception as error:
            results[rank] = error

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_every_rank_contributes_to_one_manifest(tmp_path: Path) -> None:
    results = _save_on_ranks(tmp_path, 3, lambda rank: _stage(tmp_path, 40, rank))
    assert all(not isinstance(r, BaseException) and r.committed for r in results)
    info = CheckpointManager(str(tmp_path / "ckpt")).latest()
    assert info is not None and info.manifest is not None and info.world_size == 3
    assert {name: e.rank for name, e in info.manifest.files.items()} == {
        f"{kind}": rank
        for rank in range(3)
        for kind in (f"dcp/__{rank}_0.distcp", f"rng-rank{rank}.pt")
    }


def test_a_failed_upload_on_one_rank_fails_the_save_everywhere(tmp_path: Path) -> None:
    def stage(rank: int) -> Any:
        if rank == 1:
            return {"rng-rank1.pt": tmp_path / "does-not-exist"}
        return _stage(tmp_path, 40, rank)

    results = _save_on_ranks(tmp_path, 2, stage)
    assert all(isinstance(r, CheckpointError) for r in results)
    assert all("rank 1" in str(r) for r in results)
    assert CheckpointManager(str(tmp_path / "ckpt")).latest() is None


def test_ranks_writing_different_content_under_one_name_fail(tmp_path: Path) -> None:
    def stage(rank: int) -> Any:
        path = tmp_path / f"shared-{rank}.pt"
        path.write_bytes(f"rank {rank}".encode())
        return {"trainer_state.pt": path}

    results = _save_on_ranks(tmp_path, 2, stage)
    assert all(isinstance(r, CheckpointError) and "different contents" in str(r) for r in results)
    assert CheckpointManager(str(tmp_path / "ckpt")).latest() is None


def test_multi_rank_manager_needs_collectives(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="collectives"):
        CheckpointManager(str(tmp_path), rank=0, world_size=2)
    with pytest.raises(ValueError, match="out of range"):
        CheckpointManager(
            str(tmp_path),
            rank=2,
            world_size=2,
            barrier=lambda: None,
            all_gather_object=lambda o: [o],
        )


def test_storage_is_the_one_the_uri_names(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    assert isinstance(manager.storage, LocalStorage)
    assert manager.uri == (tmp_path / "ckpt").as_uri()


def test_ranks_agree_to_fall_back_when_one_rank_sees_corruption(tmp_path: Path) -> None:
    # Each rank reads its own copy of the same checkpoints; only rank 1's newest is bad.
    writer = _manager(tmp_path)
    writer.save(10, _stage(tmp_path, 10))
    writer.save(20, _stage(tmp_path, 20))
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "ckpt", copy)
    (copy / "step-00000020" / "rng-rank0.pt").write_bytes(b"garbage")

    group = _ThreadGroup(2)
    results: list[Any] = [None, None]

    def run(rank: int) -> None:
        manager = CheckpointManager(
            str(tmp_path / "ckpt" if rank == 0 else copy),
            rank=rank,
            world_size=2,
            barrier=group.barrier,
            all_gather_object=lambda obj: group.all_gather(rank, obj),
        )
        loaded = manager.load_latest(tmp_path / f"local-{rank}")
        results[rank] = loaded.info.step if loaded else None

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [10, 10]
    assert not (tmp_path / "local-0" / "step-00000020").exists()
