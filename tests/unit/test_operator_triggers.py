"""When the operator passes a job (handlers.py): on what a job event changed, and when
the resync loop finds it due. Pure bookkeeping, no API server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from kubetrain_operator import handlers
from kubetrain_operator.clock import WAITING_RESYNC_SECONDS

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
INTERVAL = handlers.SETTINGS.reconcile_interval_seconds


def _body(generation: int, state: str | None = None, **meta: Any) -> kopf.Body:
    status = {"state": state} if state else {}
    raw = {"metadata": {"name": "j", "generation": generation, **meta}, "spec": {}}
    return kopf.Body({**raw, "status": status})  # type: ignore[arg-type]


def test_a_pass_follows_a_new_job_or_a_spec_change_not_a_status_patch() -> None:
    key = "ns/trigger-test"
    try:
        assert handlers._remember(key, _body(1))  # new to this process (the listing, too)
        assert not handlers._remember(key, _body(1, "Running"))  # our own status patch
        assert handlers._slots[key].status == {"state": "Running"}  # kept for the resync
        assert handlers._remember(key, _body(2, "Running"))  # an edited spec
        gone = _body(2, "Running", deletionTimestamp="2026-01-01T12:00:00Z")
        assert handlers._remember(key, gone)  # its deletion began
    finally:
        handlers._forget(key)


def test_a_resync_is_due_by_the_jobs_state_and_never_while_a_pass_runs() -> None:
    running = handlers._JobSlot(status={"state": "Running"}, done_at=100.0, tried_at=99.0)
    assert not running.resync_due(NOW, 100.0 + INTERVAL - 0.1)
    assert running.resync_due(NOW, 100.0 + INTERVAL)
    waiting = handlers._JobSlot(status={"state": "Created"}, done_at=100.0, tried_at=99.0)
    assert not waiting.resync_due(NOW, 100.0 + INTERVAL)
    assert waiting.resync_due(NOW, 100.0 + WAITING_RESYNC_SECONDS)
    with running.lock:  # a pass is running: the loop leaves the job to it
        assert not running.resync_due(NOW, 200.0)


def test_a_failed_pass_is_retried_after_the_retry_delay() -> None:
    # The pass that began at 150 failed: done_at still says 100.
    slot = handlers._JobSlot(status={"state": "Running"}, done_at=100.0, tried_at=150.0)
    assert not slot.resync_due(NOW, 150.0 + handlers.RETRY_SECONDS - 0.1)
    assert slot.resync_due(NOW, 150.0 + handlers.RETRY_SECONDS)
