"""Seed 003's stack-wise strategies through the real CLI. progressive: the example grows
its four stacks with the validation loss falling in each stage, a run resumed
mid-stage retraces the uninterrupted one, and two DDP processes train it like one;
end_to_end stackwise resumes exactly and writes its stacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tests.integration.trainer_runs import (
    REPO,
    committed_steps,
    env_with,
    kubetrain,
    losses_by_step,
    records,
    tiny_config,
    torchrun,
    train_ok,
    write_config,
)

pytestmark = pytest.mark.integration


def test_the_example_grows_four_stacks_each_lowering_the_validation_loss(tmp_path: Path) -> None:
    """examples/progressive.yaml at a quarter of its steps (stages of 50)."""
    result = kubetrain(
        "run", str(REPO / "examples" / "progressive.yaml"), "--runs-dir", str(tmp_path),
        "training.progressive.stage_steps=50", "training.max_steps=200",
        "training.eval_steps=25", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    run_dir = tmp_path / "progressive"
    train = records(run_dir, "train")
    stacks = {r["step"]: r["active_stacks"] for r in train}
    # Step n is step index n - 1: stage k holds indices 50k .. 50k + 49.
    assert {s: stacks[s] for s in (25, 50, 75, 100, 125, 150, 175, 200)} == {
        25: 1, 50: 1, 75: 2, 100: 2, 125: 3, 150: 3, 175: 4, 200: 4
    }  # fmt: skip
    assert all(r["stage"] == r["active_stacks"] - 1 for r in train)
    val = {r["step"]: r["val_loss"] for r in records(run_dir, "val")}
    for end in (50, 100, 150, 200):  # each stage's second evaluation beats its first
        assert val[end] < val[end - 25], val
    export = run_dir / "export"
    for k in range(4):
        stack = load_file(str(export / "stacks" / f"stack-{k}.safetensors"))
        assert stack and all(name.startswith(f"blocks.{k}.") for name in stack)
    whole = load_file(str(export / "model.safetensors"))
    stack0 = load_file(str(export / "stacks" / "stack-0.safetensors"))
    assert all(torch.equal(t, whole[n]) for n, t in stack0.items())


def _progressive(run_dir: Path, **progressive: Any) -> dict[str, Any]:
    return tiny_config(
        run_dir,
        model={"d_model": 32, "n_layers": 4, "n_heads": 2, "max_seq_len": 32, "dropout": 0.1},
        training={
            "strategy": "progressive",
            "progressive": {"stage_steps": 5, **progressive},
        },
        checkpoint={"interval_steps": 4, "async_upload": False},
    )


@pytest.mark.parametrize(
    "trunk",
    [
        {"trunk_strategy": "scaled_lr"},
        {"trunk_strategy": "frozen", "cache": {"max_mib": 16}},
        {"trunk_precision": "bf16", "trunk_adapters": {"r": 4, "dropout": 0.1}},
    ],
    ids=["scaled-lr", "frozen-cached", "bf16-trunk-adapters"],
)
def test_a_run_resumed_mid_stage_retraces_the_uninterrupted_one(
    tmp_path: Path, trunk: dict[str, Any]
) -> None:
    """Crashed in stage 1 and resumed from its checkpoint at step 8: the trunk it froze
    (stored in bf16, with its adapters) comes back from that checkpoint, stacks 2 and 3
    never trained yet, the activation cache starts empty. It computes the uninterrupted run's losses through all four
    stages, and its last checkpoint exports the model it trained."""
    straight = _progressive(tmp_path / "straight", **trunk)
    train_ok(straight, tmp_path / "straight.yaml")
    split = _progressive(tmp_path / "split", **trunk)
    path = write_config(tmp_path / "split.yaml", split)
    crashed = kubetrain(
        "train", "--config", str(path), env=env_with(KUBETRAIN_FAULT_INJECT="crash@step=9")
    )
    assert crashed.returncode != 0
    assert committed_steps(tmp_path / "split" / "checkpoints")[-1] == 8
    train_ok(split, path)
    assert losses_by_step(tmp_path / "split") == losses_by_step(tmp_path / "straight")
    out = tmp_path / "exported"
    made = kubetrain("export", str(tmp_path / "split" / "checkpoints"), str(out))
    assert made.returncode == 0, made.stderr[-2000:]
    trained = load_file(str(tmp_path / "split" / "export" / "model.safetensors"))
    exported = load_file(str(out / "model.safetensors"))
    assert trained.keys() == exported.keys()
    assert all(torch.equal(t, exported[n]) for n, t in trained.items())


def test_two_ddp_processes_train_a_frozen_trunk_like_one(tmp_path: Path) -> None:
    """DDP is told that some parameters go without gradients; the losses and the
    frozen trunk match a single process reading the same global batch."""
    one = _progressive(tmp_path / "one")
    one["optimization"]["accumulation_steps"] = 2
    two = _progressive(tmp_path / "two")
    for cfg in (one, two):
        cfg["model"]["dropout"] = 0.0  # each process draws its own dropout masks
    train_ok(one, tmp_path / "one.yaml")
    result = torchrun(write_config(tmp_path / "two.yaml", two), 2)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    a, b = losses_by_step(tmp_path / "one"), losses_by_step(tmp_path / "two")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < 1e-4 for s in a), (a, b)
    for k in range(4):
        left = load_file(str(tmp_path / "one" / "export" / "stacks" / f"stack-{k}.safetensors"))
        right = load_file(str(tmp_path / "two" / "export" / "stacks" / f"stack-{k}.safetensors"))
        # Two ranks sum the gradients in another order: float noise (seen: 2e-5 at most).
        assert all(torch.allclose(left[n], right[n], atol=1e-4) for n in left)


def test_stackwise_end_to_end_resumes_exactly_and_writes_its_stacks(tmp_path: Path) -> None:
    def config(run_dir: Path, steps: int) -> dict[str, Any]:
        return tiny_config(
            run_dir,
            model={"d_model": 32, "n_layers": 4, "n_heads": 2, "max_seq_len": 32},
            training={
                "strategy": "end_to_end",
                "end_to_end": {"scope": "stackwise", "blocks_per_stack": 2, "save_rack": True},
                "max_steps": steps,
            },
        )

    train_ok(config(tmp_path / "straight", 20), tmp_path / "straight.yaml")
    train_ok(config(tmp_path / "split", 10), tmp_path / "split.yaml")
    train_ok(config(tmp_path / "split", 20), tmp_path / "split.yaml")
    assert losses_by_step(tmp_path / "split") == losses_by_step(tmp_path / "straight")
    export = tmp_path / "straight" / "export"
    assert sorted(p.name for p in (export / "stacks").iterdir()) == [
        "stack-0.safetensors",
        "stack-1.safetensors",
    ]
    rack = load_file(str(export / "rack.safetensors"))
    assert {name.split(".")[1] for name in rack} == {"0", "1", "2", "3"}


def test_the_activation_cache_benchmark_reports_its_figures() -> None:
    """benchmarks/activation_cache.py --quick: both runs measured, the cache hit, and
    it changed nothing that was learned. Timings are not asserted."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "activation_cache.py"), "--quick", "--json"],
        env=env_with(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("cached_steps_per_second", "uncached_steps_per_second", "speedup",
                "cached_peak_rss_mib", "uncached_peak_rss_mib"):  # fmt: skip
        assert figures[key] > 0, key
    assert len(figures["per_stage_cached"]) == 4 and 0 < figures["hit_rate"] < 1
    assert figures["cached_val_loss"] == pytest.approx(figures["uncached_val_loss"], rel=1e-4)
