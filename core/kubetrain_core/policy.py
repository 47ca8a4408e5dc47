"""Pure recovery policy: what to do after an attempt of the gang ended.

Shared by the operator and `kubetrain run`, so a job recovers the same way on a
cluster and on a laptop. No I/O here: callers pass what they observed. A NaN
rollback is a request ("the newest good checkpoint before step S"): the trainer,
which reads the checkpoint store with the job's own settings, chooses which one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from kubetrain_core.api import FaultToleranceSpec, RestartCounts
from kubetrain_core.contract import (
    ExitCode,
    TerminationMessage,
    format_step_ranges,
    merge_step_ranges,
    parse_step_ranges,
)


class Cause(StrEnum):
    SUCCEEDED = "Succeeded"
    CONFIG_INVALID = "ConfigInvalid"
    NAN = "NaN"
    ERROR = "Error"
    NODE_FAILURE = "NodeFailure"
    HANG = "Hang"
    PREEMPTED = "Preempted"
    STARTUP_TIMEOUT = "StartupTimeout"


# status.restarts keys, one budget per cause (design: "Budgets are per cause").
RESTART_KEYS = {
    Cause.NAN: "nan",
    Cause.ERROR: "error",
    Cause.NODE_FAILURE: "nodeFailure",
    Cause.HANG: "hang",
    Cause.PREEMPTED: "preempted",
    Cause.STARTUP_TIMEOUT: "startupTimeout",
}
# Restarts that are no failure of the job (Kubernetes Jobs' podFailurePolicy ignores
# DisruptionTarget pods the same way): they spend no part of maxRestarts.
# A gang released because it did not start in time waits for capacity, no failure either.
UNCOUNTED_KEYS = ("nan", "preempted", "startupTimeout")


def classify(exit_code: int, message: TerminationMessage | None) -> Cause:
    """The cause of an ended attempt, from the trainer's termination message or exit code.
    The message is the trainer's word, so it never turns a failed exit into a success."""
    reasons = {
        "Succeeded": Cause.SUCCEEDED,
        "ConfigInvalid": Cause.CONFIG_INVALID,
        "NaNUnrecoverable": Cause.NAN,
        "Preempted": Cause.PREEMPTED,
    }
    by_code: dict[int, Cause] = {
        ExitCode.SUCCEEDED: Cause.SUCCEEDED,
        ExitCode.CONFIG_INVALID: Cause.CONFIG_INVALID,
        ExitCode.NAN_UNRECOVERABLE: Cause.NAN,
        ExitCode.PREEMPTED: Cause.PREEMPTED,
    }
    claimed = reasons.get(message.reason) if message else None
    if claimed is Cause.SUCCEEDED and exit_code != ExitCode.SUCCEEDED:
        claimed = None
    return claimed or by_code.get(exit_code, Cause.ERROR)


@dataclass(frozen=True)
class Rollback:
    """Resume from the newest good checkpoint before `before_step`. Every later attempt
    is given the same request; the trainer applies the one with this `id` once."""

    before_step: int
    id: str


@dataclass
class RecoveryState:
    """What earlier attempts left behind; persisted in status (operator) or memory (run)."""

    restarts: dict[str, int] = field(default_factory=lambda: RestartCounts().model_dump())
    skip_batches: str = ""
    lr_scale: float = 1.0
    rollback: Rollback | None = None


@dataclass(frozen=True)
class Decision:
    action: str  # "succeed" | "fail" | "restart"
    reason: str
    message: str
    cause: Cause
    rollback: Rollback | None = None
    skip_batches: str = ""
    lr_scale: float = 1.0


def decide(
    policy: FaultToleranceSpec,
    state: RecoveryState,
    cause: Cause,
    message: TerminationMessage | None,
    rollback_id: str = "",
) -> Decision:
    """Succeed, fail with a reason, or restart the gang; a NaN restart asks for a rollback
    named `rollback_id` (unique per job and attempt)."""
    text = message.message if message else ""
    if cause is Cause.SUCCEEDED:
        return Decision("succeed", "Succeeded", "training finished", cause)
    if cause is Cause.CONFIG_INVALID:
        return Decision("fail", "ConfigInvalid", text or "the trainer rejected its config", cause)
    if cause is Cause.NAN:
        return _rollback(policy, state, message, rollback_id)
    key = RESTART_KEYS[cause]
    counted = state.restarts["total"] - sum(state.restarts.get(k, 0) for k in UNCOUNTED_KEYS)
    if key not in UNCOUNTED_KEYS and counted >= policy.maxRestarts:
        return Decision(
            "fail",
            "RestartBudgetExhausted",
            f"{cause.value}: {policy.maxRestarts} restarts used; last failure: {text or cause}",
            cause,
        )
    return Decision(
        "restart",
        f"Restart{cause.value}",
        f"restarting the gang after {cause.value} (restart {state.restarts[key] + 1})",
        cause,
        rollback=state.rollback,
        skip_batches=state.skip_batches,
        lr_scale=state.lr_scale,
    )


def _rollback(
    policy: FaultToleranceSpec,
    state: RecoveryState,
    message: TerminationMessage | None,
    rollback_id: str,
) -> Decision:
    nan = policy.nan
    if nan.action == "Fail":
        return Decision("fail", "NaN", "training diverged (NaN) and nan.action is Fail", Cause.NAN)
    if state.restarts["nan"] >= nan.maxRollbacks:
        return Decision(
            "fail",
            "NaNRollbackBudgetExhausted",
            f"loss stayed non-finite after {nan.maxRollbacks} rollbacks",
            Cause.NAN,
        )
    # Older than what the failing attempt last loaded: that checkpoint led to NaN again.
    before = 0
    if message is not None:
        before = message.restored_step if message.restored_step is not None else message.step or 0
    ranges = parse_step_ranges(state.skip_batches)
    for lo, hi in parse_step_ranges(message.skip_batches or "") if message else []:
        ranges.append((lo, hi + nan.skipBatches))
    skip = format_step_ranges(merge_step_ranges(ranges))
    return Decision(
        "restart",
        "RollbackNaN",
        f"non-finite loss: rolling back to the newest good checkpoint before step {before} "
        f"(step 0 if there is none), skipping batches {skip or 'none'}",
        Cause.NAN,
        rollback=Rollback(before, rollback_id),
        skip_batches=skip,
        lr_scale=state.lr_scale * nan.lrScalePercent / 100,
    )


def record(state: RecoveryState, decision: Decision) -> RecoveryState:
    """The state after carrying out a restart decision."""
    if decision.action != "restart":
        return state
    restarts = dict(state.restarts)
    restarts["total"] += 1
    restarts[RESTART_KEYS[decision.cause]] += 1
    return RecoveryState(restarts, decision.skip_batches, decision.lr_scale, decision.rollback)
