"""spec.notifications end to end: the real API server and RBAC, the operator as its own
ServiceAccount, and a real HTTP server on 127.0.0.1 receiving the operator's POSTs.

The webhook URLs live in the namespace's Secret kubetrain-notifications (the one name the
operator may read); the operator runs with KUBETRAIN_NOTIFY_ALLOW_PRIVATE=true, since the
receiver is on loopback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from tests.webhook_receiver import SECRET, Receiver, receiving

from kubetrain_devcluster.jobs import apply_job, example_job, get_job, job_status, wait_state
from kubetrain_devcluster.operator import OperatorProcess, create_s3_secret, install
from localkube.services import wait_until

if TYPE_CHECKING:
    from localkube.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with receiving() as got:
        yield got


@pytest.fixture(scope="module")
def notifying_operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install(cluster)
    env = {"KUBETRAIN_NOTIFY_ALLOW_PRIVATE": "true", "NO_PROXY": "*", "no_proxy": "*"}
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"), env=env)
    op.write_kubeconfig()
    op.start()
    yield op
    op.kill()


def _secret(cluster: Cluster, namespace: str, receiver: Receiver) -> None:
    cluster.kubectl(
        "-n", namespace, "create", "secret", "generic", "kubetrain-notifications",
        f"--from-literal=ok={receiver.url('ok')}",
        f"--from-literal=broken={receiver.url('fail')}",
    )  # fmt: skip


def _job(name: str, key: str, fmt: str, fault: str | None = None, **spec: Any) -> dict[str, Any]:
    """One worker, 40 steps: a job that finishes in seconds once its pod runs."""
    job = example_job(name, max_steps=40, eval_steps=20)
    job["spec"]["numNodes"] = 1
    job["spec"]["checkpoint"]["intervalSteps"] = 10
    job["spec"]["notifications"] = {"webhook": {"secretRef": {"key": key}}, "format": fmt}
    job["spec"]["faultTolerance"]["maxRestarts"] = 1
    if fault:
        job["spec"]["env"] = [{"name": "KUBETRAIN_FAULT_INJECT", "value": fault}]
    job["spec"] |= spec
    return job


def _events(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "-n", namespace, "get", "events", "-o", "json",
        "--field-selector", f"involvedObject.name={name}",
    ).stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def _no_url_anywhere(cluster: Cluster, op: OperatorProcess, namespace: str, name: str) -> None:
    """The URL's secret part is in the Secret only: not in the job, its Events, the log."""
    job = yaml.safe_dump(get_job(cluster, namespace, name))
    events = json.dumps(_events(cluster, namespace, name))
    assert SECRET not in job and SECRET not in events
    assert SECRET not in op.log_path.read_text(errors="replace")


def test_success_is_notified_once_even_across_an_operator_restart(
    cluster: Cluster, notifying_operator: OperatorProcess, namespace: str, receiver: Receiver
) -> None:
    op, name = notifying_operator, "notify-ok"
    create_s3_secret(cluster, namespace)
    _secret(cluster, namespace, receiver)
    apply_job(cluster, namespace, _job(name, "ok", "generic"))
    status = wait_state(cluster, op, namespace, name, state="Succeeded", timeout=600)
    assert status["notifications"] == {"restarts": 0, "outcome": "Succeeded"}
    [post] = receiver.wait(1, timeout=60)
    body = post["body"]
    assert (body["event"], body["namespace"], body["name"]) == ("Succeeded", namespace, name)
    assert body["step"] == 40 and body["restarts"] == 0
    assert body["text"].startswith(f"TrainingJob {namespace}/{name} succeeded")

    # A restarted operator reads the mark in status: nothing is sent again.
    op.kill()
    op.start()
    time.sleep(10)  # several resyncs (every 3 s) of the finished job
    assert len(receiver.got()) == 1
    _no_url_anywhere(cluster, op, namespace, name)


def test_a_restart_and_the_failure_are_notified_in_order_with_their_cause(
    cluster: Cluster, notifying_operator: OperatorProcess, namespace: str, receiver: Receiver
) -> None:
    op, name = notifying_operator, "notify-crash"
    create_s3_secret(cluster, namespace)
    _secret(cluster, namespace, receiver)
    before = len(receiver.got())
    apply_job(cluster, namespace, _job(name, "ok", "discord", fault="crash@step=15"))
    status = wait_state(cluster, op, namespace, name, state="Failed", timeout=600)
    assert status["restarts"]["total"] == 1
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RestartBudgetExhausted"
    posts = receiver.wait(before + 2, timeout=60)[before:]
    texts = [p["body"]["content"] for p in posts]
    assert texts[0].startswith(
        f"TrainingJob {namespace}/{name} is restarting (RestartError, restart 1"
    )
    assert texts[1].startswith(f"TrainingJob {namespace}/{name} failed (RestartBudgetExhausted")
    assert all(p["body"]["allowed_mentions"] == {"parse": []} for p in posts)
    assert status["notifications"] == {"restarts": 1, "outcome": "Failed"}
    time.sleep(6)  # more resyncs: still exactly these two
    assert len(receiver.got()) == before + 2
    _no_url_anywhere(cluster, op, namespace, name)


def test_a_webhook_failing_forever_never_holds_up_the_job(
    cluster: Cluster, notifying_operator: OperatorProcess, namespace: str, receiver: Receiver
) -> None:
    """500 on every try: the job restarts and succeeds on its own schedule; each
    notification gets its bounded tries, then a Warning Event and a metric."""
    op, name = notifying_operator, "notify-broken"
    create_s3_secret(cluster, namespace)
    _secret(cluster, namespace, receiver)
    apply_job(cluster, namespace, _job(name, "broken", "slack", fault="crash@step=15,times=1"))
    status = wait_state(cluster, op, namespace, name, state="Succeeded", timeout=600)
    assert status["restarts"]["total"] == 1 and status["progress"]["step"] == 40
    tries = receiver.wait(8, "fail", timeout=120)  # 4 for Restarting, 4 for Succeeded
    texts = [p["body"]["text"] for p in tries]
    assert [t.split(" ")[2] for t in texts] == ["is"] * 4 + ["succeeded"] * 4

    def warned() -> list[dict[str, Any]]:
        events = _events(cluster, namespace, name)
        return [e for e in events if e["reason"] == "NotificationFailed"]

    wait_until(lambda: len(warned()) == 2, timeout=60, what="two NotificationFailed events")
    for event in warned():
        assert event["type"] == "Warning"
        assert event["message"].endswith("not delivered: HTTP 500 after 4 attempt(s)")
    metrics = op.metrics()
    assert 'kubetrain_operator_notifications_total{event="Restarting",result="failed"}' in metrics
    _no_url_anywhere(cluster, op, namespace, name)


def test_a_missing_key_or_a_secret_the_operator_may_not_read_is_a_clear_warning(
    cluster: Cluster, notifying_operator: OperatorProcess, namespace: str, receiver: Receiver
) -> None:
    """Jobs that fail at once (the trainer rejects their data path): the Failed
    notification cannot be sent, the Event says why, the job is Failed as it would be."""
    op = notifying_operator
    create_s3_secret(cluster, namespace)
    _secret(cluster, namespace, receiver)
    cluster.kubectl(
        "-n", namespace, "create", "secret", "generic", "team-hooks", "--from-literal=url=x"
    )  # fmt: skip
    cases = {
        "notify-no-key": ({"key": "absent"}, "has no key 'absent'"),
        "notify-no-rbac": ({"name": "team-hooks"}, "the operator may not read Secret"),
    }
    for name, (ref, _) in cases.items():
        job = _job(name, "ok", "discord")
        job["spec"]["notifications"]["webhook"]["secretRef"] = ref
        job["spec"]["trainer"]["data"]["path"] = "examples/data/no-such-corpus.txt"
        apply_job(cluster, namespace, job)
    for name, (_, says) in cases.items():
        status = wait_state(cluster, op, namespace, name, state="Failed", timeout=300)
        assert next(c for c in status["conditions"] if c["type"] == "Failed")["reason"] == (
            "ConfigInvalid"
        )

        def refused(job: str = name) -> list[dict[str, Any]]:
            events = _events(cluster, namespace, job)
            return [e for e in events if e["reason"] == "NotificationRefused"]

        wait_until(lambda: bool(refused()), timeout=60, what=f"{name}: NotificationRefused")
        [event] = refused()
        assert event["type"] == "Warning"
        assert event["message"].startswith("spec.notifications.webhook.secretRef: ")
        assert (
            says in event["message"] and "the Failed notification was not sent" in event["message"]
        )
        assert job_status(cluster, namespace, name)["state"] == "Failed"
