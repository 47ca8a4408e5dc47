"""Checkpoint files move concurrently (transfer.py) and stay safe: every file of a save
is uploaded at once and hashed from its local copy, one failing file fails the save
and commits nothing, retries stay bounded per file, a file that changes while it
uploads is refused, and downloads verify every file."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kubetrain_core.checkpoints.transfer import run_all, upload_files
from kubetrain_trainer.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CorruptCheckpoint,
    LocalStorage,
    ResumeRequest,
    RetryingStorage,
)


def _stage(root: Path, count: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"part-{i}.bin").write_bytes(bytes([i]) * (1000 + 97 * i))
    return root


class _Store(LocalStorage):
    """LocalStorage with a hook called before every file transfer."""

    def __init__(self, root: Path, hook: Callable[[str, str], None]) -> None:
        super().__init__(root)
        self.hook = hook

    def put_file(self, key: str, path: Path) -> None:
        self.hook("put", key)
        super().put_file(key, path)

    def get_file_sha256(self, key: str, path: Path) -> str:
        self.hook("get", key)
        return super().get_file_sha256(key, path)


def _no_wait(_: float) -> None:
    pass


def _started(storage: LocalStorage, tmp_path: Path) -> CheckpointManager:
    manager = CheckpointManager(storage.root_uri, storage=RetryingStorage(storage, sleep=_no_wait))
    manager.start(ResumeRequest(), tmp_path / "start")
    return manager


def test_run_all_returns_every_result_by_key() -> None:
    jobs = [(i, (lambda i=i: i * i)) for i in range(20)]
    assert run_all(jobs, workers=4) == {i: i * i for i in range(20)}
    assert run_all(jobs[:1], workers=4) == {0: 0}


def test_run_all_raises_the_first_failure_once_running_jobs_ended_and_starts_no_more() -> None:
    started: list[int] = []
    ended: list[int] = []
    gate = threading.Event()

    def job(i: int) -> int:
        started.append(i)
        if i == 0:
            gate.wait(5)  # let job 1 be running when it fails
            raise OSError("disk gone")
        if i == 1:
            gate.set()
            time.sleep(0.2)
        time.sleep(0.02)
        ended.append(i)
        return i

    with pytest.raises(OSError, match="disk gone"):
        run_all([(i, (lambda i=i: job(i))) for i in range(50)], workers=2)
    assert 1 in ended  # the job in flight finished before the error reached the caller
    assert len(started) < 10  # the rest never started


def test_the_files_of_a_save_upload_concurrently(tmp_path: Path) -> None:
    # Two uploads must be in flight at once to pass this barrier.
    barrier = threading.Barrier(2, timeout=10)

    def hook(what: str, key: str) -> None:
        if key.endswith(("part-4.bin", "part-5.bin")):
            barrier.wait()

    storage = _Store(tmp_path / "store", hook)
    manager = _started(storage, tmp_path)
    info = manager.save(10, _stage(tmp_path / "stage"))
    assert info.manifest is not None
    for name, entry in info.manifest.files.items():
        data = (tmp_path / "stage" / name).read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.size == len(data)
    loaded = CheckpointManager(storage.root_uri, storage=_Store(storage.root, hook)).start(
        ResumeRequest(), tmp_path / "resume"
    )
    assert loaded is not None and loaded.info.step == 10


def test_one_failing_file_fails_the_save_after_bounded_retries_and_commits_nothing(
    tmp_path: Path,
) -> None:
    attempts: list[str] = []

    def hook(what: str, key: str) -> None:
        if key.endswith("part-2.bin"):
            attempts.append(key)
            raise ConnectionError("connection reset")

    storage = _Store(tmp_path / "store", hook)
    manager = _started(storage, tmp_path)
    with pytest.raises(CheckpointError, match="connection reset"):
        manager.save(10, _stage(tmp_path / "stage"))
    assert len(attempts) == 5  # RetryingStorage's attempts, for that file alone
    assert manager.list() == []
    assert [(i.step, i.committed, i.torn) for i in manager.scan()] == [(10, False, True)]
    # The next save, with the store healthy again, commits.
    storage.hook = lambda what, key: None
    assert manager.save(20, _stage(tmp_path / "stage")).committed
    assert [i.step for i in manager.list()] == [20]


def test_a_file_changed_while_it_uploads_fails_the_save(tmp_path: Path) -> None:
    stage = _stage(tmp_path / "stage")

    def hook(what: str, key: str) -> None:
        if key.endswith("part-3.bin"):
            with (stage / "part-3.bin").open("ab") as f:
                f.write(b"late bytes")

    manager = _started(_Store(tmp_path / "store", hook), tmp_path)
    with pytest.raises(CheckpointError, match="changed while it was uploaded"):
        manager.save(10, stage)
    assert manager.list() == []


def test_upload_files_describes_the_local_bytes(tmp_path: Path) -> None:
    stage = _stage(tmp_path / "stage")
    local = {p.name: p for p in stage.iterdir()}
    entries = upload_files(LocalStorage(tmp_path / "store"), "d", local, rank=3, workers=3)
    assert set(entries) == set(local)
    for name, entry in entries.items():
        data = local[name].read_bytes()
        assert (entry.sha256, entry.size, entry.rank) == (
            hashlib.sha256(data).hexdigest(),
            len(data),
            3,
        )
    assert (tmp_path / "store" / "d" / "part-5.bin").read_bytes() == local[
        "part-5.bin"
    ].read_bytes()


def test_downloads_run_concurrently_and_a_corrupt_file_among_them_is_caught(
    tmp_path: Path,
) -> None:
    barrier = threading.Barrier(2, timeout=10)

    def hook(what: str, key: str) -> None:
        if what == "get" and key.endswith(("part-4.bin", "part-5.bin")):
            barrier.wait()

    storage = _Store(tmp_path / "store", hook)
    manager = _started(storage, tmp_path)
    info = manager.save(10, _stage(tmp_path / "stage"))
    path = manager.load(info, tmp_path / "local")
    assert (path / "part-5.bin").read_bytes() == (tmp_path / "stage" / "part-5.bin").read_bytes()

    corrupt = storage.root / info.directory / "part-1.bin"
    corrupt.write_bytes(b"x" + corrupt.read_bytes()[1:])
    barrier.reset()
    with pytest.raises(CorruptCheckpoint, match=r"part-1\.bin does not match its sha256"):
        manager.load(info, tmp_path / "local")
    assert not (tmp_path / "local" / info.directory).exists()  # nothing half-verified left


def test_local_get_file_sha256_hashes_what_it_writes(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    source = tmp_path / "src.bin"
    source.write_bytes(bytes(range(256)) * 40_000)
    storage.put_file("a/b.bin", source)
    target = tmp_path / "out" / "b.bin"
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    assert storage.get_file_sha256("a/b.bin", target) == expected
    assert target.read_bytes() == source.read_bytes()
    with pytest.raises(FileNotFoundError):
        storage.get_file_sha256("a/missing.bin", tmp_path / "out" / "missing.bin")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.bin"]
