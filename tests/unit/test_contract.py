"""Exit codes, env parsing, termination messages and fault specs of the contract."""

from __future__ import annotations

import pytest

from kubetrain_trainer.contract import (
    Fault,
    TerminationMessage,
    format_step_ranges,
    parse_faults,
    parse_step_ranges,
)
from kubetrain_trainer.runtime import Runtime


def test_step_ranges_round_trip() -> None:
    ranges = parse_step_ranges("40-45, 80,90-91")
    assert ranges == [(40, 45), (80, 80), (90, 91)]
    assert format_step_ranges(ranges) == "40-45,80,90-91"
    assert parse_step_ranges("") == []


def test_backwards_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        parse_step_ranges("9-3")


def test_fault_specs_parse() -> None:
    assert parse_faults("nan@step=30,times=2;crash@step=50,rank=1") == [
        Fault("nan", 30, times=2),
        Fault("crash", 50, rank=1),
    ]
    assert parse_faults("exit@step=3,code=7") == [Fault("exit", 3, code=7)]


@pytest.mark.parametrize("spec", ["boom@step=3", "nan@3", "nan@step=3,when=2"])
def test_bad_fault_specs_name_the_problem(spec: str) -> None:
    with pytest.raises(ValueError, match="KUBETRAIN_FAULT_INJECT"):
        parse_faults(spec)


def test_termination_message_stays_under_the_kubernetes_limit() -> None:
    msg = TerminationMessage("Error", "x" * 10_000, step=3)
    text = msg.to_json()
    assert len(text) <= 4096
    back = TerminationMessage.from_json(text)
    assert back is not None and back.reason == "Error" and back.step == 3


def test_garbage_termination_message_reads_as_none() -> None:
    assert TerminationMessage.from_json("not json") is None


def test_runtime_from_env() -> None:
    env = {
        "KUBETRAIN_RESTART_COUNT": "2",
        "KUBETRAIN_SKIP_BATCHES": "5-6",
        "KUBETRAIN_LR_SCALE": "0.5",
        "KUBETRAIN_RESUME_FROM": "s3://b/p/step-00000010",
        "KUBETRAIN_CHECKPOINT_URI": "s3://b/p",
        "KUBETRAIN_METRICS_PORT": "9100",
    }
    rt = Runtime.from_env(env)
    assert (rt.restart_count, rt.skip_ranges, rt.lr_scale) == (2, [(5, 6)], 0.5)
    assert rt.resume_from == "s3://b/p/step-00000010"
    assert rt.config_overrides(env) == ["checkpoint.uri=s3://b/p", "metrics.port=9100"]
