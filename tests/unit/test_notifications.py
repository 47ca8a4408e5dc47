"""spec.notifications, the pure parts: which transition owes which notification, the
mark in status that keeps each one to a single send, the body of each format, and the
sender's refusals (no Secret, a private address) with fakes for the API server."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubetrain_core.api import (
    NotificationsSpec,
    NotificationStatus,
    RecoveryStatus,
    TrainingJob,
    TrainingJobStatus,
)
from kubetrain_core.contract import TerminationMessage
from kubetrain_core.notify import payload, url_problem
from kubetrain_operator import builders, kube
from kubetrain_operator.actions import Action, EmitEvent, Notify, Observed, PatchStatus
from kubetrain_operator.notifications import owed
from kubetrain_operator.notifier import JobRef, Sender
from kubetrain_operator.reconcile import fail_stored, reconcile
from kubetrain_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(default_checkpoint_uri="s3://ckpt")
SPEC = NotificationsSpec.model_validate({"webhook": {"secretRef": {"name": "hooks", "key": "d"}}})
URL = "https://hooks.example/api/webhooks/1/T0KEN-s3cr3t"


def _status(**fields: Any) -> TrainingJobStatus:
    return TrainingJobStatus.model_validate(fields)


def _restarting(total: int, reason: str = "RestartNodeFailure") -> TrainingJobStatus:
    return _status(
        state="Restarting",
        restarts={"total": total, "nodeFailure": total},
        progress={"step": 40},
        conditions=[
            {"type": "Restarting", "status": "True", "reason": reason, "message": "node n1 lost"}
        ],
    )


# --- which transition owes which notification ------------------------------------------


def test_no_spec_no_mark_and_nothing_owed() -> None:
    assert owed(None, _status(), _restarting(1), "ns", "job") == (None, [])


def test_a_restart_owes_one_notification_with_its_cause_and_moves_the_mark() -> None:
    before = _status(state="Running", notifications={"restarts": 0})
    mark, notes = owed(SPEC, before, _restarting(1), "ns", "job")
    assert mark == NotificationStatus(restarts=1)
    [note] = notes
    assert (note.event, note.secret, note.key, note.format) == (
        "Restarting",
        "hooks",
        "d",
        "discord",
    )
    assert note.text == (
        "TrainingJob ns/job is restarting (RestartNodeFailure, restart 1, step 40): node n1 lost"
    )
    assert note.fields == {
        "event": "Restarting", "namespace": "ns", "name": "job", "restarts": 1, "step": 40,
        "reason": "RestartNodeFailure", "message": "node n1 lost",
    }  # fmt: skip
    # The same level again (a re-reconcile, a restarted operator reading the mark): nothing.
    again = _restarting(1).model_copy(update={"notifications": mark})
    assert owed(SPEC, again, _restarting(1), "ns", "job") == (mark, [])


def test_the_first_mark_counts_the_past_as_done() -> None:
    """Notifications added to a job that already restarted twice: only what comes next."""
    mark, notes = owed(SPEC, _restarting(2), _restarting(2), "ns", "job")
    assert (mark, notes) == (NotificationStatus(restarts=2), [])
    mark, notes = owed(SPEC, _restarting(2), _restarting(3, "RollbackNaN"), "ns", "job")
    assert mark == NotificationStatus(restarts=3)
    assert [n.fields["reason"] for n in notes] == ["RollbackNaN"]


@pytest.mark.parametrize(
    ("state", "reason", "text"),
    [
        (
            "Failed",
            "RestartBudgetExhausted",
            "failed (RestartBudgetExhausted, step 40, 2 restart(s)): ",
        ),
        ("Succeeded", "Succeeded", "succeeded (step 40, 2 restart(s), goodput 93%)"),
    ],
)
def test_the_outcome_is_notified_once(state: str, reason: str, text: str) -> None:
    before = _restarting(2).model_copy(update={"notifications": NotificationStatus(restarts=2)})
    after = _status(
        state=state,
        restarts={"total": 2},
        progress={"step": 40},
        goodputPercent=93.2,
        conditions=[{"type": state, "status": "True", "reason": reason, "message": "why"}],
    )
    mark, [note] = owed(SPEC, before, after, "ns", "job")
    assert mark == NotificationStatus(restarts=2, outcome=state)
    assert note.event == state and note.fields["reason"] == reason
    assert text in note.text
    finished = after.model_copy(update={"notifications": mark})
    assert owed(SPEC, finished, finished, "ns", "job") == (mark, [])


def test_events_left_out_are_not_sent_but_move_the_mark() -> None:
    only_failed = SPEC.model_copy(update={"events": ["Failed"]})
    before = _status(state="Running", notifications={"restarts": 0})
    assert owed(only_failed, before, _restarting(1), "ns", "job") == (
        NotificationStatus(restarts=1),
        [],
    )


def test_events_repeat_is_refused() -> None:
    with pytest.raises(ValidationError, match="each event at most once"):
        NotificationsSpec.model_validate({"webhook": {}, "events": ["Failed", "Failed"]})


# --- through reconcile: after the patch, once --------------------------------------------


def _job(status: dict[str, Any]) -> TrainingJob:
    data = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
    data["metadata"] |= {"namespace": "ns", "uid": "u1", "generation": 1}
    data["spec"]["notifications"] = {"webhook": {}, "format": "slack"}
    data["status"] = status
    return TrainingJob.model_validate(data)


def _pod(job: TrainingJob, index: int, phase: str, code: int | None = None) -> dict[str, Any]:
    pod = builders.build_pod(job, index, RecoveryStatus(), SETTINGS)
    pod["status"] = {"phase": phase}
    if code is not None:
        term = {"exitCode": code}
        pod["status"]["containerStatuses"] = [{"name": "trainer", "state": {"terminated": term}}]
    return pod


def _reconcile(job: TrainingJob, pods: list[dict[str, Any]]) -> list[Action]:
    config = builders.build_configmap(job, SETTINGS)["data"]
    observed = Observed(pods=pods, service=True, config=config, now=NOW)
    return reconcile(job, observed, SETTINGS)


def test_reconcile_notifies_a_restart_after_the_patch_and_never_again() -> None:
    running = {
        "state": "Running",
        "startTime": "2026-01-01T11:59:30Z",
        "conditions": [{"type": "Running", "status": "True", "reason": "AllWorkersRunning"}],
    }
    job = _job(running)
    actions = _reconcile(job, [_pod(job, 0, "Running"), _pod(job, 1, "Failed", 137)])
    notes = [a for a in actions if isinstance(a, Notify)]
    assert [(n.event, n.fields["reason"], n.format) for n in notes] == [
        ("Restarting", "RestartError", "slack")
    ]
    assert (notes[0].secret, notes[0].key) == ("kubetrain-notifications", "url")
    kinds = [type(a) for a in actions]
    assert kinds.index(Notify) == kinds.index(PatchStatus) + 1  # queued once it is recorded
    patched = next(a.status for a in actions if isinstance(a, PatchStatus))
    assert patched["notifications"] == {"restarts": 1, "outcome": None}

    # The next reconcile reads the patched status: the restart is not notified again.
    job = _job(patched)
    later = _reconcile(job, [])
    assert not [a for a in later if isinstance(a, Notify)]


def test_a_job_that_fails_for_good_notifies_failed() -> None:
    job = _job({"state": "Running", "notifications": {"restarts": 0}})
    msg = TerminationMessage("ConfigInvalid", "data.path: no such file")
    pod = _pod(job, 0, "Failed", 64)
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = msg.to_json()
    actions = _reconcile(job, [pod, _pod(job, 1, "Failed", 1)])
    [note] = [a for a in actions if isinstance(a, Notify)]
    assert note.event == "Failed" and note.fields["reason"] == "ConfigInvalid"
    assert "data.path: no such file" in note.text


def test_a_stored_job_failed_by_the_operator_notifies_when_its_notifications_parse() -> None:
    body: dict[str, Any] = {
        "metadata": {"name": "x", "namespace": "ns", "generation": 1},
        "spec": {"notifications": {"webhook": {}, "events": ["Failed"]}, "numNodes": "bad"},
    }
    actions = fail_stored(body, [], "InvalidSpec", "spec is invalid: numNodes", NOW)
    [note] = [a for a in actions if isinstance(a, Notify)]
    assert note.event == "Failed" and "InvalidSpec" in note.text
    body["spec"]["notifications"] = {"webhook": {}, "events": ["Nope"]}  # unusable: none
    assert not [a for a in fail_stored(body, [], "X", "y", NOW) if isinstance(a, Notify)]


# --- the bodies -------------------------------------------------------------------------


def test_payload_per_format() -> None:
    assert payload("discord", "@everyone ok") == {
        "content": "@everyone ok",
        "allowed_mentions": {"parse": []},
    }
    assert payload("slack", "<!channel> a & b") == {"text": "&lt;!channel&gt; a &amp; b"}
    assert payload("generic", "t", {"event": "Failed", "text": "x"}) == {
        "event": "Failed",
        "text": "t",
    }
    assert len(payload("discord", "x" * 5000)["content"]) == 1900


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://discord.com/api/webhooks/1/abc", True),
        ("http://10.0.0.1:8080/hook", True),
        ("ftp://x/y", False),
        ("https:///no-host", False),
        ("https://a b/c", False),
        ("hooks.slack.com/services/x", False),
        ("https://x/" + "a" * 2100, False),
    ],
)
def test_url_problem(url: str, ok: bool) -> None:
    assert (url_problem(url) is None) is ok


# --- the sender's refusals, with fakes --------------------------------------------------


class _Events:
    def __init__(self) -> None:
        self.got: list[EmitEvent] = []

    def __call__(self, job: JobRef, event: EmitEvent) -> None:
        self.got.append(event)


def _note() -> Notify:
    return Notify("Failed", "TrainingJob ns/job failed", {}, "discord", "hooks", "d")


def _sender(read: Any, events: _Events, **kw: Any) -> Sender:
    return Sender(
        Settings(**kw),
        read_secret=read,
        emit=events,
        resolve=lambda host, port: ["10.1.2.3"] if host.endswith("internal") else ["93.184.215.14"],
    )


def test_a_missing_secret_is_a_warning_naming_the_secret_ref() -> None:
    def missing(namespace: str, name: str, key: str) -> str:
        raise kube.SecretUnavailable(f"Secret {namespace}/{name} does not exist")

    events = _Events()
    assert _sender(missing, events).send(JobRef("ns", "job", "u1"), _note()) == "refused"
    [event] = events.got
    assert (event.type, event.reason) == ("Warning", "NotificationRefused")
    assert event.message.startswith("spec.notifications.webhook.secretRef: Secret ns/hooks")
    assert "the Failed notification was not sent" in event.message


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.internal/T0KEN-s3cr3t",  # resolves into the cluster network
        "http://169.254.169.254/T0KEN-s3cr3t",  # the cloud's metadata service
        "http://127.0.0.1:9/T0KEN-s3cr3t",
        "http://[::ffff:127.0.0.1]/T0KEN-s3cr3t",
        "gopher://x/T0KEN-s3cr3t",
    ],
)
def test_a_url_into_the_private_network_is_refused_without_showing_it(url: str) -> None:
    events = _Events()
    read = lambda *_: url  # noqa: E731
    sender = Sender(Settings(), read_secret=read, emit=events)  # the real resolver: IP literals
    if "internal" in url:
        sender = _sender(read, events)
    assert sender.send(JobRef("ns", "job", "u1"), _note()) == "refused"
    [event] = events.got
    assert "Secret ns/hooks key 'd'" in event.message
    assert "T0KEN" not in event.message and "169.254" not in event.message


def test_allow_private_lets_an_in_cluster_receiver_through_to_delivery() -> None:
    events = _Events()
    sender = _sender(
        lambda *_: "http://127.0.0.1:1/T0KEN-s3cr3t", events, notify_allow_private=True
    )
    sender._backoff = 0.01
    assert sender.send(JobRef("ns", "job", "u1"), _note()) == "failed"  # port 1: refused
    [event] = events.got
    assert event.reason == "NotificationFailed" and "after 4 attempt(s)" in event.message
    assert "T0KEN" not in event.message and "127.0.0.1" not in event.message
