"""The operator's notification sender against a real HTTP server on 127.0.0.1: the body
of each format, bounded retries against a server that answers 500 forever, and a server
that never answers holding up neither submit() nor other jobs' notifications. The API
server is faked (the Secret's value, the Events); the e2e test has the real one."""

from __future__ import annotations

import itertools
import logging
import os
import time
import zlib
from collections.abc import Iterator

import pytest
from tests.webhook_receiver import SECRET, Receiver, receiving

from kubetrain_operator import notifier
from kubetrain_operator.actions import EmitEvent, Notify
from kubetrain_operator.notifier import JobRef, Sender
from kubetrain_operator.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as got:
        yield got


class Harness:
    """A Sender whose Secrets are a dict of URLs and whose Events are a list."""

    def __init__(self, urls: dict[str, str], timeout: float = 2.0) -> None:
        self.events: list[tuple[str, EmitEvent]] = []
        self.sender = Sender(
            Settings(notify_allow_private=True),  # the receiver is on loopback
            read_secret=lambda ns, name, key: urls[key],
            emit=lambda job, event: self.events.append((job.name, event)),
            backoff_seconds=0.1,
            timeout_seconds=timeout,
        )


def _note(key: str, event: str = "Failed", fmt: str = "discord") -> Notify:
    fields = {"event": event, "namespace": "ns", "name": "job", "reason": "NodeFailure"}
    return Notify(event, f"TrainingJob ns/job: {event} <!channel>", fields, fmt, "hooks", key)


def _uid_on_lane(lane: int) -> str:
    """A job UID whose notifications go to worker `lane`."""
    return next(
        f"uid-{i}"
        for i in range(1000)
        if zlib.crc32(f"uid-{i}".encode()) % notifier.WORKERS == lane
    )


def test_each_format_posts_its_body(receiver: Receiver) -> None:
    harness = Harness({"d": receiver.url(), "s": receiver.url(), "g": receiver.url()})
    job = JobRef("ns", "job", "u1")
    for key, fmt in (("d", "discord"), ("s", "slack"), ("g", "generic")):
        assert harness.sender.send(job, _note(key, fmt=fmt)) == "sent"
    discord, slack, generic = (p["body"] for p in receiver.got())
    assert discord == {
        "content": "TrainingJob ns/job: Failed <!channel>",
        "allowed_mentions": {"parse": []},
    }
    assert slack == {"text": "TrainingJob ns/job: Failed &lt;!channel&gt;"}
    assert generic["event"] == "Failed" and generic["reason"] == "NodeFailure"
    assert generic["text"] == "TrainingJob ns/job: Failed <!channel>"
    post = receiver.got()[0]
    assert post["type"] == "application/json" and post["agent"].startswith("kubetrain-operator")
    assert harness.events == []


def test_a_server_failing_forever_gets_four_tries_then_a_warning_without_the_url(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness({"k": receiver.url("fail")})
    with caplog.at_level(logging.DEBUG):
        started = time.monotonic()
        harness.sender.submit({"namespace": "ns", "name": "job", "uid": "u1"}, _note("k"))
        assert time.monotonic() - started < 0.1  # queued, never sent in the caller
        assert harness.sender.wait_idle(30)
    tries = receiver.got("fail")
    assert len(tries) == notifier.MAX_ATTEMPTS
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(tries)]
    assert gaps[1] > gaps[0] * 1.5  # exponential backoff
    [(name, event)] = harness.events
    assert (name, event.type, event.reason) == ("job", "Warning", "NotificationFailed")
    assert event.message == "the Failed notification was not delivered: HTTP 500 after 4 attempt(s)"
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        assert SECRET not in text and receiver.base not in text, text


def test_a_hanging_server_blocks_neither_submit_nor_other_jobs(receiver: Receiver) -> None:
    harness = Harness({"hang": receiver.url("hang"), "ok": receiver.url()}, timeout=0.5)
    stuck = {"namespace": "ns", "name": "stuck", "uid": _uid_on_lane(0)}
    other = {"namespace": "ns", "name": "other", "uid": _uid_on_lane(1)}
    started = time.monotonic()
    for _ in range(2):
        harness.sender.submit(stuck, _note("hang"))
    harness.sender.submit(other, _note("ok", "Succeeded"))
    assert time.monotonic() - started < 0.1
    receiver.wait(1, "ok", timeout=10)  # delivered while "stuck" waits on its timeouts
    assert time.monotonic() - started < 5
    assert harness.sender.wait_idle(60)
    failures = [e for name, e in harness.events if name == "stuck"]
    assert len(failures) == 2 and all("timed out after 4 attempt(s)" in e.message for e in failures)
