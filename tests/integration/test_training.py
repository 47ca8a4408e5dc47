"""The trainer end to end on real files and real processes (CPU, gloo)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tests.integration.trainer_runs import (
    committed_steps,
    env_with,
    kubetrain,
    losses_by_step,
    records,
    tiny_config,
    torchrun,
    write_config,
)

pytestmark = pytest.mark.integration


def run_ok(config: Path, *overrides: str, **env: str) -> None:
    result = kubetrain("train", "--config", str(config), *overrides, env=env_with(**env))
    assert result.returncode == 0, result.stdout + result.stderr


def test_converges_on_the_toy_corpus(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path / "run",
        model={"d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 64},
        data={"seq_len": 64, "batch_size": 8},
        training={"max_steps": 150, "eval_steps": 50, "eval_batches": 4},
        checkpoint={"interval_steps": 50},
    )
    run_ok(write_config(tmp_path / "c.yaml", cfg))
    val = [r["val_loss"] for r in records(tmp_path / "run", "val")]
    first_loss = losses_by_step(tmp_path / "run")[1]
    assert len(val) == 3
    assert val == sorted(val, reverse=True), val  # falls at every evaluation
    assert val[-1] < first_loss - 1.5, (first_loss, val)  # visibly learned, not noise
    assert val[-1] < math.log(60)  # far better than uniform over a char vocabulary
    assert committed_steps(tmp_path / "run" / "checkpoints") == [50, 100, 150]
    test = records(tmp_path / "run", "test")
    assert test and math.isfinite(test[0]["test_loss"])


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path: Path) -> None:
    straight = tiny_config(tmp_path / "straight", training={"max_steps": 20})
    run_ok(write_config(tmp_path / "a.yaml", straight))

    split = tiny_config(tmp_path / "split", training={"max_steps": 10})
    path = write_config(tmp_path / "b.yaml", split)
    run_ok(path)
    run_ok(path, "training.max_steps=20")  # resumes from the step-10 checkpoint

    expected = losses_by_step(tmp_path / "straight")
    got = losses_by_step(tmp_path / "split")
    assert sorted(got) == list(range(1, 21))
    assert got == expected  # bit-identical on CPU


def test_gradient_accumulation_matches_the_large_batch(tmp_path: Path) -> None:
    big = tiny_config(tmp_path / "big", data={"batch_size": 8}, training={"max_steps": 5})
    acc = tiny_config(
        tmp_path / "acc",
        data={"batch_size": 2},
        optimization={"accumulation_steps": 4},
        training={"max_steps": 5},
    )
    run_ok(write_config(tmp_path / "big.yaml", big))
    run_ok(write_config(tmp_path / "acc.yaml", acc))
    a, b = losses_by_step(tmp_path / "big"), losses_by_step(tmp_path / "acc")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-4, abs=1e-5)


def test_nan_injection_is_skipped_restored_and_the_run_completes(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", recovery={"max_consecutive_skips": 2, "max_restores": 2})
    # batches 12..14 are poisoned: two skips, then a restore to the good step-10 checkpoint,
    # after which 12..14 are skipped and the rest trains normally
    run_ok(write_config(tmp_path / "c.yaml", cfg), KUBETRAIN_FAULT_INJECT="nan@step=12,times=3")
    events = [r["event"] for r in records(tmp_path / "run", "event")]
    assert events.count("nan_skip") == 2 and events.count("nan_restore") == 1
    losses = losses_by_step(tmp_path / "run")
    assert max(losses) == 20 and all(
        math.isfinite(v) for s, v in losses.items() if s not in (13, 14)
    )
    assert 20 in committed_steps(tmp_path / "run" / "checkpoints")


def test_nan_past_the_budget_exits_with_the_nan_code_and_message(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", recovery={"max_consecutive_skips": 1, "max_restores": 0})
    log = tmp_path / "termination.json"
    result = kubetrain(
        "train", "--config", str(write_config(tmp_path / "c.yaml", cfg)),
        env=env_with(KUBETRAIN_FAULT_INJECT="nan@step=12", KUBETRAIN_TERMINATION_LOG=str(log)),
    )  # fmt: skip
    assert result.returncode == 65, result.stderr
    message = json.loads(log.read_text())
    assert message["reason"] == "NaNUnrecoverable"
    assert message["skip_batches"].startswith("12-")
    assert message["step"] == 13 and message["restored_step"] is None  # never loaded one
    assert message["resumed_from"] is None


def test_corrupted_checkpoint_is_detected_and_the_previous_one_used(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", training={"max_steps": 10})
    path = write_config(tmp_path / "c.yaml", cfg)
    run_ok(path)
    ckpts = tmp_path / "run" / "checkpoints"
    assert committed_steps(ckpts) == [5, 10]
    victim = max((ckpts / "step-00000010-t0").rglob("*.distcp"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(data)

    result = kubetrain("train", "--config", str(path), "training.max_steps=12")
    assert result.returncode == 0, result.stderr
    assert "step-00000010-t0" in result.stdout + result.stderr  # the corruption is reported
    resumes = [r for r in records(tmp_path / "run", "event") if r["event"] == "resume"]
    assert resumes[-1]["uri"].endswith("step-00000005-t0")
    assert victim.exists()  # kept, never deleted
    assert max(losses_by_step(tmp_path / "run")) == 12


def test_two_process_torchrun_on_cpu(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", training={"max_steps": 10}, metrics={"log_steps": 5})
    result = torchrun(write_config(tmp_path / "c.yaml", cfg), 2)
    assert result.returncode == 0, result.stderr[-3000:]
    train = records(tmp_path / "run", "train")
    assert [r["step"] for r in train] == [5, 10]  # rank 0 alone writes the log
    assert committed_steps(tmp_path / "run" / "checkpoints") == [5, 10]
    manifest = json.loads((tmp_path / "run/checkpoints/step-00000010-t0/manifest.json").read_text())
    assert manifest["world_size"] == 2


def test_invalid_config_exits_64_with_the_field_named(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", training={"max_steps": 5, "precision": "fp8"})
    log = tmp_path / "termination.json"
    result = kubetrain(
        "train", "--config", str(write_config(tmp_path / "c.yaml", cfg)),
        env=env_with(KUBETRAIN_TERMINATION_LOG=str(log)),
    )  # fmt: skip
    assert result.returncode == 64
    assert "training.precision" in result.stderr
    assert json.loads(log.read_text())["reason"] == "ConfigInvalid"


def test_missing_corpus_is_a_config_error(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", data={"path": str(tmp_path / "nope.txt")})
    result = kubetrain("train", "--config", str(write_config(tmp_path / "c.yaml", cfg)))
    assert result.returncode == 64, result.stderr
    assert "data.path" in result.stderr


def test_training_compile_gives_the_eager_losses_on_cpu(tmp_path: Path) -> None:
    for mode, compiled in (("eager", False), ("compiled", True)):
        cfg = tiny_config(tmp_path / mode, training={"max_steps": 4, "compile": compiled})
        run_ok(write_config(tmp_path / f"{mode}.yaml", cfg))
    eager, compiled_losses = (
        losses_by_step(tmp_path / "eager"),
        losses_by_step(tmp_path / "compiled"),
    )
    assert sorted(compiled_losses) == [1, 2, 3, 4]
    for step, loss in eager.items():
        assert compiled_losses[step] == pytest.approx(loss, rel=1e-4)
