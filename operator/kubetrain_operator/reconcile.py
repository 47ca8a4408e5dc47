"""The pure reconcile step: desired (the job) vs observed (its pods) -> actions.

No I/O: the handlers observe, call `reconcile`, and carry out the actions in
order. Level-based and idempotent: the status patch that starts a new gang
attempt comes before the deletes and creates it implies, pods have fixed
names, and pods of other attempts are deleted before any new pod is created,
so an operator restarted at any moment converges without duplicates.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from kubetrain_core.api import (
    ConditionType,
    Progress,
    RecoveryStatus,
    RestartCounts,
    TrainingJob,
    TrainingJobStatus,
)
from kubetrain_core.contract import TerminationMessage
from kubetrain_core.policy import Cause, RecoveryState, Rollback, decide, record
from kubetrain_operator import builders, clock, elastic, notifications
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
from kubetrain_operator.pod_facts import (
    attempt_of,
    counts,
    failure_of,
    finished_at,
    index_of,
    is_deleting,
    name_of,
    node_of,
    overdue,
    pending_reason,
    phase_of,
    pick_failure,
    terminated,
)
from kubetrain_operator.settings import Settings
from kubetrain_operator.status import (
    get_condition,
    parse_time,
    set_condition,
    state_of,
    timestamp,
)
from kubetrain_operator.step import Step

Obj = dict[str, Any]


def reconcile(job: TrainingJob, observed: Observed, settings: Settings) -> list[Action]:
    """Actions that move the cluster toward the job's spec, in the order to carry them out."""
    meta = job.metadata.model_extra or {}
    before = job.status or TrainingJobStatus()
    step = Step(job, meta.get("generation"), observed.now, before.model_copy(deep=True))
    step.status.observedGeneration = step.generation
    _run(step, observed, settings)
    step.status.state = state_of(step.status.conditions)
    namespace = job.metadata.namespace or "default"
    step.status.notifications, notes = notifications.owed(
        job.spec.notifications, before, step.status, namespace, job.metadata.name
    )
    actions: list[Action] = list(step.actions)
    if step.status.model_dump() != before.model_dump() or job.status is None:
        actions.append(PatchStatus(step.status.model_dump(mode="json")))
    # Notifications right after the patch that records them (only if it went through),
    # before any action that could fail and leave them recorded but unsent.
    return actions + notes + step.deletes + step.creates + step.events


def fail_stored(
    body: Obj, pods: list[Obj], reason: str, message: str, now: datetime
) -> list[Action]:
    """Fail a stored job that can never run as specified (a spec the models reject, an
    object the API server refuses): Failed naming the problem, its pods deleted, never
    retried. Works on the raw body: the job may not even parse."""
    try:
        status = TrainingJobStatus.model_validate(body.get("status") or {})
    except ValueError:
        status = TrainingJobStatus()
    before = status.model_copy(deep=True)
    live = [p for p in pods if not is_deleting(p)]
    cleanup: list[Action] = [DeletePods(tuple(name_of(p) for p in live), reason)] if live else []
    if status.state == "Failed":
        return cleanup
    generation = body.get("metadata", {}).get("generation")
    changes: list[tuple[ConditionType, bool]] = [("Failed", True), ("Running", False)]
    for kind, value in changes:
        status.conditions, _ = set_condition(
            status.conditions,
            kind,
            value,
            reason=reason,
            message=message,
            now=now,
            generation=generation,
        )
    status.state = "Failed"
    status.completionTime = timestamp(now)
    status.observedGeneration = generation
    meta = body.get("metadata", {})
    where = (str(meta.get("namespace", "")), str(meta.get("name", "")))
    status.notifications, notes = notifications.owed(
        notifications.from_body(body), before, status, *where
    )
    return [
        PatchStatus(status.model_dump(mode="json")),
        *notes,
        *cleanup,
        EmitEvent("Warning", reason, message),
    ]


def _run(step: Step, observed: Observed, settings: Settings) -> None:
    job, st, now = step.job, step.status, observed.now
    spec = job.spec
    pods = observed.pods
    if st.state in ("Succeeded", "Failed"):
        _finished(step, pods)
        return
    if spec.numNodes > 1 and not observed.service:  # one node rendezvous on 127.0.0.1
        step.actions.append(CreateObject(builders.build_service(job)))
    configmap = builders.build_configmap(job, settings)
    if observed.config is None:
        step.actions.append(CreateObject(configmap))
    elif observed.config != configmap["data"]:
        # A changed spec: the running gang keeps the config it started with, the next
        # attempt (a restart, a resume after suspend) reads the new one.
        name = configmap["metadata"]["name"]
        step.actions.append(UpdateConfig(name, configmap["data"]))
        text = "the trainer config changed; the gang's next attempt reads it"
        step.events.append(EmitEvent("Normal", "ConfigUpdated", text))
    if spec.numNodes > 1 and builders.checkpoint_uri(job, settings) is None:
        text = "spec.checkpoint.uri is required with numNodes > 1 (the operator has no default)"
        _fail(step, pods, "CheckpointURIRequired", text)
        return

    # Stuck in Terminating past the grace period, or on a node that stopped answering
    # (its kubelet can never confirm the deletion): force-delete.
    lost = observed.lost_nodes
    stuck = [p for p in pods if is_deleting(p) and (overdue(p, now) or node_of(p) in lost)]
    step.delete(stuck, "StuckTerminating", grace_seconds=0)

    if spec.runPolicy.suspend:
        step.delete([p for p in pods if not is_deleting(p)], "Suspended")
        if any(attempt_of(p) == st.recovery.attempt for p in pods):
            st.recovery.attempt += 1  # the next gang is a new attempt (not a restart)
        step.condition("Suspended", True, "Suspended", "pods deleted; checkpoints kept")
        clock.end_progress_baseline(st)
        step.condition("Running", False, "Suspended", "job suspended")
        st.workers = counts([])
        return
    if st.conditions and any(c.type == "Suspended" and c.status == "True" for c in st.conditions):
        step.condition("Suspended", False, "Resumed", "resuming from the latest checkpoint")
        step.events.append(EmitEvent("Normal", "Resumed", "resuming from the latest checkpoint"))

    started = parse_time(st.startTime)
    deadline = spec.runPolicy.activeDeadlineSeconds
    if deadline and started and (now - started).total_seconds() > deadline:
        _fail(step, pods, "DeadlineExceeded", f"job was active longer than {deadline} s")
        return

    attempt = st.recovery.attempt
    current = {index_of(p): p for p in pods if attempt_of(p) == attempt}
    stale = [p for p in pods if attempt_of(p) != attempt]
    step.delete([p for p in stale if not is_deleting(p)], "StaleAttempt")
    st.workers = counts(list(current.values()))
    clock.read_progress(step, observed)

    # Decide on the current gang: finished, failed, hung, or running.
    live = {i: p for i, p in current.items() if i < spec.numNodes}
    zero = live.get(0)
    if zero is not None and phase_of(zero) == "Succeeded":
        # An elastic gang's member still waiting to be placed never joined: not waited for.
        ended = ("Succeeded", "Failed", *(("Pending",) if spec.elastic else ()))
        if all(phase_of(p) in ended for p in live.values()):
            _succeed(step, pods, zero)
        return
    failed = [p for p in live.values() if phase_of(p) == "Failed" or is_deleting(p)]
    gone = elastic.lost_members(job, live, failed, lost)
    if gone:  # an elastic gang trains on without them; their pods are made anew
        _members_lost(step, gone, lost)
        live = {i: p for i, p in live.items() if p not in gone}
        failed = [p for p in failed if p not in gone]
    if failed:
        _, cause, message = pick_failure(failed)
        on_lost = [p for p in live.values() if node_of(p) in lost]
        if on_lost and cause in (Cause.ERROR, Cause.NODE_FAILURE):
            # The peers' errors are symptoms: a worker's node stopped answering.
            pod = on_lost[0]
            text = f"node {node_of(pod)} of worker {name_of(pod)} is not ready"
            cause, message = Cause.NODE_FAILURE, TerminationMessage("NodeFailure", text)
        elif cause is Cause.ERROR and _settling(live, failed, now, settings):
            return  # a peer that still looks alive may sit on a node that just died
        _gang_failed(step, pods, list(live.values()), cause, message, settings)
        return
    if clock.hung(step, live):
        secs = spec.faultTolerance.progressDeadlineSeconds
        message = TerminationMessage("Hang", f"no step progress for {secs} s")
        _gang_failed(step, pods, list(live.values()), Cause.HANG, message, settings)
        return
    _queued(step, observed.queued)
    if observed.queued is None and _not_starting(step, live, pods, settings):
        return

    # Create what is missing, once every pod of older attempts is gone (same names).
    restart_after = parse_time(st.recovery.restartAfter)
    if stale or (restart_after and restart_after > now):
        return
    names = {name_of(p) for p in pods}
    for index in range(spec.numNodes):
        body = builders.build_pod(job, index, st.recovery, settings)
        if index not in current and body["metadata"]["name"] not in names:
            step.creates.append(CreateObject(body))
    if step.creates:  # before the pods that need them; 409 when they exist already
        extras = [
            builders.build_signing_secret(job, observed.signing_key),
            builders.build_network_policy(job, settings),
            builders.build_pod_group(job),
        ]
        step.creates[:0] = [CreateObject(body) for body in extras if body is not None]
    if step.creates and not st.startTime:
        st.startTime = timestamp(now)
    if step.creates:
        step.condition("Created", True, "PodsCreated", f"attempt {attempt}: creating the gang")
        # Counted Pending now: the pods' first events then change nothing worth a write.
        made = [a.body for a in step.creates if isinstance(a, CreateObject)]
        st.workers = counts([*current.values(), *(b for b in made if b["kind"] == "Pod")])
    running = sum(phase_of(p) == "Running" for p in live.values())
    short = elastic.running_message(job, running)
    if running == spec.numNodes or short:
        _running(step, short or f"{spec.numNodes} workers running", short is not None)


def _members_lost(step: Step, gone: list[Obj], lost: frozenset[str]) -> None:
    """Delete an elastic gang's lost members (at once when their node stopped answering:
    no kubelet will confirm it); the next passes create them anew."""
    fresh = [p for p in gone if not is_deleting(p)]
    for pod in fresh:
        _, _, message = failure_of(pod)
        why = f"node {node_of(pod)} is not ready" if node_of(pod) in lost else message
        text = f"{name_of(pod)}: {why}; the gang trains on and grows back when it runs again"
        step.events.append(EmitEvent("Warning", "WorkerLost", text))
    step.delete([p for p in fresh if node_of(p) in lost], "WorkerLost", grace_seconds=0)
    step.delete([p for p in fresh if node_of(p) not in lost], "WorkerLost")


def _queued(step: Step, reason: str | None) -> None:
    """Kueue holds the gang back (`reason`, its words) or has let it go: the Queued
    condition. A queued gang is waiting its turn, not failing to start."""
    if reason is not None:
        step.condition("Queued", True, "WaitingForAdmission", f"Kueue: {reason}")
    elif any(c.type == "Queued" and c.status == "True" for c in step.status.conditions):
        step.condition("Queued", False, "Admitted", "Kueue admitted the gang")


def _not_starting(step: Step, live: dict[int, Obj], pods: list[Obj], settings: Settings) -> bool:
    """A worker still Pending past the startup deadline: say why (the pod's own reason)
    in the Running condition, and release the gang or fail the job if the policy says
    so. True if it did."""
    policy = step.job.spec.faultTolerance
    running = sum(phase_of(p) == "Running" for p in live.values())
    if elastic.running_message(step.job, running):
        return False  # the gang trains; the rest join whenever they can
    for pod in sorted(live.values(), key=index_of):
        created = parse_time(pod.get("metadata", {}).get("creationTimestamp"))
        if phase_of(pod) != "Pending" or is_deleting(pod) or created is None:
            continue
        if (step.now - created).total_seconds() <= policy.startupDeadlineSeconds:
            continue
        text = (
            f"pod {name_of(pod)} is not running {policy.startupDeadlineSeconds} s after it was "
            f"created: {pending_reason(pod)}"
        )
        if policy.onStartupTimeout == "Fail":
            _fail(step, pods, "StartupDeadlineExceeded", text)
            return True
        if policy.onStartupTimeout == "Restart":  # what its running members hold, freed
            message = TerminationMessage("StartupTimeout", text)
            _gang_failed(step, pods, list(live.values()), Cause.STARTUP_TIMEOUT, message, settings)
            return True
        before = get_condition(step.status.conditions, "Running")
        step.condition("Running", False, "PodsNotStarting", text)
        if before is None or before.reason != "PodsNotStarting":
            step.events.append(EmitEvent("Warning", "PodsNotStarting", text))
        return False
    return False


def _running(step: Step, message: str, short: bool) -> None:
    """The gang trains: all its workers run, or (`short`) enough of an elastic gang's."""
    st, now, job = step.status, step.now, step.job
    reason = "ElasticGangShort" if short else "AllWorkersRunning"
    new_run = step.condition("Running", True, reason, message)
    step.condition("Restarting", False, reason, "the gang is running")
    if not st.allRunningTime:
        st.allRunningTime = timestamp(now)
        created = parse_time((job.metadata.model_extra or {}).get("creationTimestamp"))
        if created:
            step.events.append(Observe("time_to_running", (now - created).total_seconds()))
    restarted = parse_time(st.recovery.restartTime)
    if restarted:
        step.events.append(Observe("recovery", (now - restarted).total_seconds()))
        st.recovery.restartTime = None
    if st.progress is not None and new_run:  # the hang clock restarts with each gang
        st.progress.lastStepTime = timestamp(now)


HUNG_GRACE_SECONDS = 5


def _hung_grace(gang: list[Obj]) -> int:
    """HUNG_GRACE_SECONDS, or the pods' own grace period when that is shorter."""
    own = [(p.get("spec") or {}).get("terminationGracePeriodSeconds") for p in gang]
    return min([HUNG_GRACE_SECONDS, *(int(g) for g in own if g is not None)])


def _settling(live: dict[int, Obj], failed: list[Obj], now: datetime, settings: Settings) -> bool:
    """Whether to wait before blaming a plain error: some peer is neither finished nor
    deleted yet, and the first failure is younger than the settle time."""
    alive = [
        p for p in live.values() if phase_of(p) in ("Pending", "Running") and not is_deleting(p)
    ]
    first = min((t for t in map(finished_at, failed) if t is not None), default=None)
    window = timedelta(seconds=settings.failure_settle_seconds)
    return bool(alive) and first is not None and now - first < window


def _gang_failed(  # noqa: PLR0917 (one call site per cause)
    step: Step,
    pods: list[Obj],
    gang: list[Obj],
    cause: Cause,
    message: TerminationMessage | None,
    settings: Settings,
) -> None:
    """Any failed worker fails the whole gang (torchrun's world is static): restart it
    from the latest committed checkpoint, roll back, or fail, by policy."""
    st, spec = step.status, step.job.spec
    rec = st.recovery
    earlier = (
        Rollback(rec.rollbackBeforeStep, rec.rollbackId or "")
        if rec.rollbackBeforeStep is not None
        else None
    )
    state = RecoveryState(dict(st.restarts.model_dump()), rec.skipBatches, rec.lrScale, earlier)
    request_id = f"{builders.job_uid(step.job)}/{rec.attempt + 1}"  # unique per job and attempt
    decision = decide(spec.faultTolerance, state, cause, message, request_id)
    if decision.action == "succeed":
        _succeed(step, pods, gang[0])
        return
    if decision.action == "fail":
        _fail(step, pods, decision.reason, decision.message)
        return
    new = record(state, decision)
    st.restarts = RestartCounts(**new.restarts)
    total = new.restarts["total"]
    backoff = min(
        settings.restart_backoff_seconds * 2 ** max(total - 1, 0),
        settings.restart_backoff_max_seconds,
    )
    detail = f"{decision.message}; last failure: {message.message if message else cause}"
    st.recovery = RecoveryStatus(
        attempt=st.recovery.attempt + 1,
        highestStep=st.recovery.highestStep,
        productiveSeconds=st.recovery.productiveSeconds,
        rollbackBeforeStep=decision.rollback.before_step if decision.rollback else None,
        rollbackId=decision.rollback.id if decision.rollback else None,
        skipBatches=new.skip_batches,
        lrScale=new.lr_scale,
        restartAfter=timestamp(step.now + timedelta(seconds=backoff)),
        restartTime=timestamp(step.now),
        lastFailure=f"{decision.reason}: {detail}"[:4096],
    )
    step.condition("Restarting", True, decision.reason, detail)
    step.condition("Running", False, decision.reason, "restarting the gang")
    clock.end_progress_baseline(st)
    # A hung trainer never reaches the step where it would save on SIGTERM: the pod's
    # whole grace period (30 s by default) would only delay the restart.
    grace = _hung_grace(gang) if cause is Cause.HANG else None
    step.delete([p for p in gang if not is_deleting(p)], decision.reason, grace)
    step.events.append(Observe("restart", 1, decision.cause.value))


def _succeed(step: Step, pods: list[Obj], zero: Obj) -> None:
    st = step.status
    message = TerminationMessage.from_json(terminated(zero).get("message") or "")
    if message and message.step is not None:
        clock.account_goodput(step, message.step)
        st.progress = st.progress or Progress()
        st.progress.step = max(st.progress.step, message.step)
        st.progress.updateTime = timestamp(step.now)
    st.completionTime = timestamp(step.now)
    step.condition("Succeeded", True, "Succeeded", "training finished")
    step.condition("Running", False, "Succeeded", "training finished")
    step.condition("Restarting", False, "Succeeded", "training finished")
    _cleanup(step, pods)


def _fail(step: Step, pods: list[Obj], reason: str, message: str) -> None:
    step.status.completionTime = timestamp(step.now)
    step.condition("Failed", True, reason, message)
    step.condition("Running", False, reason, "job failed")
    step.condition("Restarting", False, reason, "job failed")
    _cleanup(step, pods)


def _finished(step: Step, pods: list[Obj]) -> None:
    _cleanup(step, pods)
    ttl = step.job.spec.runPolicy.ttlSecondsAfterFinished
    done = parse_time(step.status.completionTime)
    if ttl is not None and done and (step.now - done).total_seconds() >= ttl:
        step.actions.append(DeleteJob(f"ttlSecondsAfterFinished ({ttl} s) passed"))


def _cleanup(step: Step, pods: list[Obj]) -> None:
    policy = step.job.spec.runPolicy.cleanPodPolicy
    live = [p for p in pods if not is_deleting(p)]
    if policy == "Running":
        live = [p for p in live if phase_of(p) in ("Pending", "Running")]
    if policy != "None":
        step.delete(live, f"CleanPodPolicy{policy}")
