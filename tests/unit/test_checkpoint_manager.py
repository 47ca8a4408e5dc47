"""CheckpointManager on LocalStorage: commit protocol, verification, fallback, rotation,
and what it must never do: delete a good checkpoint, or let a replaced writer commit."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from kubetrain_core.checkpoints.manifest import Manifest, describe_files
from kubetrain_trainer.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CorruptCheckpoint,
    Fenced,
    LocalStorage,
    NoUsableCheckpoint,
    Owner,
    ResumeRequest,
    StoreConflict,
    StoreUnreadable,
    Writer,
    checkpoint_dir,
)
from kubetrain_trainer.checkpoint.claims import claim_key

KEY = b"job-signing-key"


def _stage(root: Path, step: int, rank: int = 0, size: int = 64) -> Path:
    """A rank's local staging directory with a couple of state-like files."""
    directory = root / f"stage-rank{rank}" / f"step-{step}"
    (directory / "dcp").mkdir(parents=True, exist_ok=True)
    (directory / "dcp" / f"__{rank}_0.distcp").write_bytes(bytes([step % 256, rank]) * size)
    (directory / f"rng-rank{rank}.pt").write_bytes(f"rng {step} {rank}".encode())
    return directory


def _manager(tmp_path: Path, **kwargs: Any) -> CheckpointManager:
    return CheckpointManager(str(tmp_path / "ckpt"), **kwargs)


def _started(
    tmp_path: Path, request: ResumeRequest | None = None, **kwargs: Any
) -> CheckpointManager:
    """A manager that has resumed (or started) and claimed its term."""
    manager = _manager(tmp_path, **kwargs)
    manager.start(request or ResumeRequest(), tmp_path / "local")
    return manager


def _steps(manager: CheckpointManager) -> list[int]:
    return [info.step for info in manager.list()]


def _dirs(tmp_path: Path) -> list[str]:
    """Every checkpoint directory on disk, whatever the lineage says."""
    return sorted(p.name for p in (tmp_path / "ckpt").glob("step-*"))


def _save(manager: CheckpointManager, tmp_path: Path, *steps: int, **kwargs: Any) -> None:
    for step in steps:
        manager.save(step, _stage(tmp_path, step), **kwargs)


def test_save_commits_with_manifest_of_every_file(tmp_path: Path) -> None:
    manager = _started(tmp_path, key=KEY, owner=Owner("ns", "job", "u1"), attempt=4)
    info = manager.save(120, _stage(tmp_path, 120), {"val_loss": 2.5}, epoch=3)

    assert info.committed and info.step == 120 and info.term == 0
    assert info.uri == f"{(tmp_path / 'ckpt').as_uri()}/step-00000120-t0"
    manifest = json.loads((tmp_path / "ckpt" / "step-00000120-t0" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"dcp/__0_0.distcp", "rng-rank0.pt"}
    assert manifest["step"] == 120 and manifest["epoch"] == 3 and manifest["world_size"] == 1
    assert manifest["writer"] == {"term": 0, "attempt": 4, "job_uid": "u1"}
    assert manifest["metrics"] == {"val_loss": 2.5}
    assert len(manifest["hmac"]) == 64
    latest = manager.latest()
    assert latest is not None and latest.step == 120 and latest.metric("val_loss") == 2.5


def test_saving_needs_a_claimed_term(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="start"):
        _manager(tmp_path).save(10, _stage(tmp_path, 10))


def test_torn_directory_is_not_committed(tmp_path: Path) -> None:
    manager = _started(tmp_path)
    _save(manager, tmp_path, 10)
    for path in _stage(tmp_path, 20).rglob("*"):  # a crash mid-save: files, no manifest
        if path.is_file():
            manager.storage.put_file(f"{checkpoint_dir(20, 0)}/{path.name}", path)
    assert _steps(manager) == [10]
    torn = [i for i in manager.scan() if i.torn]
    assert [(i.step, i.term) for i in torn] == [(20, 0)]


def test_nothing_to_resume_starts_at_step_zero_in_term_zero(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    assert manager.start(ResumeRequest(), tmp_path / "local") is None
    assert manager.term == 0 and manager.list() == []
    assert (tmp_path / "ckpt" / claim_key(0)).is_file()


def test_a_restart_resumes_the_newest_and_claims_the_next_term(tmp_path: Path) -> None:
    first = _started(tmp_path)
    _save(first, tmp_path, 10, 20)
    second = _manager(tmp_path)
    loaded = second.start(ResumeRequest(), tmp_path / "local2")
    assert loaded is not None and (loaded.info.step, loaded.info.term) == (20, 0)
    assert second.term == 1
    local = loaded.path
    assert (local / "rng-rank0.pt").read_bytes() == b"rng 20 0"
    assert not (local / "manifest.json").exists()
    _save(second, tmp_path, 30)
    assert [(i.step, i.term) for i in second.list()] == [(10, 0), (20, 0), (30, 1)]


def test_flipped_byte_is_caught_and_resume_falls_back_keeping_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = _started(tmp_path)
    _save(manager, tmp_path, 10, 20)
    shard = tmp_path / "ckpt" / "step-00000020-t0" / "dcp" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[7] ^= 0x01
    shard.write_bytes(bytes(data))  # same size, one bit different

    info = manager.list()[-1]
    with pytest.raises(CorruptCheckpoint, match="sha256"):
        manager.load(info, tmp_path / "local")
    assert not (tmp_path / "local" / "step-00000020-t0").exists()  # no half-verified leftovers

    with caplog.at_level(logging.WARNING):
        loaded = _manager(tmp_path).start(ResumeRequest(), tmp_path / "local")
    assert loaded is not None and loaded.info.step == 10
    assert any(
        "step-00000020-t0" in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records
    )
    assert "step-00000020-t0" in _dirs(tmp_path)  # kept: it is evidence, not garbage


def test_missing_or_truncated_file_is_corrupt(tmp_path: Path) -> None:
    manager = _started(tmp_path)
    info = manager.save(10, _stage(tmp_path, 10))
    (tmp_path / "ckpt" / "step-00000010-t0" / "rng-rank0.pt").unlink()
    with pytest.raises(CorruptCheckpoint, match="missing"):
        manager.load(info, tmp_path / "local")
    info = manager.save(20, _stage(tmp_path, 20))
    shard = tmp_path / "ckpt" / "step-00000020-t0" / "dcp" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(CorruptCheckpoint, match="bytes"):
        manager.load(info, tmp_path / "local")
    # Both are bad: the run is not silently started over beside them.
    with pytest.raises(NoUsableCheckpoint, match="kept"):
        _manager(tmp_path).start(ResumeRequest(), tmp_path / "local")
    assert _dirs(tmp_path) == ["step-00000010-t0", "step-00000020-t0"]


def test_rotation_keeps_last_n_and_best_k(tmp_path: Path) -> None:
    manager = _started(tmp_path, keep_last=2, keep_best=2)
    losses = {10: 5.0, 20: 1.0, 30: 3.0, 40: 1.5, 50: 4.0, 60: 6.0, 70: 7.0}
    for step, loss in losses.items():
        manager.save(step, _stage(tmp_path, step), {"val_loss": loss})
    # best two by val_loss: 20 (1.0), 40 (1.5); last two: 60, 70
    assert _steps(manager) == [20, 40, 60, 70]
    assert len(_dirs(tmp_path)) == 4


def test_rotation_keeps_the_highest_bleu_when_higher_is_better(tmp_path: Path) -> None:
    manager = _started(tmp_path, keep_last=1, keep_best=2, best_metric="val_bleu")  # auto: max
    scores = {10: 5.0, 20: 30.0, 30: float("nan"), 40: 12.0, 50: 25.0, 60: 1.0}
    for step, bleu in scores.items():
        manager.save(step, _stage(tmp_path, step), {"val_bleu": bleu, "val_loss": 1.0})
    assert _steps(manager) == [20, 50, 60]  # best two BLEU (30, 25) and the newest


def test_an_explicit_mode_overrides_the_name(tmp_path: Path) -> None:
    manager = _started(tmp_path, keep_last=1, keep_best=1, best_metric="val_bleu", best_mode="min")
    for step, bleu in {10: 5.0, 20: 30.0, 30: 12.0}.items():
        manager.save(step, _stage(tmp_path, step), {"val_bleu": bleu})
    assert _steps(manager) == [10, 30]


def test_rotation_ignores_checkpoints_without_the_metric(tmp_path: Path) -> None:
    manager = _started(tmp_path, keep_last=1, keep_best=1)
    manager.save(10, _stage(tmp_path, 10), {"val_loss": 2.0})
    manager.save(20, _stage(tmp_path, 20))
    manager.save(30, _stage(tmp_path, 30), {"val_loss": float("nan")})  # diverged: ranks last
    manager.save(40, _stage(tmp_path, 40))
    assert _steps(manager) == [10, 40]


def test_rotation_never_deletes_newest_good(tmp_path: Path) -> None:
    manager = _started(tmp_path, keep_last=1)
    _save(manager, tmp_path, 10)
    assert manager.mark_good(10, healthy_steps=5)
    _save(manager, tmp_path, 20, 30, 40)
    assert _steps(manager) == [10, 40]
    good = manager.latest(good_only=True)
    assert good is not None and good.step == 10 and good.good

    assert manager.mark_good(40)
    _save(manager, tmp_path, 50)
    assert _steps(manager) == [40, 50]  # 10 is no longer the newest good one


def test_mark_good_needs_a_committed_checkpoint(tmp_path: Path) -> None:
    manager = _started(tmp_path)
    assert not manager.mark_good(10)
    manager.storage.put_bytes(f"{checkpoint_dir(10, 0)}/rng-rank0.pt", b"x")
    assert not manager.mark_good(10)
    assert manager.latest(good_only=True) is None
    other_rank = CheckpointManager(
        str(tmp_path / "ckpt"),
        rank=1,
        world_size=2,
        all_gather_object=lambda o: [o, o],
    )
    _save(manager, tmp_path, 20)
    assert not other_rank.mark_good(20)  # only rank 0 writes markers
    assert manager.mark_good(20)


def test_torn_leftovers_of_replaced_writers_are_removed_but_not_the_one_in_flight(
    tmp_path: Path,
) -> None:
    old = _started(tmp_path)
    _save(old, tmp_path, 10)
    old.storage.put_bytes(f"{checkpoint_dir(20, 0)}/dcp/__0_0.distcp", b"killed mid-upload")
    manager = _started(tmp_path)  # term 1 resumes from 10
    manager.storage.put_bytes(f"{checkpoint_dir(30, 1)}/dcp/__0_0.distcp", b"in flight")
    manager.storage.put_bytes(f"{checkpoint_dir(15, 1)}/dcp/__0_0.distcp", b"an own failed save")
    _save(manager, tmp_path, 20)
    # term 0's torn 20 can never be completed; term 1's 15 is older than its newest commit;
    # its 30 is newer than the commit (the upload in flight).
    assert _dirs(tmp_path) == ["step-00000010-t0", "step-00000020-t1", "step-00000030-t1"]


# ---- nothing is lost: the bugs of the data-safety review, pinned -------------------------


class _FailingListing(LocalStorage):
    def list_keys(self, prefix: str = "") -> list[str]:
        raise ConnectionError("S3 is down")


def test_a_failing_listing_never_reads_as_empty(tmp_path: Path) -> None:
    manager = _started(tmp_path)
    _save(manager, tmp_path, 10, 20)
    broken = CheckpointManager("unused", storage=_FailingListing(tmp_path / "ckpt"))
    with pytest.raises(ConnectionError):
        broken.start(ResumeRequest(rollback_before=30, rollback_id="r1"), tmp_path / "local")
    assert _dirs(tmp_path) == ["step-00000010-t0", "step-00000020-t0"]


def test_a_rollback_with_no_good_checkpoint_starts_over_and_deletes_nothing(tmp_path: Path) -> None:
    # The review's reproduction: steps 100, 200 (good) and 300; a store the operator could
    # not list ended up empty. Here the trainer itself reads the store.
    manager = _started(tmp_path, keep_last=10)
    _save(manager, tmp_path, 100, 200, 300)
    manager.mark_good(100)
    manager.mark_good(200)

    again = _manager(tmp_path, keep_last=10)
    assert again.start(ResumeRequest(rollback_before=100, rollback_id="r1"), tmp_path / "l") is None
    assert again.term == 1 and again.list() == []  # a new timeline from step 0
    _save(again, tmp_path, 50)
    assert _dirs(tmp_path) == [
        "step-00000050-t1",
        "step-00000100-t0",
        "step-00000200-t0",
        "step-00000300-t0",
    ]


def test_a_rollback_picks_the_newest_good_before_its_step_and_applies_once(tmp_path: Path) -> None:
    manager = _started(tmp_path, keep_last=10)
    _save(manager, tmp_path, 10, 20, 30)
    manager.mark_good(10)
    manager.mark_good(20)
    request = ResumeRequest(rollback_before=30, rollback_id="job/3")

    rolled = _manager(tmp_path, keep_last=10)
    loaded = rolled.start(request, tmp_path / "l1")
    assert loaded is not None and loaded.info.step == 20 and rolled.rolled_back
    assert _steps(rolled) == [10, 20]  # 30 belongs to the abandoned timeline: invisible, kept
    assert "step-00000030-t0" in _dirs(tmp_path)
    _save(rolled, tmp_path, 30, 40)

    # The next attempt (after a crash) carries the same request: it resumes, no rollback.
    after = _manager(tmp_path, keep_last=10)
    loaded = after.start(request, tmp_path / "l2")
    assert loaded is not None and (loaded.info.step, loaded.info.term) == (40, 1)
    assert not after.rolled_back


def test_resume_false_keeps_the_old_timeline(tmp_path: Path) -> None:
    manager = _started(tmp_path)
    _save(manager, tmp_path, 10, 20)
    manager.mark_good(20)
    fresh = _manager(tmp_path, keep_last=1)
    assert fresh.start(ResumeRequest(fresh=True), tmp_path / "l") is None
    _save(fresh, tmp_path, 5, 6, 7)
    assert _steps(fresh) == [7]
    assert {"step-00000010-t0", "step-00000020-t0"} <= set(_dirs(tmp_path))


def _rewrite_manifest(tmp_path: Path, directory: str, change: Any) -> None:
    path = tmp_path / "ckpt" / directory / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_an_unknown_manifest_format_is_kept_and_skipped(tmp_path: Path) -> None:
    manager = _started(tmp_path, keep_last=2)
    _save(manager, tmp_path, 10, 20)
    _rewrite_manifest(tmp_path, "step-00000020-t0", lambda d: d.update(format=99))
    later = _started(tmp_path, keep_last=1)
    assert later.list()[-1].step == 10
    _save(later, tmp_path, 30, 40)
    assert _dirs(tmp_path) == ["step-00000020-t0", "step-00000040-t1"]


class _ManifestGone(LocalStorage):
    """Lists a manifest that reads as missing: a transient 404."""

    def get_bytes(self, key: str) -> bytes:
        if key.endswith("step-00000020-t0/manifest.json"):
            raise FileNotFoundError(key)
        return super().get_bytes(key)


def test_a_manifest_naming_a_file_outside_its_directory_is_skipped(tmp_path: Path) -> None:
    manager = _started(tmp_path)
    _save(manager, tmp_path, 10, 20)
    _rewrite_manifest(
        tmp_path,
        "step-00000020-t0",
        lambda d: d["files"].update({"../../escape": d["files"]["rng-rank0.pt"]}),
    )
    loaded = _manager(tmp_path).start(ResumeRequest(), tmp_path / "local")
    assert loaded is not None and loaded.info.step == 10
    assert not (tmp_path / "escape").exists()


def test_a_transient_404_keeps_the_checkpoint(tmp_path: Path) -> None:
    manager = _started(tmp_path, keep_last=1)
    _save(manager, tmp_path, 20)
    manager.mark_good(20)
    flaky = CheckpointManager("unused", keep_last=1, storage=_ManifestGone(tmp_path / "ckpt"))
    # The only checkpoint cannot be read: no silent start over, and it stays.
    with pytest.raises(NoUsableCheckpoint, match="step-00000020-t0"):
        flaky.start(ResumeRequest(), tmp_path / "l")
    assert _dirs(tmp_path) == ["step-00000020-t0"]


def test_a_tampered_manifest_is_refused_and_the_previous_checkpoint_used(tmp_path: Path) -> None:
    manager = _started(tmp_path, key=KEY)
    _save(manager, tmp_path, 10, 20)
    _rewrite_manifest(tmp_path, "step-00000020-t0", lambda d: d["metrics"].update(val_loss=0.0))
    loaded = _manager(tmp_path, key=KEY).start(ResumeRequest(), tmp_path / "l")
    assert loaded is not None and loaded.info.step == 10
    assert "step-00000020-t0" in _dirs(tmp_path)


def test_unsigned_manifests_are_refused_when_the_job_has_a_key(tmp_path: Path) -> None:
    manager = _started(tmp_path)  # no key: unsigned
    _save(manager, tmp_path, 10)
    with pytest.raises(NoUsableCheckpoint, match="not signed"):
        _manager(tmp_path, key=KEY).start(ResumeRequest(), tmp_path / "l")


def test_a_forged_good_marker_is_ignored(tmp_path: Path) -> None:
    manager = _started(tmp_path, key=KEY)
    _save(manager, tmp_path, 10)
    (tmp_path / "ckpt" / "step-00000010-t0" / "good.json").write_text('{"step": 10, "time": 1}')
    assert manager.latest(good_only=True) is None


def test_a_replaced_writer_can_neither_commit_nor_delete(tmp_path: Path) -> None:
    zombie = _started(tmp_path, keep_last=1)
    _save(zombie, tmp_path, 10, 20)
    _started(tmp_path)  # a new attempt: term 1, resumed from 20
    before = _dirs(tmp_path)

    with pytest.raises(Fenced, match="superseded"):
        zombie.save(30, _stage(tmp_path, 30))
    assert not (tmp_path / "ckpt" / "step-00000030-t0" / "manifest.json").exists()
    assert zombie.rotate() == []
    assert not zombie.mark_good(20)
    assert set(before) <= set(_dirs(tmp_path))


def test_a_late_commit_from_a_replaced_writer_stays_invisible(tmp_path: Path) -> None:
    zombie = _started(tmp_path)
    _save(zombie, tmp_path, 10)
    current = _started(tmp_path)  # term 1 resumes from step 10
    # The zombie passed the fence check just before that claim, and commits step 20 now.
    staged = _stage(tmp_path, 20)
    files = {p.relative_to(staged).as_posix(): p for p in staged.rglob("*") if p.is_file()}
    for name, path in files.items():
        zombie.storage.put_file(f"step-00000020-t0/{name}", path)
    late = Manifest.create(
        20, epoch=0, world_size=1, files=describe_files(files, 0), writer=Writer(0)
    )
    zombie.storage.put_bytes("step-00000020-t0/manifest.json", late.to_json())

    assert [i.step for i in current.scan() if i.committed] == [10, 20]
    assert _steps(current) == [10]  # term 0's history ended where term 1 took over
    loaded = _manager(tmp_path).start(ResumeRequest(), tmp_path / "l")
    assert loaded is not None and loaded.info.step == 10


def test_two_jobs_cannot_share_one_store(tmp_path: Path) -> None:
    _started(tmp_path, owner=Owner("team-a", "bert", "uid-1"))
    with pytest.raises(StoreConflict, match="team-a/bert") as err:
        _started(tmp_path, owner=Owner("team-b", "gpt", "uid-2"))
    assert "own checkpoint URI" in str(err.value)
    # A re-created job (same namespace and name, new UID) continues the store.
    again = _started(tmp_path, owner=Owner("team-a", "bert", "uid-3"))
    assert again.term == 1


def test_racing_claims_get_distinct_terms(tmp_path: Path) -> None:
    terms: list[int] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        manager = _manager(tmp_path)
        barrier.wait()
        manager.start(ResumeRequest(), tmp_path / f"l-{threading.get_ident()}")
        terms.append(manager.term)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(terms) == [0, 1, 2, 3]


def test_an_unreadable_claim_is_not_an_empty_store(tmp_path: Path) -> None:
    manager = _started(tmp_path)
    _save(manager, tmp_path, 10)
    (tmp_path / "ckpt" / claim_key(0)).write_text("{trunc")
    with pytest.raises(StoreUnreadable, match="not a claim"):
        _manager(tmp_path).start(ResumeRequest(), tmp_path / "l")
    assert _dirs(tmp_path) == ["step-00000010-t0"]


def test_reserved_and_escaping_names_are_refused(tmp_path: Path) -> None:
    manager = _started(tmp_path)
    (tmp_path / "m.json").write_text("{}")
    for name in ("manifest.json", "good.json", "../x", "/abs"):
        with pytest.raises(CheckpointError, match="invalid checkpoint file name"):
            manager.save(10, {name: tmp_path / "m.json"})
    assert manager.scan() == []


# ---- several ranks ------------------------------------------------------------------


class _ThreadGroup:
    """Collectives for ranks running as threads: a stand-in for a process group."""

    def __init__(self, world_size: int) -> None:
        self._barrier = threading.Barrier(world_size, timeout=30)
        self._slots: list[Any] = [None] * world_size

    def all_gather(self, rank: int, obj: Any) -> list[Any]:
        self._slots[rank] = obj
        self._barrier.wait()
        gathered = list(self._slots)
        self._barrier.wait()  # nobody overwrites a slot before everyone has read
        return gathered


def _on_ranks(tmp_path: Path, world_size: int, work: Any, uri: Any = None) -> list[Any]:
    group = _ThreadGroup(world_size)
    results: list[Any] = [None] * world_size

    def run(rank: int) -> None:
        manager = CheckpointManager(
            str(uri(rank) if uri else tmp_path / "ckpt"),
            rank=rank,
            world_size=world_size,
            all_gather_object=lambda obj: group.all_gather(rank, obj),
        )
        try:
            results[rank] = work(rank, manager)
        except Exception as error:
            results[rank] = error

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def _save_on_ranks(tmp_path: Path, world_size: int, stage: Any) -> list[Any]:
    def work(rank: int, manager: CheckpointManager) -> Any:
        manager.start(ResumeRequest(), tmp_path / f"local-{rank}")
        return manager.save(40, stage(rank))

    return _on_ranks(tmp_path, world_size, work)


def test_every_rank_contributes_to_one_manifest(tmp_path: Path) -> None:
    results = _save_on_ranks(tmp_path, 3, lambda rank: _stage(tmp_path, 40, rank))
    assert all(not isinstance(r, BaseException) and r.committed for r in results), results
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


def test_rank0s_store_errors_reach_every_rank(tmp_path: Path) -> None:
    _started(tmp_path, owner=Owner("a", "first"))

    def work(rank: int, manager: CheckpointManager) -> Any:
        manager.owner = Owner("b", "second")
        return manager.start(ResumeRequest(), tmp_path / f"local-{rank}")

    results = _on_ranks(tmp_path, 2, work)
    assert all(isinstance(r, StoreConflict) for r in results), results


def test_multi_rank_manager_needs_collectives(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="all_gather_object"):
        CheckpointManager(str(tmp_path), rank=0, world_size=2)
    with pytest.raises(ValueError, match="out of range"):
        CheckpointManager(
            str(tmp_path),
            rank=2,
            world_size=2,
            all_gather_object=lambda o: [o],
        )


def test_storage_is_the_one_the_uri_names(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    assert isinstance(manager.storage, LocalStorage)
    assert manager.uri == (tmp_path / "ckpt").as_uri()


def test_ranks_agree_to_fall_back_when_one_rank_sees_corruption(tmp_path: Path) -> None:
    # Each rank reads its own copy of the same checkpoints; only rank 1's newest is bad.
    writer = _started(tmp_path)
    _save(writer, tmp_path, 10, 20)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "ckpt", copy)
    (copy / "step-00000020-t0" / "rng-rank0.pt").write_bytes(b"garbage")

    def work(rank: int, manager: CheckpointManager) -> Any:
        loaded = manager.start(ResumeRequest(), tmp_path / f"local-{rank}")
        return (loaded.info.step if loaded else None, manager.term)

    results = _on_ranks(
        tmp_path, 2, work, uri=lambda rank: tmp_path / "ckpt" if rank == 0 else copy
    )
    assert results == [(10, 1), (10, 1)]  # and both write in rank 0's term
    assert not (tmp_path / "local-0" / "step-00000020-t0").exists()
