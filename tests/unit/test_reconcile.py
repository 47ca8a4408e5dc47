"""The pure reconcile step: observed pods in, actions out. No cluster: plain dicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from kubetrain_core.api import Progress, RecoveryStatus, TrainingJob, TrainingJobStatus
from kubetrain_core.config import parse_config
from kubetrain_core.contract import TerminationMessage
from kubetrain_operator import builders
from kubetrain_operator.actions import (
    Action,
    CreateObject,
    DeleteJob,
    DeletePods,
    EmitEvent,
    Observe,
    Observed,
    PatchStatus,
    UpdateConfig,
)
from kubetrain_operator.clock import FINISHED_RESYNC_SECONDS, WAITING_RESYNC_SECONDS, resync_spacing
from kubetrain_operator.progress import parse_progress
from kubetrain_operator.reconcile import fail_stored, reconcile
from kubetrain_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(default_checkpoint_uri="s3://ckpt", restart_backoff_seconds=10)
NAME = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())["metadata"]["name"]


def _job(status: dict[str, Any] | None = None, **spec: Any) -> TrainingJob:
    data = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
    data["metadata"] |= {
        "namespace": "ns", "uid": "u1", "generation": 1,
        "creationTimestamp": "2026-01-01T11:59:00Z",
    }  # fmt: skip
    data["spec"] |= spec
    if status is not None:
        data["status"] = status
    return TrainingJob.model_validate(data)


def _pod(index: int, phase: str, attempt: int = 0, **extra: Any) -> dict[str, Any]:
    job = _job()
    pod = builders.build_pod(job, index, RecoveryStatus(attempt=attempt), SETTINGS)
    pod["status"] = {"phase": phase, **extra}
    return pod


def _terminated(code: int, message: TerminationMessage | None = None) -> dict[str, Any]:
    term: dict[str, Any] = {"exitCode": code}
    if message:
        term["message"] = message.to_json()
    return {"containerStatuses": [{"name": "trainer", "state": {"terminated": term}}]}


def _run(
    job: TrainingJob,
    pods: list[dict[str, Any]],
    now: datetime = NOW,
    progress: Progress | None = None,
    **kw: Any,
) -> list[Action]:
    config = builders.build_configmap(job, SETTINGS)["data"]
    observed = Observed(pods=pods, service=True, config=config, now=now, progress=progress)
    return reconcile(job, observed, SETTINGS, **kw)


def _status(actions: list[Action]) -> TrainingJobStatus:
    patches = [a for a in actions if isinstance(a, PatchStatus)]
    assert len(patches) == 1
    return TrainingJobStatus.model_validate(patches[0].status)


def _created_pods(actions: list[Action]) -> list[str]:
    return [
        a.body["metadata"]["name"]
        for a in actions
        if isinstance(a, CreateObject) and a.body["kind"] == "Pod"
    ]


def _running_status(**recovery: Any) -> dict[str, Any]:
    return {
        "state": "Running",
        "startTime": "2026-01-01T11:59:30Z",
        "recovery": recovery,
        "conditions": [{"type": "Running", "status": "True", "reason": "AllWorkersRunning"}],
    }


def test_new_job_creates_service_configmap_signing_key_and_the_gang() -> None:
    observed = Observed(pods=[], service=False, config=None, now=NOW, signing_key="k3y")
    actions = reconcile(_job(), observed, SETTINGS)
    kinds = [a.body["kind"] for a in actions if isinstance(a, CreateObject)]
    assert kinds == ["Service", "ConfigMap", "Secret", "NetworkPolicy", "Pod", "Pod"]
    policy = next(
        a.body for a in actions if isinstance(a, CreateObject) and a.body["kind"] == "NetworkPolicy"
    )
    gang = {"podSelector": {"matchLabels": {builders.JOB_LABEL: NAME}}}
    assert policy["spec"]["podSelector"] == gang["podSelector"]
    everyone, metrics = policy["spec"]["ingress"]
    assert everyone == {"from": [gang]}  # rendezvous and collectives: the gang only
    assert metrics["ports"] == [{"protocol": "TCP", "port": 9090}]
    secret = next(
        a.body for a in actions if isinstance(a, CreateObject) and a.body["kind"] == "Secret"
    )
    assert secret["metadata"]["name"] == f"{NAME}-checkpoint-key"
    assert secret["stringData"] == {"checkpoint-key": "k3y"}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u1"  # deleted with the job
    assert _created_pods(actions) == [f"{NAME}-0", f"{NAME}-1"]
    status = _status(actions)
    assert status.state == "Created" and status.startTime == "2026-01-01T12:00:00Z"
    assert any(isinstance(a, EmitEvent) and a.reason == "PodsCreated" for a in actions)
    # the status patch comes before the creates it implies
    first_patch = next(i for i, a in enumerate(actions) if isinstance(a, PatchStatus))
    assert first_patch < next(i for i, a in enumerate(actions) if _created_pods([a]))


def test_an_edited_spec_updates_the_configmap_for_the_next_attempt() -> None:
    """Mutable fields (spec.checkpoint.intervalSteps, ...) edited on a running job reach
    the ConfigMap; before, it was created once and edits were silently ignored."""
    before = _job(_running_status())
    pods = [_pod(0, "Running"), _pod(1, "Running")]
    stale = builders.build_configmap(before, SETTINGS)["data"]
    edited = _job(_running_status(), checkpoint={"intervalSteps": 7, "keepLast": 5})
    observed = Observed(pods=pods, service=True, config=stale, now=NOW)
    actions = reconcile(edited, observed, SETTINGS)
    updates = [a for a in actions if isinstance(a, UpdateConfig)]
    assert [u.name for u in updates] == [f"{NAME}-config"]
    cfg = parse_config(yaml.safe_load(updates[0].data["trainer.yaml"]))
    assert (cfg.checkpoint.interval_steps, cfg.checkpoint.keep_last) == (7, 5)
    assert any(isinstance(a, EmitEvent) and a.reason == "ConfigUpdated" for a in actions)
    assert not any(isinstance(a, DeletePods) for a in actions)  # the running gang stays
    # Once the ConfigMap holds it, nothing more to do.
    same = Observed(pods=pods, service=True, config=updates[0].data, now=NOW)
    assert not any(isinstance(a, UpdateConfig) for a in reconcile(edited, same, SETTINGS))


def test_existing_pods_are_never_created_twice() -> None:
    """An operator restarted after creating pod 0 creates only pod 1."""
    job = _job({"state": "Created", "startTime": "2026-01-01T11:59:30Z"})
    actions = _run(job, [_pod(0, "Running")])
    assert _created_pods(actions) == [f"{NAME}-1"]
    assert _created_pods(_run(job, [_pod(0, "Running"), _pod(1, "Pending")])) == []


def test_all_workers_running_sets_condition_and_measures_time_to_running() -> None:
    job = _job({"state": "Created", "startTime": "2026-01-01T11:59:30Z"})
    actions = _run(job, [_pod(0, "Running"), _pod(1, "Running")])
    status = _status(actions)
    assert status.state == "Running"
    assert status.workers.running == 2
    assert status.allRunningTime == "2026-01-01T12:00:00Z"
    observed = [a for a in actions if isinstance(a, Observe)]
    assert observed == [Observe("time_to_running", 60.0)]


def test_a_worker_killed_by_a_signal_restarts_the_whole_gang() -> None:
    job = _job(_running_status())
    pods = [_pod(0, "Running"), _pod(1, "Failed", **_terminated(137))]
    actions = _run(job, pods)
    status = _status(actions)
    assert status.state == "Restarting"
    assert status.restarts.total == 1 and status.restarts.error == 1
    assert status.recovery.attempt == 1
    assert status.recovery.restartAfter == "2026-01-01T12:00:10Z"
    deletes = [a for a in actions if isinstance(a, DeletePods)]
    assert deletes == [DeletePods((f"{NAME}-0", f"{NAME}-1"), "RestartError")]
    assert _created_pods(actions) == []
    assert Observe("restart", 1, "Error") in actions
    order = [type(a) for a in actions]
    assert order.index(PatchStatus) < order.index(DeletePods)


def test_next_attempt_waits_for_old_pods_and_backoff() -> None:
    job = _job(_running_status(attempt=1, restartAfter="2026-01-01T12:00:10Z"))
    old = _pod(0, "Running", attempt=0)
    old["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    assert _created_pods(_run(job, [old])) == []  # old pod still terminating
    assert _created_pods(_run(job, [])) == []  # backoff not over
    later = NOW + timedelta(seconds=11)
    actions = _run(job, [], now=later)
    assert _created_pods(actions) == [f"{NAME}-0", f"{NAME}-1"]
    labels = [
        a.body["metadata"]["labels"][builders.ATTEMPT_LABEL]
        for a in actions
        if isinstance(a, CreateObject) and a.body["kind"] == "Pod"
    ]
    assert labels == ["1", "1"]


def test_stale_attempt_pods_are_deleted() -> None:
    job = _job(_running_status(attempt=2))
    actions = _run(job, [_pod(0, "Running", attempt=1)])
    assert DeletePods((f"{NAME}-0",), "StaleAttempt") in actions
    assert _created_pods(actions) == []


def test_exhausted_restart_budget_fails_naming_the_cause() -> None:
    status = _running_status(attempt=3)
    status["restarts"] = {"total": 3, "error": 3}
    job = _job(status)
    actions = _run(
        job, [_pod(0, "Failed", attempt=3, **_terminated(137)), _pod(1, "Running", attempt=3)]
    )
    st = _status(actions)
    assert st.state == "Failed" and st.completionTime
    failed = next(c for c in st.conditions if c.type == "Failed")
    assert failed.reason == "RestartBudgetExhausted"
    assert "Error" in failed.message
    assert DeletePods((f"{NAME}-1",), "CleanPodPolicyRunning") in actions


def test_config_invalid_fails_at_once_with_the_trainers_message() -> None:
    msg = TerminationMessage("ConfigInvalid", "optimization.optimizer.name: unknown optimizer 'x'")
    job = _job(_running_status())
    actions = _run(
        job, [_pod(0, "Failed", **_terminated(64, msg)), _pod(1, "Failed", **_terminated(1))]
    )
    st = _status(actions)
    failed = next(c for c in st.conditions if c.type == "Failed")
    assert failed.reason == "ConfigInvalid"
    assert "unknown optimizer" in failed.message
    assert st.restarts.total == 0
    assert any(isinstance(a, EmitEvent) and a.type == "Warning" for a in actions)


def test_nan_asks_the_trainer_for_a_good_checkpoint_before_the_failed_one() -> None:
    msg = TerminationMessage(
        "NaNUnrecoverable", "nan", step=41, restored_step=40, skip_batches="40-41"
    )
    job = _job(_running_status(attempt=2))
    actions = _run(
        job, [_pod(0, "Failed", 2, **_terminated(1, msg)), _pod(1, "Failed", 2, **_terminated(1))]
    )
    st = _status(actions)
    # The operator never lists the store: it says "before step 40", the trainer picks.
    assert st.recovery.rollbackBeforeStep == 40
    assert st.recovery.rollbackId == "u1/3"  # unique per job and attempt
    assert st.recovery.attempt == 3
    assert st.recovery.skipBatches == "40-43"  # skipBatches: 2 from the example
    assert st.recovery.lrScale == 0.5
    assert st.restarts.nan == 1
    restarted = next(c for c in st.conditions if c.type == "Restarting")
    assert "before step 40" in restarted.message


def test_pods_carry_the_rollback_request_and_the_signing_key_reference() -> None:
    recovery = RecoveryStatus(attempt=3, rollbackBeforeStep=40, rollbackId="u1/3")
    pod = builders.build_pod(_job(), 0, recovery, SETTINGS)
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["KUBETRAIN_ROLLBACK_BEFORE"]["value"] == "40"
    assert env["KUBETRAIN_ROLLBACK_ID"]["value"] == "u1/3"
    assert env["KUBETRAIN_JOB_UID"]["value"] == "u1"
    ref = env["KUBETRAIN_CHECKPOINT_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": f"{NAME}-checkpoint-key", "key": "checkpoint-key"}


def test_success_needs_rank_zero_and_sets_completion_time() -> None:
    job = _job(_running_status())
    done = TerminationMessage("Succeeded", "done", step=300)
    pods = [_pod(0, "Succeeded", **_terminated(0, done)), _pod(1, "Running")]
    assert _status(_run(job, pods)).state == "Running"  # waits for the other worker
    pods[1] = _pod(1, "Succeeded", **_terminated(0))
    st = _status(_run(job, pods))
    assert st.state == "Succeeded"
    assert st.completionTime == "2026-01-01T12:00:00Z"
    assert st.progress is not None and st.progress.step == 300


def test_suspend_deletes_pods_and_resume_starts_a_new_attempt() -> None:
    job = _job(_running_status(), runPolicy={"suspend": True})
    actions = _run(job, [_pod(0, "Running"), _pod(1, "Running")])
    st = _status(actions)
    assert st.state == "Suspended" and st.recovery.attempt == 1
    assert st.restarts.total == 0
    assert DeletePods((f"{NAME}-0", f"{NAME}-1"), "Suspended") in actions
    resumed = _job(st.model_dump(mode="json"), runPolicy={"suspend": False})
    actions = _run(resumed, [])
    assert _created_pods(actions) == [f"{NAME}-0", f"{NAME}-1"]
    assert _status(actions).state == "Created"


def test_finished_job_is_deleted_after_its_ttl() -> None:
    status = {
        "state": "Succeeded",
        "completionTime": "2026-01-01T11:59:00Z",
        "conditions": [{"type": "Succeeded", "status": "True"}],
    }
    job = _job(status, runPolicy={"ttlSecondsAfterFinished": 30})
    assert any(isinstance(a, DeleteJob) for a in _run(job, []))
    job = _job(status, runPolicy={"ttlSecondsAfterFinished": 300})
    assert not any(isinstance(a, DeleteJob) for a in _run(job, []))


def test_active_deadline_fails_the_job() -> None:
    job = _job(_running_status(), runPolicy={"activeDeadlineSeconds": 10})
    st = _status(_run(job, [_pod(0, "Running"), _pod(1, "Running")]))
    assert st.state == "Failed"
    assert next(c for c in st.conditions if c.type == "Failed").reason == "DeadlineExceeded"


def test_progress_is_copied_and_a_stalled_gang_counts_as_hung() -> None:
    job = _job(_running_status(), faultTolerance={"progressDeadlineSeconds": 60})
    pods = [_pod(0, "Running"), _pod(1, "Running")]
    st = _status(_run(job, pods, progress=Progress(step=10, totalSteps=300, loss=2.5)))
    assert st.progress is not None and st.progress.step == 10 and st.progress.loss == 2.5
    later = NOW + timedelta(seconds=61)
    stalled = _job(st.model_dump(mode="json"), faultTolerance={"progressDeadlineSeconds": 60})
    actions = _run(stalled, pods, now=later, progress=Progress(step=10))
    st2 = _status(actions)
    assert st2.restarts.hang == 1 and st2.state == "Restarting"
    # SIGKILL 5 s after SIGTERM: a hung trainer cannot reach the step where it saves.
    hung = [a for a in actions if isinstance(a, DeletePods)]
    assert [(a.names, a.grace_seconds) for a in hung] == [((f"{NAME}-0", f"{NAME}-1"), 5)]

    # The next gang starts its own clock: running at once, later than the old deadline,
    # it is not hung, and resuming below the old step is no stall either.
    pods = [_pod(0, "Running", attempt=1), _pod(1, "Running", attempt=1)]
    for seconds, step in ((120, 0), (130, 5), (180, 8)):
        job = _job(st2.model_dump(mode="json"), faultTolerance={"progressDeadlineSeconds": 60})
        at = NOW + timedelta(seconds=seconds)
        st2 = _status(_run(job, pods, now=at, progress=Progress(step=step)))
        assert st2.restarts.hang == 1 and st2.state == "Running", seconds


def test_evicted_worker_counts_as_node_failure() -> None:
    job = _job(_running_status())
    pods = [_pod(0, "Running"), _pod(1, "Failed", reason="Evicted", message="node gone")]
    st = _status(_run(job, pods))
    assert st.restarts.nodeFailure == 1


def test_a_preempted_or_drained_worker_is_a_preemption_and_a_tainted_node_a_node_failure() -> None:
    def disrupted(kind: str, reason: str, **extra: Any) -> dict[str, Any]:
        cond = {"type": kind, "status": "True", "reason": reason, "message": "by request"}
        return _pod(1, "Running", conditions=[cond], **extra) | {
            "metadata": _pod(1, "Running")["metadata"]
            | {"deletionTimestamp": "2026-01-01T12:00:00Z"}
        }

    job = _job(_running_status())
    cases = {
        ("DisruptionTarget", "PreemptionByScheduler"): "preempted",
        ("DisruptionTarget", "EvictionByEvictionAPI"): "preempted",  # kubectl drain
        ("TerminationTarget", "WorkloadEvicted"): "preempted",  # Kueue
        ("DisruptionTarget", "DeletionByTaintManager"): "nodeFailure",
    }
    for (kind, reason), key in cases.items():
        st = _status(_run(job, [_pod(0, "Running"), disrupted(kind, reason)]))
        assert getattr(st.restarts, key) == 1 and st.restarts.total == 1, (kind, reason)
        assert st.recovery.lastFailure.startswith(
            f"Restart{'Preempted' if key == 'preempted' else 'NodeFailure'}"
        )
    # The trainer's own word wins over the condition when it is not a plain error: NaN.
    nan = _pod(1, "Failed", **_terminated(65, TerminationMessage("NaNUnrecoverable", "nan")))
    nan["status"]["conditions"] = [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    ]
    assert _status(_run(job, [_pod(0, "Running"), nan])).restarts.nan == 1


def test_reconcile_of_a_steady_job_does_nothing() -> None:
    job = _job({"state": "Created", "startTime": "2026-01-01T11:59:30Z"})
    pods = [_pod(0, "Running"), _pod(1, "Running")]
    st = _status(_run(job, pods))
    steady = _job(st.model_dump(mode="json"))
    assert _run(steady, pods) == []


def test_a_starting_attempt_does_not_reset_progress_to_zero() -> None:
    status = _running_status(attempt=1)
    status["progress"] = {"step": 57, "totalSteps": 300}
    job = _job(status)
    pods = [_pod(0, "Running", attempt=1), _pod(1, "Running", attempt=1)]
    actions = _run(job, pods, progress=Progress(step=0, totalSteps=300))
    patches = [a.status for a in actions if isinstance(a, PatchStatus)]
    assert all(p["progress"]["step"] == 57 for p in patches)
    st = _status(_run(job, pods, progress=Progress(step=58, totalSteps=300)))
    assert st.progress is not None and st.progress.step == 58


def test_a_stored_job_the_models_reject_fails_once_and_its_pods_go() -> None:
    body: dict[str, Any] = {"metadata": {"name": "x", "generation": 2}, "spec": {}}
    pods = [_pod(0, "Running"), _pod(1, "Running")]
    message = "spec is invalid: trainer.optimization.optimizer.name"
    actions = fail_stored(body, pods, "InvalidSpec", message, NOW)
    st = _status(actions)
    failed = next(c for c in st.conditions if c.type == "Failed")
    assert (st.state, failed.reason, failed.observedGeneration) == ("Failed", "InvalidSpec", 2)
    assert "optimizer.name" in failed.message
    # A running job whose spec stopped validating does not leave its pods behind.
    assert DeletePods((f"{NAME}-0", f"{NAME}-1"), "InvalidSpec") in actions
    body["status"] = st.model_dump(mode="json")
    assert fail_stored(body, [], "InvalidSpec", "again", NOW) == []


def test_progress_json_from_rank_zero_is_parsed_and_rounded() -> None:
    progress = parse_progress(
        {
            "step": 57,
            "totalSteps": 300,
            "epoch": 0.30712,
            "loss": 2.0184597969055176,
            "valLoss": None,
            "tokensPerSecond": 875.97,
            "lastCheckpoint": {"step": 50, "uri": "s3://b/j/step-00000050", "time": 1795314406.8},
            "restarts": 1,
        }
    )
    assert progress is not None
    assert (progress.step, progress.totalSteps, progress.loss) == (57, 300, 2.0185)
    assert progress.lastCheckpoint is not None
    assert progress.lastCheckpoint.time == "2026-11-22T02:26:46Z"
    assert parse_progress({"step": -1}) is None  # out of bounds: keep the previous reading


def test_goodput_counts_only_steps_beyond_the_highest_reached() -> None:
    """90 s of new steps, a restart, 50 s redoing lost steps, 50 s of new ones."""
    status = _running_status() | {"startTime": "2026-01-01T12:00:00Z"}
    pods = [_pod(0, "Running"), _pod(1, "Running")]

    def read(
        status: TrainingJobStatus | dict[str, Any], seconds: int, step: int
    ) -> TrainingJobStatus:
        body = status if isinstance(status, dict) else status.model_dump(mode="json")
        at = NOW + timedelta(seconds=seconds)
        return _status(_run(_job(body), pods, now=at, progress=Progress(step=step)))

    st = read(read(status, 10, 0), 100, 90)
    assert st.goodputPercent == 90.0 and st.recovery.highestStep == 90
    pods = [_pod(0, "Running"), _pod(1, "Failed", **_terminated(137))]
    st = _status(_run(_job(st.model_dump(mode="json")), pods, now=NOW + timedelta(seconds=120)))
    assert st.recovery.attempt == 1
    # The next attempt resumed from step 70: the downtime and reaching 90 again are lost.
    pods = [_pod(0, "Running", attempt=1), _pod(1, "Running", attempt=1)]
    for seconds, step in ((140, 70), (190, 90), (240, 140)):
        st = read(st, seconds, step)
    assert st.recovery.productiveSeconds == 140.0
    assert st.goodputPercent == round(100 * 140 / 240, 1)
    assert st.recovery.highestStep == 140


def _on(pod: dict[str, Any], node: str) -> dict[str, Any]:
    pod["spec"]["nodeName"] = node
    return pod


def test_a_peer_error_waits_to_see_whether_a_node_died() -> None:
    """Worker 0 errors out because its peer vanished; the peer's pod still says Running."""
    job = _job(_running_status())
    term = _terminated(1)
    term["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2026-01-01T12:00:00Z"
    pods = [_on(_pod(0, "Failed", **term), "n1"), _on(_pod(1, "Running"), "n2")]
    settling = _run(job, pods, now=NOW + timedelta(seconds=5))
    assert _status(settling).restarts.total == 0  # no decision yet
    assert not [a for a in settling if isinstance(a, DeletePods)]

    # The peer's node turns NotReady: the restart is a node failure, and a pod stuck
    # Terminating there is force-deleted at once.
    pods[1]["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:20Z"
    observed = Observed(pods, True, True, NOW + timedelta(seconds=8), lost_nodes=frozenset({"n2"}))
    actions = reconcile(job, observed, SETTINGS)
    st = _status(actions)
    assert st.restarts.nodeFailure == 1 and st.restarts.error == 0
    assert "node n2" in st.recovery.lastFailure
    assert DeletePods((f"{NAME}-1",), "StuckTerminating", grace_seconds=0) in actions


def test_a_peer_error_counts_as_error_once_the_settle_time_passed() -> None:
    job = _job(_running_status())
    term = _terminated(1)
    term["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2026-01-01T12:00:00Z"
    pods = [_on(_pod(0, "Failed", **term), "n1"), _on(_pod(1, "Running"), "n2")]
    later = NOW + timedelta(seconds=SETTINGS.failure_settle_seconds + 1)
    assert _status(_run(job, pods, now=later)).restarts.error == 1


def test_resync_spacing_slows_finished_jobs_until_their_ttl_is_due() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    done = (now - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    running = {"state": "Running"}
    finished = {"state": "Succeeded", "completionTime": done}
    assert resync_spacing({}, running, now, 3.0) == 3.0
    assert resync_spacing({}, {"state": "Restarting"}, now, 3.0) == 3.0  # its backoff ends
    assert resync_spacing({}, {"state": "Created"}, now, 3.0) == WAITING_RESYNC_SECONDS
    assert resync_spacing({}, {}, now, 30.0) == 30.0  # never shorter than the interval
    assert resync_spacing({}, finished, now, 3.0) == FINISHED_RESYNC_SECONDS
    assert resync_spacing({}, {"state": "Failed"}, now, 3.0) == FINISHED_RESYNC_SECONDS
    # TTL of 10 s, finished 30 s ago: due, so the job is passed at the usual pace.
    assert resync_spacing({"runPolicy": {"ttlSecondsAfterFinished": 10}}, finished, now, 3.0) == 3.0
    assert (
        resync_spacing({"runPolicy": {"ttlSecondsAfterFinished": 600}}, finished, now, 3.0)
        == FINISHED_RESYNC_SECONDS
    )


def test_a_one_node_job_needs_no_service_and_its_pods_first_event_writes_nothing() -> None:
    job = _job(numNodes=1)
    observed = Observed(pods=[], service=False, config=None, now=NOW, signing_key="k3y")
    actions = reconcile(job, observed, SETTINGS)
    kinds = [a.body["kind"] for a in actions if isinstance(a, CreateObject)]
    assert kinds == ["ConfigMap", "Secret", "NetworkPolicy", "Pod"]  # no Service
    pod = next(a.body for a in actions if isinstance(a, CreateObject) and a.body["kind"] == "Pod")
    assert "--master-addr=127.0.0.1" in pod["spec"]["containers"][0]["command"]
    status = _status(actions)
    assert status.workers.pending == 1  # the pod it creates, counted before it is seen
    # The pod's first event (it exists, Pending): the same status, so no patch at all.
    again = _run(_job(status=status.model_dump(mode="json"), numNodes=1), [_pod(0, "Pending")])
    assert not [a for a in again if isinstance(a, PatchStatus | CreateObject | EmitEvent)]
