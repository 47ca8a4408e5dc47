"""What trainers send the operator is untrusted: termination messages and /progress
bodies of every crafted kind must never raise, and must always leave a status that the
CRD's schema accepts (TrainingJobStatus is that schema's source). /progress reads have
a total deadline and a size cap whatever the server does."""

from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain_core.api import Progress, RecoveryStatus, TrainingJob, TrainingJobStatus
from kubetrain_core.contract import TerminationMessage, merge_step_ranges
from kubetrain_core.policy import Cause, classify
from kubetrain_operator import builders
from kubetrain_operator.actions import EmitEvent, Observed, PatchStatus
from kubetrain_operator.progress import MAX_RESPONSE_BYTES, parse_progress, read_progress
from kubetrain_operator.reconcile import reconcile
from kubetrain_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(default_checkpoint_uri="s3://ckpt", failure_settle_seconds=0)


def _config(job: TrainingJob) -> dict[str, str]:
    return builders.build_configmap(job, SETTINGS)["data"]


def _observed(job: TrainingJob, pods: list[dict[str, Any]], **kw: Any) -> Observed:
    """What the operator sees of a job whose Service and ConfigMap are in place."""
    return Observed(pods=pods, service=True, config=_config(job), now=NOW, **kw)


def _job(status: dict[str, Any]) -> TrainingJob:
    data = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
    data["metadata"] |= {"namespace": "ns", "uid": "u1", "generation": 1}
    data["status"] = status
    return TrainingJob.model_validate(data)


def _running(**recovery: Any) -> dict[str, Any]:
    return {
        "state": "Running",
        "startTime": "2026-01-01T11:00:00Z",
        "recovery": recovery,
        "progress": {"step": 50, "updateTime": "2026-01-01T11:59:55Z"},
        "conditions": [{"type": "Running", "status": "True", "reason": "AllWorkersRunning"}],
    }


def _failed_pod(job: TrainingJob, index: int, code: int, message: str | None) -> dict[str, Any]:
    pod = builders.build_pod(job, index, RecoveryStatus(), SETTINGS)
    term: dict[str, Any] = {"exitCode": code, "finishedAt": "2026-01-01T11:59:00Z"}
    if message is not None:
        term["message"] = message
    phase = "Succeeded" if code == 0 else "Failed"
    pod["status"] = {
        "phase": phase,
        "containerStatuses": [{"name": "trainer", "state": {"terminated": term}}],
    }
    return pod


def _checked(actions: list[Any]) -> TrainingJobStatus:
    """The status patch, validated as the API server would; Event notes within bounds."""
    patches = [a for a in actions if isinstance(a, PatchStatus)]
    assert len(patches) == 1
    status = TrainingJobStatus.model_validate(patches[0].status)
    json.dumps(patches[0].status, allow_nan=False)  # no NaN or Infinity reaches the API
    for event in (a for a in actions if isinstance(a, EmitEvent)):
        assert len(event.reason) <= 128
    return status


MANY_RANGES = ",".join(f"{i * 10}-{i * 10 + 3}" for i in range(2000))
CRAFTED_MESSAGES = [
    "",
    "null",
    "[]",
    "42",
    '"just a string"',
    "not json at all",
    "[" * 100_000,
    '{"reason": ["NaNUnrecoverable"]}',
    '{"reason": {"x": 1}, "message": 5}',
    '{"reason": "NaNUnrecoverable", "skip_batches": "x-y"}',
    '{"reason": "NaNUnrecoverable", "skip_batches": "9-3"}',
    '{"reason": "NaNUnrecoverable", "skip_batches": 17}',
    '{"reason": "NaNUnrecoverable", "step": "abc"}',
    '{"reason": "NaNUnrecoverable", "step": 1e13}',
    '{"reason": "NaNUnrecoverable", "step": 10000000000000}',
    '{"reason": "NaNUnrecoverable", "step": Infinity, "restored_step": NaN}',
    '{"reason": "NaNUnrecoverable", "step": 1e20, "restored_step": -5}',
    '{"reason": "NaNUnrecoverable", "skip_batches": "99999999999999-99999999999999"}',
    json.dumps({"reason": "NaNUnrecoverable", "step": 20000, "skip_batches": MANY_RANGES}),
    json.dumps({"reason": "Error", "message": "A" * 100_000}),
    json.dumps({"reason": "Error", "message": "\u00e9\u4e2d\U0001f600" * 2000}),
    json.dumps({"reason": "Hacked", "message": "trust me"}),
    json.dumps({"reason": "Succeeded", "message": "a lie", "step": 300}),
    json.dumps({"reason": "ConfigInvalid", "message": "\x1b[31mred\n\nnewlines"}),
    json.dumps({"reason": "Preempted", "resumed_from": "x" * 10_000}),
]


@pytest.mark.parametrize("message", CRAFTED_MESSAGES, ids=range(len(CRAFTED_MESSAGES)))
@pytest.mark.parametrize("code", [1, 65, 137])
def test_crafted_termination_messages_never_break_reconcile(message: str, code: int) -> None:
    job = _job(_running(skipBatches="1-2"))
    pods = [_failed_pod(job, 0, code, message), _failed_pod(job, 1, 1, None)]
    observed = _observed(job, pods)
    status = _checked(reconcile(job, observed, SETTINGS))
    assert status.state in ("Restarting", "Failed")  # never "Succeeded" on a failed exit
    assert len(status.recovery.skipBatches) <= 4096


def test_a_claimed_success_needs_exit_code_zero() -> None:
    lie = TerminationMessage("Succeeded", "done", step=300)
    assert classify(1, lie) is Cause.ERROR
    assert classify(0, lie) is Cause.SUCCEEDED


def test_accumulated_skip_ranges_stay_within_the_status_bound() -> None:
    job = _job(_running(skipBatches=format_ranges(range(0, 4000, 20))[:4000].rsplit(",", 1)[0]))
    message = json.dumps(
        {"reason": "NaNUnrecoverable", "step": 90_000, "skip_batches": MANY_RANGES}
    )
    pods = [_failed_pod(job, 0, 65, message), _failed_pod(job, 1, 1, None)]
    status = _checked(reconcile(job, _observed(job, pods), SETTINGS))
    assert status.recovery.skipBatches and len(status.recovery.skipBatches) <= 4000
    assert merge_step_ranges([(4, 9), (0, 1), (2, 5)]) == [(0, 9)]  # overlapping, adjacent
    # Over the bound, the closest ranges join first (a few good batches skipped too).
    assert merge_step_ranges([(0, 1), (3, 5), (100, 101)], max_chars=11) == [(0, 5), (100, 101)]


def format_ranges(starts: range) -> str:
    return ",".join(f"{s}-{s + 2}" for s in starts)


CRAFTED_PROGRESS: list[Any] = [
    None,
    [],
    "step",
    {"step": "12"},
    {"step": -1},
    {"step": 10**13},
    {"step": True},
    {"step": 12, "loss": "low", "valLoss": 1e300, "epoch": -3, "tokensPerSecond": -1},
    {"step": 12, "totalSteps": 10**20, "loss": float("inf")},
    {"step": 12, "lastCheckpoint": "s3://x"},
    {"step": 12, "lastCheckpoint": {"step": 10**13, "uri": "s3://b/x", "time": 1e20}},
    {"step": 12, "lastCheckpoint": {"step": 5, "uri": ["s3://b/x"], "time": "not-a-date"}},
    {"step": 12, "lastCheckpoint": {"uri": "u" * 5000}},
    {"step": 12, "resumedFrom": {"deep": [[[[1]]]]}},
    {"step": 12, "resumedFrom": "r" * 5000},
]


@pytest.mark.parametrize("body", CRAFTED_PROGRESS, ids=range(len(CRAFTED_PROGRESS)))
def test_crafted_progress_never_breaks_reconcile(body: Any) -> None:
    progress = parse_progress(body)
    assert progress is None or isinstance(progress, Progress)
    job = _job(_running())
    pods = [builders.build_pod(job, i, RecoveryStatus(), SETTINGS) for i in (0, 1)]
    for pod in pods:
        pod["status"] = {"phase": "Running", "podIP": "10.0.0.1"}
    observed = _observed(job, pods, progress=progress)
    status = _checked(reconcile(job, observed, SETTINGS))
    assert status.progress is not None  # a valid step is kept (it may go down: rollbacks)


# ---- reads against misbehaving servers -------------------------------------------------


@contextmanager
def _server(behave: Callable[[socket.socket], None]) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    conn.recv(4096)
                    behave(conn)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _drip(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
    for _ in range(100):
        conn.sendall(b" ")
        time.sleep(0.4)  # each byte well within a per-recv timeout


_CHUNK = b"1" * 65536  # made once: the server's memory must not count as the reader's


def _flood(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
    for _ in range(3200):  # 200 MiB, if anyone kept reading
        conn.sendall(_CHUNK)


def _nested(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + b"[" * 100_000)


def _fine(conn: socket.socket) -> None:
    body = json.dumps({"step": 7, "totalSteps": 10, "loss": float("nan")}).encode()
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)


def _teapot(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 418 I'm a teapot\r\n\r\n{}")


@pytest.mark.parametrize("behave", [_drip, _flood, _nested])
def test_a_hostile_progress_endpoint_costs_at_most_the_deadline_and_a_bounded_buffer(
    behave: Callable[[socket.socket], None],
) -> None:
    with _server(behave) as port:
        tracemalloc.start()
        started = time.monotonic()
        read = read_progress("127.0.0.1", port, timeout=2.0)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert read.progress is None and read.error
    assert elapsed < 3.0, elapsed
    assert peak < 8 * MAX_RESPONSE_BYTES, peak


def test_a_well_behaved_endpoint_is_read_and_nan_is_absent() -> None:
    with _server(_fine) as port:
        read = read_progress("127.0.0.1", port, timeout=2.0)
    assert read.error is None and read.progress is not None
    assert read.progress.step == 7 and read.progress.loss is None


def test_a_refused_connection_is_not_an_error_and_a_bad_status_is() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    assert read_progress("127.0.0.1", port, timeout=1.0).error is None  # not serving yet
    with _server(_teapot) as teapot:
        assert "418" in (read_progress("127.0.0.1", teapot, timeout=1.0).error or "")


def test_unreadable_progress_pauses_the_hang_clock() -> None:
    data = _running()
    data["progress"] |= {"lastStepTime": "2026-01-01T11:50:00Z"}
    job = _job(data)
    job.spec.faultTolerance.progressDeadlineSeconds = 60
    pods = [builders.build_pod(job, i, RecoveryStatus(), SETTINGS) for i in (0, 1)]
    for pod in pods:
        pod["status"] = {"phase": "Running", "podIP": "10.0.0.1"}
    observed = Observed(
        pods=pods, service=True, config=_config(job), now=NOW, progress_error="timed out"
    )
    status = _checked(reconcile(job, observed, SETTINGS))
    assert status.restarts.hang == 0  # ten minutes without a step, but unseen: no restart
    cond = next(c for c in status.conditions if c.type == "ProgressReadable")
    assert cond.status == "False" and "paused" in cond.message
    assert status.progress is not None and status.progress.unreadableSince
