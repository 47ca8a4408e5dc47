"""The tier-1 guard: verdict sequences, spike detection, batch skipping, health of checkpoints."""

from __future__ import annotations

import json
import math

import pytest

from kubetrain_core.config.schema import RecoveryConfig
from kubetrain_core.contract import format_step_ranges
from kubetrain_trainer.recovery import (
    HealthTracker,
    NanGuard,
    Verdict,
    merge_ranges,
    step_in_ranges,
)

NAN = float("nan")
OK, SKIP, RESTORE, ABORT = Verdict.OK, Verdict.SKIP, Verdict.RESTORE, Verdict.ABORT


def _run(guard: NanGuard, losses: list[float], start: int = 0) -> list[Verdict]:
    return [guard.check(start + i, loss, 1.0) for i, loss in enumerate(losses)]


def test_healthy_steps_pass() -> None:
    guard = NanGuard(RecoveryConfig())
    assert _run(guard, [2.0, 1.9, 1.8]) == [OK] * 3
    assert guard.bad_steps == []


def test_skip_then_restore_then_abort() -> None:
    guard = NanGuard(RecoveryConfig(max_consecutive_skips=2, max_restores=1))
    assert _run(guard, [1.0, NAN, NAN, NAN]) == [OK, SKIP, SKIP, RESTORE]
    assert guard.restores == 1
    # After the restore the consecutive count starts again.
    assert _run(guard, [NAN, NAN, NAN], start=10) == [SKIP, SKIP, ABORT]
    assert guard.bad_steps == [1, 2, 3, 10, 11, 12]


def test_a_healthy_step_resets_the_consecutive_count() -> None:
    guard = NanGuard(RecoveryConfig(max_consecutive_skips=2))
    assert _run(guard, [NAN, NAN, 1.0, NAN, NAN, NAN]) == [SKIP, SKIP, OK, SKIP, SKIP, RESTORE]


def test_zero_budgets() -> None:
    guard = NanGuard(RecoveryConfig(max_consecutive_skips=0, max_restores=0))
    assert _run(guard, [math.inf]) == [ABORT]
    guard = NanGuard(RecoveryConfig(max_consecutive_skips=0, max_restores=1))
    assert _run(guard, [NAN, NAN]) == [RESTORE, ABORT]


def test_non_finite_grad_norm_is_bad_and_none_is_fine() -> None:
    guard = NanGuard(RecoveryConfig())
    assert guard.check(0, 1.0, math.inf) == SKIP
    assert "gradient norm" in (guard.last_reason or "")
    assert guard.check(1, 1.0, None) == OK
    assert guard.last_reason is None


def test_disabled_guard_lets_everything_through() -> None:
    guard = NanGuard(RecoveryConfig(enabled=False))
    assert _run(guard, [NAN] * 10) == [OK] * 10


def test_spike_detected_only_after_the_window_fills() -> None:
    cfg = RecoveryConfig(spike_zscore=3.0, spike_window=5)
    guard = NanGuard(cfg)
    # A jump inside the first (unfilled) window is not judged.
    assert _run(guard, [2.0, 2.1, 50.0, 1.9]) == [OK] * 4
    assert _run(guard, [2.0, 2.1], start=4) == [OK, OK]  # window now full
    window = list(guard.window)
    mean = sum(window) / len(window)
    std = math.sqrt(sum((x - mean) ** 2 for x in window) / len(window))
    assert guard.check(6, mean + 2.5 * std, 1.0) == OK  # within 3 sigma
    assert guard.check(7, mean + 20 * std, 1.0) == SKIP
    assert "spike" in (guard.last_reason or "")
    assert guard.window[-1] != mean + 20 * std  # a bad loss never enters the window


def test_spike_detection_off_without_zscore_and_on_flat_window() -> None:
    guard = NanGuard(RecoveryConfig(spike_window=5))
    assert _run(guard, [1.0] * 5 + [1e6]) == [OK] * 6
    flat = NanGuard(RecoveryConfig(spike_zscore=3.0, spike_window=5))
    assert _run(flat, [1.0] * 5 + [1.5]) == [OK] * 6  # no spread: only NaN/inf are caught
    assert flat.check(6, NAN, 1.0) == SKIP


def test_batches_to_skip_merges_and_extends() -> None:
    guard = NanGuard(RecoveryConfig(max_consecutive_skips=5, skip_batches=2))
    _run(guard, [NAN, NAN, NAN], start=40)
    _run(guard, [1.0], start=43)
    _run(guard, [NAN], start=44)  # within the extension of 40-42: merges
    _run(guard, [1.0] * 5 + [NAN], start=45)  # step 50 is far: its own range
    assert guard.batches_to_skip() == [(40, 46), (50, 52)]
    assert format_step_ranges(guard.batches_to_skip()) == "40-46,50-52"


def test_merge_ranges_and_membership() -> None:
    assert merge_ranges([5, 3, 4, 9]) == [(3, 5), (9, 9)]
    assert merge_ranges([3, 5], extra=1) == [(3, 6)]
    assert merge_ranges([]) == []
    ranges = [(3, 5), (9, 9)]
    assert [s for s in range(12) if step_in_ranges(s, ranges)] == [3, 4, 5, 9]


def test_guard_state_round_trip_through_json() -> None:
    cfg = RecoveryConfig(max_consecutive_skips=1, max_restores=1, spike_zscore=2.0, spike_window=5)
    guard = NanGuard(cfg)
    _run(guard, [1.0, 1.1, 0.9, 1.0, 1.05, NAN, NAN])
    saved = json.loads(json.dumps(guard.state_dict()))

    resumed = NanGuard(cfg)
    resumed.load_state_dict(saved)
    assert resumed.restores == 1
    assert resumed.bad_steps == [5, 6]
    assert list(resumed.window) == list(guard.window)
    assert resumed.window.maxlen == 5
    # Same budget left: the next two bad steps skip, then abort.
    assert _run(resumed, [NAN, NAN], start=7) == [SKIP, ABORT]
    assert resumed.check(9, 100.0, 1.0) == SKIP  # spike judged against the restored window


def test_health_tracker_promotes_after_k_healthy_steps() -> None:
    tracker = HealthTracker(good_after_steps=3)
    assert tracker.checkpoint_saved(10) == []
    assert tracker.last_good is None
    assert tracker.observe_healthy(11) == []
    assert tracker.observe_healthy(12) == []
    assert tracker.checkpoint_saved(13) == []
    assert tracker.observe_healthy(13) == [10]  # steps 11, 12, 13 followed checkpoint 10
    assert tracker.is_good(10)
    assert not tracker.is_good(13)
    assert tracker.observe_healthy(14) == []
    assert tracker.observe_healthy(15) == []
    assert tracker.observe_healthy(16) == [13]
    assert tracker.last_good == 13


def test_health_tracker_counts_only_steps_after_the_checkpoint() -> None:
    tracker = HealthTracker(good_after_steps=1)
    tracker.checkpoint_saved(20)
    assert tracker.observe_healthy(20) == []  # the checkpointed step itself does not count
    assert tracker.observe_healthy(21) == [20]


def test_health_tracker_discard_after_restore() -> None:
    tracker = HealthTracker(good_after_steps=2)
    tracker.mark_good(10)
    tracker.checkpoint_saved(20)
    tracker.checkpoint_saved(30)
    tracker.observe_healthy(31)
    tracker.discard_after(10)  # rolled back to step 10: 20 and 30 belong to the abandoned run
    assert tracker.observe_healthy(32) == []
    assert tracker.last_good == 10


def test_health_tracker_zero_k_and_round_trip() -> None:
    assert HealthTracker(0).checkpoint_saved(5) == [5]
    with pytest.raises(ValueError, match="good_after_steps"):
        HealthTracker(-1)
    tracker = HealthTracker(2)
    tracker.mark_good(5)
    tracker.checkpoint_saved(10)
    tracker.observe_healthy(11)
    resumed = HealthTracker(2)
    resumed.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert resumed.good == [5]
    assert resumed.observe_healthy(12) == [10]


def test_loading_an_empty_state_starts_fresh() -> None:
    guard = NanGuard(RecoveryConfig(max_consecutive_skips=0, max_restores=1))
    guard.check(0, NAN, None)
    guard.load_state_dict({})  # a checkpoint written before the guard saved state
    assert (guard.restores, guard.bad_steps, list(guard.window)) == (0, [], [])
    tracker = HealthTracker(1)
    tracker.mark_good(3)
    tracker.load_state_dict({})
    assert tracker.last_good is None
