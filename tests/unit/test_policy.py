"""The pure recovery policy shared by the operator and `kubetrain run`."""

from __future__ import annotations

from kubetrain_core.api import FaultToleranceSpec
from kubetrain_core.contract import ExitCode, TerminationMessage
from kubetrain_core.policy import (
    Cause,
    RecoveryState,
    Rollback,
    classify,
    decide,
    record,
)


def nan_message(restored: int | None = 20) -> TerminationMessage:
    return TerminationMessage(
        "NaNUnrecoverable", "nan", step=25, restored_step=restored, skip_batches="21-24"
    )


def test_classify_prefers_the_termination_reason() -> None:
    # torchrun reports a failed worker as exit 1; the message still tells the cause.
    assert classify(1, nan_message()) is Cause.NAN
    assert classify(ExitCode.CONFIG_INVALID, None) is Cause.CONFIG_INVALID
    assert classify(0, None) is Cause.SUCCEEDED
    assert classify(137, None) is Cause.ERROR


def test_config_invalid_fails_at_once_with_the_trainer_message() -> None:
    msg = TerminationMessage("ConfigInvalid", "data.path: file not found")
    d = decide(FaultToleranceSpec(), RecoveryState(), Cause.CONFIG_INVALID, msg)
    assert (d.action, d.reason, d.message) == ("fail", "ConfigInvalid", "data.path: file not found")


def test_errors_restart_until_the_budget_is_spent() -> None:
    policy = FaultToleranceSpec(maxRestarts=2)
    state = RecoveryState()
    for _ in range(2):
        d = decide(policy, state, Cause.ERROR, None)
        assert d.action == "restart" and d.rollback is None
        state = record(state, d)
    d = decide(policy, state, Cause.NODE_FAILURE, None)
    assert (d.action, d.reason) == ("fail", "RestartBudgetExhausted")
    assert state.restarts == {
        "total": 2,
        "nodeFailure": 0,
        "nan": 0,
        "error": 2,
        "hang": 0,
        "preempted": 0,
        "startupTimeout": 0,
    }


def test_nan_asks_for_a_good_checkpoint_older_than_the_one_that_failed() -> None:
    policy = FaultToleranceSpec.model_validate({"nan": {"skipBatches": 2, "lrScalePercent": 50}})
    d = decide(policy, RecoveryState(), Cause.NAN, nan_message(), "uid/4")
    assert d.action == "restart" and d.reason == "RollbackNaN"
    # The attempt last loaded step 20 and diverged again: older than that. The trainer,
    # which can read the store, picks the checkpoint.
    assert d.rollback == Rollback(before_step=20, id="uid/4")
    assert "before step 20" in d.message
    assert d.skip_batches == "21-26"  # the bad batches plus skipBatches extra
    assert d.lr_scale == 0.5


def test_nan_without_a_restored_checkpoint_rolls_back_before_the_bad_step() -> None:
    d = decide(FaultToleranceSpec(), RecoveryState(), Cause.NAN, nan_message(None), "r")
    assert d.rollback == Rollback(25, "r")


def test_a_rollback_request_is_carried_to_later_attempts() -> None:
    # The rollback attempt may crash before it resumes; the next one gets the same
    # request, and the trainer applies each id only once.
    state = record(
        RecoveryState(),
        decide(FaultToleranceSpec(), RecoveryState(), Cause.NAN, nan_message(), "r1"),
    )
    d = decide(FaultToleranceSpec(), state, Cause.NODE_FAILURE, None, "r2")
    assert d.action == "restart" and d.rollback == Rollback(20, "r1")
    assert record(state, d).rollback == Rollback(20, "r1")


def test_nan_rollbacks_do_not_use_the_infrastructure_budget() -> None:
    policy = FaultToleranceSpec.model_validate({"maxRestarts": 0, "nan": {"maxRollbacks": 1}})
    state = record(RecoveryState(), decide(policy, RecoveryState(), Cause.NAN, nan_message()))
    assert state.restarts["nan"] == 1
    d = decide(policy, state, Cause.NAN, nan_message())
    assert (d.action, d.reason) == ("fail", "NaNRollbackBudgetExhausted")


def test_skip_ranges_accumulate_across_rollbacks() -> None:
    policy = FaultToleranceSpec()
    state = RecoveryState(skip_batches="5-6")
    d = decide(policy, state, Cause.NAN, nan_message())
    assert d.skip_batches == "5-6,21-24"


def test_nan_action_fail() -> None:
    policy = FaultToleranceSpec.model_validate({"nan": {"action": "Fail"}})
    assert decide(policy, RecoveryState(), Cause.NAN, nan_message()).action == "fail"


def test_restart_causes_and_states_come_from_the_api_models() -> None:
    import typing

    from kubetrain_core.api import (
        JOB_STATES,
        RESTART_CAUSES,
        STATE_PRECEDENCE,
        ConditionType,
        RestartCounts,
    )
    from kubetrain_core.policy import RESTART_KEYS, RecoveryState

    assert set(RESTART_KEYS.values()) <= set(RESTART_CAUSES)
    assert set(RecoveryState().restarts) == set(RestartCounts.model_fields)
    assert {*STATE_PRECEDENCE, "Pending"} == set(JOB_STATES)
    assert set(STATE_PRECEDENCE) <= set(typing.get_args(ConditionType))


def test_preemptions_restart_without_spending_the_restart_budget() -> None:
    policy = FaultToleranceSpec(maxRestarts=1)
    state = RecoveryState()
    preempted = TerminationMessage("Preempted", "preempted at step 40", step=40)
    for _ in range(3):  # a job may be preempted any number of times
        d = decide(policy, state, Cause.PREEMPTED, preempted)
        assert (d.action, d.reason) == ("restart", "RestartPreempted")
        state = record(state, d)
    assert state.restarts["preempted"] == 3 and state.restarts["total"] == 3
    # The one crash the budget allows is still there, and then the budget is spent.
    state = record(state, decide(policy, state, Cause.ERROR, None))
    assert decide(policy, state, Cause.ERROR, None).reason == "RestartBudgetExhausted"
