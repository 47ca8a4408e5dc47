"""Exit codes, env parsing, termination messages and fault specs of the contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetrain_core.config import ConfigError, load_config
from kubetrain_core.contract import (
    Fault,
    TerminationMessage,
    format_step_ranges,
    parse_faults,
    parse_step_ranges,
)
from kubetrain_trainer.checkpoint import Owner
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
        "KUBETRAIN_JOB_NAME": "bert",
        "KUBETRAIN_NAMESPACE": "team-a",
        "KUBETRAIN_JOB_UID": "u-1",
        "KUBETRAIN_RESTART_COUNT": "2",
        "KUBETRAIN_SKIP_BATCHES": "5-6",
        "KUBETRAIN_LR_SCALE": "0.5",
        "KUBETRAIN_ROLLBACK_BEFORE": "30",
        "KUBETRAIN_ROLLBACK_ID": "u-1/2",
        "KUBETRAIN_CHECKPOINT_KEY": "secret",
        "KUBETRAIN_RUN_DIR": "/tmp/run #1",
    }
    rt = Runtime.from_env(env)
    assert (rt.restart_count, rt.skip_ranges, rt.lr_scale) == (2, [(5, 6)], 0.5)
    assert (rt.rollback_before, rt.rollback_id) == (30, "u-1/2")
    assert rt.owner == Owner("team-a", "bert", "u-1")
    assert rt.checkpoint_key == b"secret" and "secret" not in repr(rt)
    # Strings stay strings: nothing after "#" is dropped as a YAML comment.
    assert rt.overrides == {"run_dir": "/tmp/run #1"}


@pytest.mark.parametrize("name", ["KUBETRAIN_RESTART_COUNT", "KUBETRAIN_ROLLBACK_BEFORE"])
def test_malformed_numbers_in_the_env_name_the_variable(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Runtime.from_env({name: "ten"})


def test_a_uri_with_a_comment_is_rejected_not_truncated(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": "x"}, "training": {"max_steps": 1}}))
    for values, overrides in (
        ({"checkpoint.uri": "s3://bucket/team-a #1"}, []),
        ({}, ["checkpoint.uri=s3://bucket/team-a #1"]),
    ):
        with pytest.raises(ConfigError, match=r"checkpoint\.uri"):
            load_config(config, overrides, values=values)
    cfg = load_config(config, ["checkpoint.uri=s3://bucket/x", "training.max_steps=7"])
    assert cfg.checkpoint.uri == "s3://bucket/x" and cfg.training.max_steps == 7
