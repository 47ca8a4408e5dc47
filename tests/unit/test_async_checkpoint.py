"""The background checkpoint saver: ordering, one save in flight, retries, failures, and
the in-RAM snapshot that the worker writes while training goes on.

Local storage and real torch on the CPU; a LocalStorage subclass holds uploads back
or fails them on purpose so the tests control what is in flight.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import pytest
import torch

from kubetrain_trainer.checkpoint import (
    GOOD_MARKER,
    MANIFEST,
    CheckpointManager,
    LocalStorage,
    ResumeRequest,
    RetryingStorage,
)
from kubetrain_trainer.checkpoint.async_save import AsyncCheckpointer, SaveResult
from kubetrain_trainer.checkpoint.state import TRAINER_STATE, read_state, rng_file, write_state
from kubetrain_trainer.metrics import TrainerMetrics

pytestmark = pytest.mark.timeout(60)

NO_WAIT = {"sleep": lambda _seconds: None}


class GatedStorage(LocalStorage):
    """Uploads wait for `gate`; records the order of writes and concurrent uploads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.writes: list[str] = []
        self.active = 0
        self.max_active = 0
        self.fail_next = 0
        self._lock = threading.Lock()

    def put_file(self, key: str, path: Path) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.started.set()
            self.gate.wait()
            with self._lock:
                if self.fail_next:
                    self.fail_next -= 1
                    raise ConnectionError(f"injected outage writing {key}")
            super().put_file(key, path)
            self.writes.append(key)
        finally:
            with self._lock:
                self.active -= 1

    def put_bytes(self, key: str, data: bytes) -> None:
        super().put_bytes(key, data)
        self.writes.append(key)


def _staging(root: Path, step: int) -> Path:
    staging = root / f"staging-{step}"
    staging.mkdir(parents=True)
    (staging / "weights.bin").write_bytes(bytes([step % 256]) * 1000)
    return staging


def _claimed(manager: CheckpointManager) -> CheckpointManager:
    """The manager of an attempt that has started: it owns a term."""
    manager.start(ResumeRequest(), Path(tempfile.mkdtemp(prefix="resume-")))
    return manager


def _saver(storage: GatedStorage, retry: dict[str, object] | None = None) -> AsyncCheckpointer:
    manager = _claimed(CheckpointManager(storage.root_uri, keep_last=10, storage=storage))
    return AsyncCheckpointer(manager, retry=retry or NO_WAIT)


def test_submit_returns_while_the_upload_runs_and_commits_later(tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path / "store")
    saver = _saver(storage)
    storage.gate.clear()
    staging = _staging(tmp_path, 5)

    saver.submit(5, staging, {"val_loss": 1.5})
    storage.started.wait()
    assert saver.busy
    assert not storage.exists(f"step-00000005-t0/{MANIFEST}")  # not committed yet

    storage.gate.set()
    [result] = saver.wait()
    assert result.committed and result.step == 5 and result.info is not None
    assert result.info.metric("val_loss") == 1.5
    assert storage.exists(f"step-00000005-t0/{MANIFEST}")
    assert not staging.exists()  # bounded disk: the snapshot goes once uploaded
    assert not saver.busy
    saver.close()


def test_one_upload_in_flight_and_commits_in_order(tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path / "store")
    saver = _saver(storage)
    storage.gate.clear()
    saver.submit(5, _staging(tmp_path, 5))
    storage.started.wait()

    second = threading.Thread(target=saver.submit, args=(10, _staging(tmp_path, 10)))
    second.start()
    storage.gate.set()
    second.join()
    # submit(10) returned, so step 5 had committed before step 10 could start.
    assert storage.exists(f"step-00000005-t0/{MANIFEST}")
    results = saver.wait()
    assert [r.step for r in results] == [5, 10]
    assert all(r.committed for r in results)
    assert storage.max_active == 1
    order = [w for w in storage.writes if w.endswith(MANIFEST) or w.endswith("weights.bin")]
    assert order == [
        "step-00000005-t0/weights.bin",
        "step-00000005-t0/manifest.json",
        "step-00000010-t0/weights.bin",
        "step-00000010-t0/manifest.json",
    ]
    saver.close()


def test_transient_errors_are_retried(tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path / "store")
    delays: list[float] = []
    saver = _saver(storage, {"attempts": 5, "base_delay": 2.0, "sleep": delays.append})
    storage.fail_next = 3

    saver.submit(5, _staging(tmp_path, 5))
    [result] = saver.wait()
    assert result.committed
    assert delays == [2.0, 4.0, 8.0]  # exponential backoff between the attempts
    saver.close()


def test_a_failed_upload_is_not_committed_and_the_next_one_is(tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path / "store")
    failures: list[SaveResult] = []
    manager = _claimed(CheckpointManager(storage.root_uri, keep_last=10, storage=storage))
    saver = AsyncCheckpointer(
        manager,
        retry={"attempts": 3, **NO_WAIT},
        on_done=lambda r: failures.append(r) if not r.committed else None,
    )
    storage.fail_next = 3  # every attempt of the first upload
    staging = _staging(tmp_path, 5)
    saver.submit(5, staging)
    [failed] = saver.wait()
    assert not failed.committed and failed.error and "injected outage" in failed.error
    assert failures == [failed]
    assert not storage.exists(f"step-00000005-t0/{MANIFEST}")
    assert not staging.exists()
    assert manager.list() == []

    saver.submit(10, _staging(tmp_path, 10))
    [ok] = saver.wait()
    assert ok.committed
    assert [info.step for info in manager.list()] == [10]
    # The failed step's leftovers are an uncommitted directory, rotated away.
    assert [(i.step, i.term) for i in manager.scan()] == [(10, 0)]
    saver.close()


def test_mark_good_while_uploading_waits_for_the_commit(tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path / "store")
    saver = _saver(storage)
    storage.gate.clear()
    saver.submit(5, _staging(tmp_path, 5))
    storage.started.wait()
    saver.mark_good(5)  # deferred to the commit, not lost
    storage.gate.set()
    saver.wait()
    assert storage.exists(f"step-00000005-t0/{GOOD_MARKER}")
    storage.delete(f"step-00000005-t0/{GOOD_MARKER}")
    saver.mark_good(5)  # committed: written by the worker next
    saver.wait()
    assert storage.exists(f"step-00000005-t0/{GOOD_MARKER}")
    saver.close()


def test_mark_good_during_an_outage_is_logged_not_raised(tmp_path: Path) -> None:
    class Down(LocalStorage):
        down = False

        def list_keys(self, prefix: str = "") -> list[str]:
            if self.down:
                raise ConnectionError("injected outage")
            return super().list_keys(prefix)

    storage = Down(tmp_path / "store")
    manager = _claimed(CheckpointManager(storage.root_uri, storage=storage))
    storage.down = True
    saver = AsyncCheckpointer(manager, retry={"attempts": 2, **NO_WAIT})
    saver.mark_good(5)
    assert saver.wait() == []
    assert not storage.exists(f"step-00000005-t0/{GOOD_MARKER}")
    saver.close()


def test_retrying_storage_passes_missing_files_through(tmp_path: Path) -> None:
    calls: list[float] = []
    storage = RetryingStorage(LocalStorage(tmp_path), sleep=calls.append)
    with pytest.raises(FileNotFoundError):
        storage.get_bytes("nope")
    assert calls == []  # an answer, not an outage


def _trained() -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    return model, optimizer


def _train_on(model: torch.nn.Linear, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()


def test_torch_state_round_trips_through_the_background_upload(tmp_path: Path) -> None:
    model, optimizer = _trained()
    staging = tmp_path / "staging"
    write_state(staging, model, optimizer, {"step": 7}, rank=0)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    storage = GatedStorage(tmp_path / "store")
    saver = _saver(storage)
    saver.submit(7, staging)
    # Training goes on while the upload runs; the snapshot on disk is unaffected.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    [result] = saver.wait()
    assert result.info is not None
    saver.close()

    manager = _claimed(CheckpointManager(storage.root_uri))
    path = manager.load(result.info, tmp_path / "restore")
    fresh = torch.nn.Linear(8, 4)
    extra = read_state(path, fresh, torch.optim.AdamW(fresh.parameters(), lr=0.1), rank=0)
    assert extra["step"] == 7
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, saved[name])


def test_the_worker_writes_the_snapshot_taken_before_training_went_on(tmp_path: Path) -> None:
    model, optimizer = _trained()
    storage = GatedStorage(tmp_path / "store")
    saver = _saver(storage)
    snapshot = saver.snapshot(model, optimizer, {"step": 7}, rank=0)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v["exp_avg"].clone() for k, v in optimizer.state_dict()["state"].items()}
    next_draw = torch.rand(3)

    # The loop trains on before the worker has written anything.
    for _ in range(3):
        _train_on(model, optimizer)
    assert not torch.equal(model.weight, weights["weight"])
    staging = tmp_path / "staging"
    staging.mkdir()
    saver.submit(7, staging, {"val_loss": 2.0}, snapshot=snapshot)
    [result] = saver.wait()
    saver.close()
    assert result.committed and result.info is not None
    assert not staging.exists()
    files = result.info.manifest.files if result.info.manifest else {}
    assert {TRAINER_STATE, rng_file(0), "dcp/.metadata"} <= set(files)

    path = CheckpointManager(storage.root_uri).load(result.info, tmp_path / "restore")
    fresh = torch.nn.Linear(8, 4)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    extra = read_state(path, fresh, fresh_optimizer, rank=0)
    assert extra == {"step": 7}
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    for index, state in fresh_optimizer.state_dict()["state"].items():
        assert torch.equal(state["exp_avg"], moments[index])
    assert torch.equal(torch.rand(3), next_draw)  # the RNG as of the snapshot


def test_a_new_snapshot_waits_until_the_one_in_flight_is_committed(tmp_path: Path) -> None:
    model, optimizer = _trained()
    storage = GatedStorage(tmp_path / "store")
    saver = _saver(storage)
    storage.gate.clear()
    saver.submit(5, tmp_path / "staging-5", snapshot=saver.snapshot(model, optimizer, {}, 0))
    storage.started.wait()
    _train_on(model, optimizer)

    committed_before_copy: list[bool] = []

    def next_checkpoint() -> None:
        # The copy reuses the memory that step 5 is written from: it must wait.
        snapshot = saver.snapshot(model, optimizer, {}, 0)
        committed_before_copy.append(storage.exists(f"step-00000005-t0/{MANIFEST}"))
        saver.submit(10, tmp_path / "staging-10", snapshot=snapshot)

    second = threading.Thread(target=next_checkpoint)
    second.start()
    storage.gate.set()
    second.join()
    assert committed_before_copy == [True]
    assert [r.step for r in saver.wait() if r.committed] == [5, 10]
    saver.close()

    fresh = torch.nn.Linear(8, 4)
    latest = CheckpointManager(storage.root_uri).start(ResumeRequest(), tmp_path / "restore")
    assert latest is not None and latest.info.step == 10
    read_state(latest.path, fresh, torch.optim.AdamW(fresh.parameters(), lr=0.1), rank=0)
    assert torch.equal(fresh.weight, model.weight)


def test_a_snapshot_that_cannot_be_written_is_not_committed(tmp_path: Path) -> None:
    model, optimizer = _trained()
    storage = GatedStorage(tmp_path / "store")
    saver = _saver(storage)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    saver.submit(5, blocker / "staging", snapshot=saver.snapshot(model, optimizer, {}, 0))
    [failed] = saver.wait()
    assert not failed.committed and failed.error and "writing" in failed.error
    assert storage.writes == []  # nothing uploaded, no manifest

    saver.submit(10, tmp_path / "staging", snapshot=saver.snapshot(model, optimizer, {}, 0))
    [ok] = saver.wait()
    saver.close()
    assert ok.committed
    assert [info.step for info in CheckpointManager(storage.root_uri).list()] == [10]


def test_failure_counter_and_upload_histogram() -> None:
    metrics = TrainerMetrics(labels={})
    metrics.checkpoint_failed()
    metrics.checkpoint_committed(10, upload_seconds=3.0)
    metrics.checkpoint_stalled(0.02)
    text = metrics.render().decode()
    assert "kubetrain_checkpoint_failures_total 1.0" in text
    assert "kubetrain_checkpoint_upload_seconds_count 1.0" in text
    assert "kubetrain_checkpoint_save_seconds_count 1.0" in text
    assert "kubetrain_last_checkpoint_step 10.0" in text
