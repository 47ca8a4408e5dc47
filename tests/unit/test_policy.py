"""The pure recovery policy shared by the operator and `kubetrain run`."""

from __future__ import annotations

from kubetrain_operator.api import FaultToleranceSpec
from kubetrain_operator.policy import (
    Cause,
    Checkpoint,
    RecoveryState,
    classify,
    decide,
    record,
)
from kubetrain_trainer.contract import RESUME_FROM_SCRATCH, ExitCode, TerminationMessage

CKPTS = [
    Checkpoint(10, "file:///c/step-00000010", good=True),
    Checkpoint(20, "file:///c/step-00000020", good=True),
    Checkpoint(30, "file:///c/step-00000030", good=False),
]


def nan_message(failed: str = "file:///c/step-00000020") -> TerminationMessage:
    return TerminationMessage(
        "NaNUnrecoverable", "nan", step=25, failed_checkpoint=failed, skip_batches="21-24"
    )


def test_classify_prefers_the_termination_reason() -> None:
    # torchrun reports a failed worker as exit 1; the message still tells the cause.
    assert classify(1, nan_message()) is Cause.NAN
    assert classify(ExitCode.CONFIG_INVALID, None) is Cause.CONFIG_INVALID
    assert classify(0, None) is Cause.SUCCEEDED
    assert classify(137, None) is Cause.ERROR


def test_config_invalid_fails_at_once_with_the_trainer_message() -> None:
    msg = TerminationMessage("ConfigInvalid", "data.path: file not found")
    d = decide(FaultToleranceSpec(), RecoveryState(), Cause.CONFIG_INVALID, msg, CKPTS)
    assert (d.action, d.reason, d.message) == ("fail", "ConfigInvalid", "data.path: file not found")


def test_errors_restart_until_the_budget_is_spent() -> None:
    policy = FaultToleranceSpec(maxRestarts=2)
    state = RecoveryState()
    for _ in range(2):
        d = decide(policy, state, Cause.ERROR, None, CKPTS)
        assert d.action == "restart" and d.resume_from is None
        state = record(state, d)
    d = decide(policy, state, Cause.NODE_FAILURE, None, CKPTS)
    assert (d.action, d.reason) == ("fail", "RestartBudgetExhausted")
    assert state.restarts == {"total": 2, "nodeFailure": 0, "nan": 0, "error": 2, "hang": 0}


def test_nan_rolls_back_to_a_good_checkpoint_older_than_the_failed_one() -> None:
    policy = FaultToleranceSpec.model_validate({"nan": {"skipBatches": 2, "lrScalePercent": 50}})
    d = decide(policy, RecoveryState(), Cause.NAN, nan_message(), CKPTS)
    assert d.action == "restart" and d.reason == "RollbackNaN"
    assert d.resume_from == "file:///c/step-00000010"
    assert d.skip_batches == "21-26"  # the bad batches plus skipBatches extra
    assert d.lr_scale == 0.5


def test_nan_rollbacks_do_not_use_the_infrastructure_budget() -> None:
    policy = FaultToleranceSpec.model_validate({"maxRestarts": 0, "nan": {"maxRollbacks": 1}})
    state = record(
        RecoveryState(), decide(policy, RecoveryState(), Cause.NAN, nan_message(), CKPTS)
    )
    assert state.restarts["nan"] == 1
    d = decide(policy, state, Cause.NAN, nan_message(), CKPTS)
    assert (d.action, d.reason) == ("fail", "NaNRollbackBudgetExhausted")


def test_skip_ranges_accumulate_across_rollbacks() -> None:
    policy = FaultToleranceSpec()
    state = RecoveryState(skip_batches="5-6")
    d = decide(policy, state, Cause.NAN, nan_message(), CKPTS)
    assert d.skip_batches == "5-6,21-24"


def test_nan_action_fail() -> None:
    policy = FaultToleranceSpec.model_validate({"nan": {"action": "Fail"}})
    assert decide(policy, RecoveryState(), Cause.NAN, nan_message(), CKPTS).action == "fail"


def test_nan_without_a_proven_checkpoint_starts_over_never_from_an_unproven_one() -> None:
    unproven = [Checkpoint(10, "file:///c/step-00000010", good=False)]
    msg = TerminationMessage("NaNUnrecoverable", "loss is nan", skip_batches="12-13")
    d = decide(FaultToleranceSpec(), RecoveryState(), Cause.NAN, msg, unproven)
    assert d.action == "restart" and d.resume_from == RESUME_FROM_SCRATCH
    assert d.skip_batches == "12-13" and "the start" in d.message
