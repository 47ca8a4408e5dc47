"""Recovery per failure class on the local cluster: one short job per run, one fault
of a class injected mid-training, and what the fault cost (benchmarks/recovery.py,
tests/e2e/test_recovery_benchmark.py).

A `Sampler` thread reads the job's status and rank 0's /progress every TICK seconds
on this machine's monotonic clock; the rank-0 trainer logs (one line per step, every
attempt's log kept by the kubelets) give the exact steps. Figures of one run:

* detection_s: the fault -> the operator's restart decision (status.restarts.total
  first seen at 1), or for NaN handled in process, the fault -> rank 0 reporting the
  step it restored (its /progress going back), or for a restart in place, the fault ->
  the restarted rank 0 first answering (its /progress workerRestarts at 1);
* training_again_s: the fault -> rank 0 (of the new attempt) first reporting a step
  beyond the checkpoint it resumed or restored from;
* steps_lost: steps trained again: the highest step rank 0 finished before the
  resume/restore minus the step it resumed/restored from (summed over resumes);
* goodput_percent: the job's status.goodputPercent once Succeeded.

The fault's time: the injection call for pod kill, node stop and preemption; the
first sample of rank 0 at FAULT_STEP (the step the trainer's fault fires at, to
within TICK) for NaN and hang, at the step before it for a crash.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubetrain_devcluster.jobs import (
    ATTEMPT_LABEL,
    apply_job,
    evict_pod,
    example_job,
    job_pods,
    job_status,
    merge,
    rank0_logs,
    wait_state,
)
from localkube.api import ApiError
from localkube.kubelet import NodeSpec
from localkube.services import wait_until

if TYPE_CHECKING:
    from kubetrain_devcluster.operator import OperatorProcess
    from localkube.cluster import Cluster

STEPS = 60
INTERVAL = 10  # checkpoint.intervalSteps
TRIGGER_STEP = 25  # pod kill, node stop, preemption: once rank 0 reports this step
FAULT_STEP = 36  # NaN and hang: the trainer's injected fault fires at this step
HANG_DEADLINE = 30  # faultTolerance.progressDeadlineSeconds of the hang class
TICK = 0.2
RUN_TIMEOUT = 600.0
FIGURES = ("detection_s", "training_again_s", "steps_lost", "goodput_percent")

_STEP_LINE = re.compile(r"^step (\d+)/\d+ \| loss", re.MULTILINE)
_RESUMED = re.compile(r"resumed from \S+ at step (\d+)")

Inject = Callable[["Cluster", str, str], None]


def _kill(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.kill_pod(namespace, f"{name}-1", signal.SIGKILL)


def _stop_node(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.stop_node(cluster.pod_node(namespace, f"{name}-1"))


def _evict(cluster: Cluster, namespace: str, name: str) -> None:
    evict_pod(cluster, namespace, f"{name}-1")


@dataclass(frozen=True)
class FailureClass:
    name: str
    model: str  # how the class is played, in words
    inject: Inject | None = None  # a fault from outside, once rank 0 reports TRIGGER_STEP
    fault: str | None = None  # else KUBETRAIN_FAULT_INJECT
    spec: dict[str, Any] = field(default_factory=dict)  # merged into the job's spec
    restarts: bool = True  # whether the operator restarts the gang
    # The last step rank 0 reports before a KUBETRAIN_FAULT_INJECT fault strikes: a NaN
    # or hang at FAULT_STEP lets that step finish, a crash does not.
    seen_at: int = FAULT_STEP


_NAN_BUDGET = {"max_consecutive_skips": 1, "good_after_steps": 5}
CLASSES = {
    c.name: c
    for c in (
        FailureClass(
            "pod-kill",
            "SIGKILL of worker 1's container process (torchrun) at step 25",
            inject=_kill,
        ),
        FailureClass(
            "node-stop",
            "worker 1's node stopped at step 25 (kubelet and its pods killed, no heartbeats)",
            inject=_stop_node,
        ),
        FailureClass(
            "nan-in-process",
            f"NaN loss at steps {FAULT_STEP}-{FAULT_STEP + 1}: one skipped, then the "
            "trainer restores its newest good checkpoint in process (max_restores 2)",
            fault=f"nan@step={FAULT_STEP},times=2",
            spec={"trainer": {"recovery": {**_NAN_BUDGET, "max_restores": 2}}},
            restarts=False,
        ),
        FailureClass(
            "nan-rollback",
            f"NaN loss at steps {FAULT_STEP}-{FAULT_STEP + 3} on every attempt: in-process "
            "budget 0 restores, the trainer exits 65, the operator rolls back",
            fault=f"nan@step={FAULT_STEP},times=4",
            spec={"trainer": {"recovery": {**_NAN_BUDGET, "max_restores": 0}}},
        ),
        FailureClass(
            "hang",
            f"every rank stops at step {FAULT_STEP} (first attempt), progressDeadlineSeconds "
            f"{HANG_DEADLINE}",
            fault=f"hang@step={FAULT_STEP},times=1",
            spec={"faultTolerance": {"progressDeadlineSeconds": HANG_DEADLINE}},
        ),
        FailureClass(
            "preemption",
            "worker 1 evicted through the Eviction API at step 25 (graceful: SIGTERM, 30 s grace)",
            inject=_evict,
        ),
        FailureClass(
            "crash-recreate",
            f"worker 1's trainer process exits at step {FAULT_STEP} (first start only); "
            "inPlaceRestarts 0: the operator recreates the gang's pods",
            fault=f"crash@step={FAULT_STEP},times=1,rank=1",
            seen_at=FAULT_STEP - 1,
        ),
        FailureClass(
            "crash-in-place",
            "the same crash; inPlaceRestarts 1: torchrun restarts the workers in the running pods",
            fault=f"crash@step={FAULT_STEP},times=1,rank=1",
            spec={"faultTolerance": {"inPlaceRestarts": 1}},
            restarts=False,
            seen_at=FAULT_STEP - 1,
        ),
        FailureClass("none", "no fault (the baseline for goodput)", restarts=False),
    )
}


POOL_LABEL = "kubetrain.io/bench-pool"  # jobs run side by side: a node stop hits one job only


def job_body(name: str, cls: FailureClass, pool: str | None = None) -> dict[str, Any]:
    body = example_job(name, max_steps=STEPS, eval_steps=STEPS, eval_batches=2)
    body["spec"]["checkpoint"]["intervalSteps"] = INTERVAL
    body["spec"]["trainer"]["metrics"]["log_steps"] = 1  # every step in rank 0's log
    body["spec"]["trainer"]["recovery"]["good_after_steps"] = 5
    if cls.fault:
        body["spec"]["env"] = [{"name": "KUBETRAIN_FAULT_INJECT", "value": cls.fault}]
    merge(body["spec"], cls.spec)
    if pool:
        body["spec"]["template"] = {"spec": {"nodeSelector": {POOL_LABEL: pool}}}
    return body


@dataclass
class Sample:
    t: float
    attempt: int
    restarts: int
    step: int | None
    worker_restarts: int = 0  # rank 0's in-place restarts (its /progress)


class Sampler(threading.Thread):
    """Samples (time, attempt, restarts.total, rank 0's step) until stopped."""

    def __init__(self, cluster: Cluster, namespace: str, name: str) -> None:
        super().__init__(daemon=True, name=f"sampler-{name}")
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.samples: list[Sample] = []
        self._halt = threading.Event()
        self._rank0: tuple[int, str] | None = None  # (attempt, pod IP)

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            # A tick lost to a busy API server: the next one comes.
            with contextlib.suppress(ApiError, OSError, KeyError, ValueError):
                self._sample(started)
            self._halt.wait(max(0.0, TICK - (time.monotonic() - started)))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def _sample(self, now: float) -> None:
        status = job_status(self.cluster, self.namespace, self.name)
        attempt = int((status.get("recovery") or {}).get("attempt", 0))
        restarts = int((status.get("restarts") or {}).get("total", 0))
        if self._rank0 is None or self._rank0[0] != attempt:
            self._rank0 = None
            for pod in job_pods(self.cluster, self.namespace, self.name):
                meta = pod["metadata"]
                ip = (pod.get("status") or {}).get("podIP")
                if meta["name"].endswith("-0") and meta["labels"].get(ATTEMPT_LABEL) == str(
                    attempt
                ):
                    self._rank0 = (attempt, ip) if ip else None
        step, in_place = None, 0
        if self._rank0 is not None:
            try:
                url = f"http://{self._rank0[1]}:9090/progress"
                with urllib.request.urlopen(url, timeout=1) as resp:
                    progress = json.loads(resp.read())
                step, in_place = int(progress["step"]), int(progress.get("workerRestarts") or 0)
            except (OSError, ValueError, KeyError):
                step = None
        self.samples.append(Sample(now, attempt, restarts, step, in_place))

    def first(self, test: Callable[[Sample], bool], after: float = 0.0) -> Sample | None:
        return next((s for s in list(self.samples) if s.t >= after and test(s)), None)


def steps_of(log: str) -> list[int]:
    return [int(s) for s in _STEP_LINE.findall(log)]


def restarted_losses(logs: list[str]) -> tuple[int | None, int]:
    """(the step the first later attempt resumed from, steps trained again over all
    resumes) from the rank-0 logs of a job whose gang was restarted."""
    first: int | None = None
    lost = 0
    for before, after in itertools.pairwise(logs):
        resumed = _RESUMED.search(after)
        start = int(resumed.group(1)) if resumed else 0
        first = start if first is None else first
        lost += max(0, max(steps_of(before), default=0) - start)
    return first, lost


def restored_in_process(log: str) -> tuple[int, int] | None:
    """(the step restored to, the highest step finished before) of the first in-process
    restore in one rank-0 log: where its step lines go back."""
    steps = steps_of(log)
    for prev, cur in itertools.pairwise(steps):
        if cur <= prev:
            return cur - 1, prev
    return None


def _started(sampler: Sampler, step: int, timeout: float) -> float:
    def first_start_at(s: Sample) -> bool:  # of the first attempt, not restarted in place
        return s.attempt == 0 and s.worker_restarts == 0 and (s.step or 0) >= step

    wait_until(
        lambda: sampler.first(first_start_at) is not None,
        timeout=timeout,
        what=f"{sampler.name}: rank 0 at step {step}",
        interval=0.05,
    )
    found = sampler.first(first_start_at)
    assert found is not None
    return found.t


def run_once(  # noqa: PLR0917
    cluster: Cluster,
    op: OperatorProcess,
    namespace: str,
    cls: FailureClass,
    name: str,
    pool: str | None = None,
) -> dict[str, Any]:
    """One job of `cls` from apply to Succeeded, on the nodes labelled `pool` if given;
    its figures (see the module doc). A stopped node is replaced (in the same pool)."""
    apply_job(cluster, namespace, job_body(name, cls, pool))
    applied = time.monotonic()
    sampler = Sampler(cluster, namespace, name)
    sampler.start()
    victim = None
    try:
        if cls.inject is not None:
            _started(sampler, TRIGGER_STEP, RUN_TIMEOUT)
            victim = cluster.pod_node(namespace, f"{name}-1")
            fault = time.monotonic()
            cls.inject(cluster, namespace, name)
        elif cls.fault is not None:
            fault = _started(sampler, cls.seen_at, RUN_TIMEOUT)
        else:
            fault = applied
        status = wait_state(cluster, op, namespace, name, state="Succeeded", timeout=RUN_TIMEOUT)
        finished = time.monotonic()
    finally:
        sampler.stop()
        if cls.inject is _stop_node and victim is not None:
            labels = {POOL_LABEL: pool} if pool else {}
            cluster.add_node(NodeSpec(f"spare-{int(time.time() * 1000) % 10**8}", labels=labels))
    logs = rank0_logs(cluster, namespace, name)
    figures: dict[str, Any] = {
        "job": name,
        "state": status.get("state"),
        "restarts": status.get("restarts"),
        "cause": (status.get("recovery") or {}).get("lastFailure", "").split(":")[0] or None,
        "goodput_percent": status.get("goodputPercent"),
        "job_seconds": round(finished - applied, 1),
        "sigterm_save": any("SIGTERM at step" in log for log in logs),
    }
    if cls.restarts:
        decided = sampler.first(lambda s: s.restarts >= 1)
        resumed, lost = restarted_losses(logs)
        if decided is None or resumed is None:
            raise RuntimeError(f"{name}: no restart seen ({status.get('restarts')})")
        again = sampler.first(lambda s: s.attempt >= 1 and (s.step or 0) > resumed)
        figures |= {"detection_s": decided.t - fault, "resumed_step": resumed, "steps_lost": lost}
        figures["training_again_s"] = again.t - fault if again else None
    elif cls.fault is not None:
        restored = restored_in_process(logs[-1]) if logs else None
        if restored is None:
            raise RuntimeError(f"{name}: rank 0 did not restore in process")
        back, highest = restored
        seen: list[int] = []

        def went_back(s: Sample) -> bool:
            if s.step is not None and seen and s.step < max(seen):
                return True
            seen.extend([s.step] if s.step is not None else [])
            return False

        # Restarted in place, the new rank 0 may be past its old step by its first answer.
        detected = sampler.first(lambda s: s.worker_restarts >= 1, after=fault)
        detected = detected or sampler.first(went_back, after=fault)
        again = None
        if detected is not None:
            again = sampler.first(lambda s: (s.step or 0) > back, after=detected.t)
        figures |= {"resumed_step": back, "steps_lost": highest - back}
        figures["detection_s"] = detected.t - fault if detected else None
        figures["training_again_s"] = again.t - fault if again else None
    for key in ("detection_s", "training_again_s"):
        if isinstance(figures.get(key), float):
            figures[key] = round(figures[key], 2)
    # No finalizer: the job is gone at once, so read nothing of it after this.
    cluster.kubectl("-n", namespace, "delete", "tj", name, "--wait=false")
    return figures


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q) - 1]


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """p50 and p95 of each figure over the runs that have it."""
    out: dict[str, dict[str, float | None]] = {"p50": {}, "p95": {}}
    for key in FIGURES:
        values = [float(r[key]) for r in runs if r.get(key) is not None]
        for q in (50, 95):
            out[f"p{q}"][key] = round(percentile(values, q), 2) if values else None
    return out
