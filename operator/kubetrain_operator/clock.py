"""status.progress and the clocks it drives: each reading of rank 0's /progress, the
goodput it credits, whether the gang hangs (no step progress for too long), and how
often a job's resync timer passes.

Cannot see progress is not no progress: while /progress cannot be read, the hang clock
stands still, and a new gang's clock starts afresh.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubetrain_core.api import Progress, TrainingJobStatus
from kubetrain_operator import goodput
from kubetrain_operator.actions import Observed
from kubetrain_operator.pod_facts import phase_of
from kubetrain_operator.status import get_condition, parse_time, timestamp
from kubetrain_operator.step import Step

Obj = dict[str, Any]


def read_progress(step: Step, observed: Observed) -> None:
    st, now = step.status, step.now
    if observed.progress_error is not None:
        # Cannot see progress is not no progress: the hang clock stands still meanwhile.
        if st.progress is not None and st.progress.unreadableSince is None:
            st.progress.unreadableSince = timestamp(now)
        step.condition(
            "ProgressReadable", False, "ProgressUnreadable",
            f"{observed.progress_error}; the hang clock is paused",
        )  # fmt: skip
        return
    progress = observed.progress
    if progress is None:
        return
    prev = st.progress
    if prev is not None and prev.step > 0 and progress.step == 0:
        return  # a new attempt serves /progress before it has resumed: keep the last known
    account_goodput(step, progress.step)
    new = progress.model_copy(deep=True)
    new.updateTime = timestamp(now)
    advanced = prev is None or new.step > prev.step
    new.lastStepTime = timestamp(now) if advanced else paused_clock(prev, now)
    if new.lastCheckpoint is None and prev is not None:
        new.lastCheckpoint = prev.lastCheckpoint
    st.progress = new
    if get_condition(st.conditions, "ProgressReadable") is not None:
        step.condition("ProgressReadable", True, "ProgressRead", "rank 0's /progress answers")


def paused_clock(prev: Progress | None, now: datetime) -> str | None:
    """The hang clock after an outage of /progress: moved on by the outage's length."""
    if prev is None:
        return None
    last, since = parse_time(prev.lastStepTime), parse_time(prev.unreadableSince)
    if last is None or since is None:
        return prev.lastStepTime
    return timestamp(last + (now - since))


def end_progress_baseline(st: TrainingJobStatus) -> None:
    if st.progress is not None:
        st.progress.updateTime = None
        st.progress.unreadableSince = None  # the next gang's clock starts afresh


def account_goodput(step: Step, reached: int) -> None:
    """Credit the time since the last reading to the steps beyond the highest ever
    reached, then refresh goodputPercent. Called before status.progress moves on."""
    st, rec = step.status, step.status.recovery
    prev = st.progress
    # No baseline from this attempt (first reading, or the gang was restarted since):
    # nothing is credited, or downtime would count as the new steps' time.
    since = parse_time(prev.updateTime if prev else None)
    elapsed = (step.now - since).total_seconds() if since else 0.0
    rec.productiveSeconds += goodput.productive_seconds(
        prev.step if prev else 0, reached, rec.highestStep, elapsed
    )
    rec.highestStep = max(rec.highestStep, reached)
    started = parse_time(st.startTime)
    if started:
        st.goodputPercent = goodput.percent(
            rec.productiveSeconds, (step.now - started).total_seconds()
        )


def hung(step: Step, live: dict[int, Obj]) -> bool:
    deadline = step.job.spec.faultTolerance.progressDeadlineSeconds
    progress = step.status.progress
    if not deadline or progress is None or len(live) < step.job.spec.numNodes:
        return False
    if not all(phase_of(p) == "Running" for p in live.values()):
        return False
    running = get_condition(step.status.conditions, "Running")
    if running is None or running.status != "True":
        return False  # this gang has only just started: its clock starts now
    if progress.unreadableSince is not None:
        return False  # progress cannot be seen: not evidence of a hang
    # The clock restarts with each gang: the step it resumed from is no progress yet.
    times = (parse_time(progress.lastStepTime), parse_time(running.lastTransitionTime))
    last = max((t for t in times if t is not None), default=None)
    return last is not None and (step.now - last).total_seconds() > deadline


# A job that is neither running nor restarting changes when one of its pods does (a pod
# event reconciles it then); its timer passes are a safety net and the clock of its
# deadlines (startup, active, TTL), this far apart at the least.
WAITING_RESYNC_SECONDS = 10.0
FINISHED_RESYNC_SECONDS = 60.0


def resync_spacing(spec: Obj, status: Obj, now: datetime, interval: float) -> float:
    """How long after a job's last pass its resync timer may pass again: `interval` while
    it runs or restarts (its progress is read, its backoff ends), WAITING_RESYNC_SECONDS
    while its pods wait to start, FINISHED_RESYNC_SECONDS once finished (interval when
    its TTL is due). At 200-1,000 jobs, timer passes of jobs that were not running were
    most of the operator's API requests."""
    state = status.get("state")
    if state in ("Running", "Restarting"):
        return interval
    if state not in ("Succeeded", "Failed"):
        return max(interval, WAITING_RESYNC_SECONDS)
    ttl = (spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished")
    done = parse_time(status.get("completionTime"))
    if ttl is not None and done is not None and (now - done).total_seconds() >= ttl:
        return interval
    return max(interval, FINISHED_RESYNC_SECONDS)
