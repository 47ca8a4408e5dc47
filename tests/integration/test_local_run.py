"""`kubetrain run`: a TrainingJob without a cluster, with the operator's recovery policy."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.trainer_runs import (
    committed_steps,
    env_with,
    kubetrain,
    losses_by_step,
    records,
    tiny_config,
)

from kubetrain_core.api import CHECKPOINT_FIELDS

pytestmark = pytest.mark.integration


def job(tmp_path: Path, *, nodes: int = 1, fault_tolerance: dict[str, Any], **trainer: Any) -> Path:
    cfg = tiny_config(tmp_path / "ignored", **trainer)
    del cfg["run_dir"]  # `kubetrain run` puts it under --runs-dir/<name>
    # A TrainingJob sets checkpointing in spec.checkpoint, in camelCase.
    checkpoint = cfg.pop("checkpoint")
    doc = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "tiny"},
        "spec": {"numNodes": nodes, "numProcPerNode": 1, "trainer": cfg,
                 "faultTolerance": fault_tolerance,
                 "checkpoint": {camel: checkpoint[snake] for camel, snake in CHECKPOINT_FIELDS.items()
                                if snake in checkpoint}},
    }  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run(path: Path, runs: Path, **env: str) -> tuple[int, str]:
    result = kubetrain("run", str(path), "--runs-dir", str(runs), env=env_with(**env), timeout=600)
    return result.returncode, result.stdout + result.stderr


def test_nan_past_the_in_process_budget_rolls_back_and_completes(tmp_path: Path) -> None:
    path = job(
        tmp_path,
        fault_tolerance={"nan": {"maxRollbacks": 2, "skipBatches": 2}},
        recovery={"max_consecutive_skips": 1, "max_restores": 0},
    )
    # Batches 12..15 are bad. The trainer skips 12, gives up at 13 (exit 65, bad 12-13,
    # no checkpoint restored); the policy asks for the newest good checkpoint before step
    # 13 and skips 12-15; the trainer finds step 10 (2 healthy steps followed it).
    code, out = run(path, tmp_path / "runs", KUBETRAIN_FAULT_INJECT="nan@step=12,times=4")
    assert code == 0, out[-3000:]
    assert out.count("RollbackNaN") == 1
    run_dir = tmp_path / "runs" / "tiny"
    resumes = [r for r in records(run_dir, "event") if r["event"] == "resume"]
    assert resumes[-1]["uri"].endswith("step-00000010-t0")
    assert max(losses_by_step(run_dir)) == 20  # the exact final step count
    assert max(committed_steps(run_dir / "checkpoints")) == 20


def test_nan_on_every_attempt_fails_with_the_budget_reason(tmp_path: Path) -> None:
    path = job(
        tmp_path,
        fault_tolerance={"nan": {"maxRollbacks": 1}},
        recovery={"max_consecutive_skips": 0, "max_restores": 0},
    )
    code, out = run(path, tmp_path / "runs", KUBETRAIN_FAULT_INJECT="nan@step=3")
    assert code == 1
    assert "NaNRollbackBudgetExhausted" in out


def test_invalid_job_is_rejected_with_field_paths(tmp_path: Path) -> None:
    path = job(tmp_path, fault_tolerance={"maxRestarts": -1}, training={"precision": "fp8"})
    code, out = run(path, tmp_path / "runs")
    assert code == 2
    assert "spec.faultTolerance.maxRestarts" in out
    assert "spec.trainer.training.precision" in out


def test_two_process_job_runs_under_torchrun_standalone(tmp_path: Path) -> None:
    path = job(
        tmp_path, nodes=2, fault_tolerance={}, training={"max_steps": 10},
        metrics={"tensorboard": True},
    )  # fmt: skip
    code, out = run(path, tmp_path / "runs")
    assert code == 0, out[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    assert committed_steps(run_dir / "checkpoints") == [5, 10]
    # metrics.tensorboard is honoured, by rank 0 alone: one event file for two processes
    # (it used to be read by nothing, and the TensorBoard callback wrote on every rank).
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1

    # `kubetrain checkpoints` reads the store as the trainer does, with the run's key.
    listing = kubetrain("checkpoints", str(path), "--runs-dir", str(tmp_path / "runs"), "--verify")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert "2 checkpoint directories, manifests authenticated" in listing.stdout
    lines = [line for line in listing.stdout.splitlines() if line.strip().startswith("step")]
    assert [line.split()[1] for line in lines] == ["5", "10"]
    assert all("verified" in line for line in lines)
    shard = next((run_dir / "checkpoints" / "step-00000005-t0").rglob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[0] ^= 0xFF  # one flipped byte
    shard.write_bytes(bytes(data))
    damaged = kubetrain("checkpoints", str(path), "--runs-dir", str(tmp_path / "runs"), "--verify")
    assert damaged.returncode == 1
    assert "does not match its sha256" in damaged.stdout


def _checkpoint_files(run_dir: Path) -> dict[str, bytes]:
    root = run_dir / "checkpoints"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_changed_model_shape_is_one_clear_config_error_and_keeps_the_checkpoints(
    tmp_path: Path,
) -> None:
    # As a new user would: run the example, raise seq_len (and max_seq_len) and run again.
    path = job(tmp_path, fault_tolerance={}, training={"max_steps": 10})
    code, out = run(path, tmp_path / "runs")
    assert code == 0, out[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    before = _checkpoint_files(run_dir)

    doc = yaml.safe_load(path.read_text())
    doc["spec"]["trainer"]["data"]["seq_len"] = 64
    doc["spec"]["trainer"]["model"]["max_seq_len"] = 64
    path.write_text(yaml.safe_dump(doc))
    code, out = run(path, tmp_path / "runs")
    assert code == 64, out[-3000:]
    assert out.count("failed (exitcode: 64)") == 1  # one attempt: never retried
    assert "model.max_seq_len: 32 -> 64" in out
    assert "--from-scratch" in out  # the way out
    assert "ConfigInvalid" in out and "Restart" not in out
    assert _checkpoint_files(run_dir) == before  # nothing deleted, nothing rewritten

    # The way out starts a new timeline beside the old checkpoints.
    result = kubetrain(
        "run", str(path), "--runs-dir", str(tmp_path / "runs"), "--from-scratch",
        env=env_with(), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    after = _checkpoint_files(run_dir)
    assert all(after[name] == data for name, data in before.items() if "/good.json" not in name)
    assert any(name.startswith("step-00000010-t1/") for name in after)


def test_a_bad_path_is_one_clear_error_before_any_process_starts(tmp_path: Path) -> None:
    path = job(tmp_path, fault_tolerance={}, data={"path": str(tmp_path / "nowhere.txt")})
    code, out = run(path, tmp_path / "runs")
    assert code == 2  # as for a spec that does not validate
    assert f"data.path: {tmp_path / 'nowhere.txt'} does not exist" in out
    assert "Traceback" not in out and "torch" not in out  # torchrun never started


def test_ctrl_c_saves_a_checkpoint_stops_cleanly_and_says_how_to_resume(tmp_path: Path) -> None:
    path = job(tmp_path, fault_tolerance={}, training={"max_steps": 100_000})
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "kubetrain_cli", "run", str(path), "--runs-dir", str(runs)]
    with subprocess.Popen(
        command, env=env_with(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        metrics = runs / "tiny" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.exists() and len(metrics.read_text().splitlines()) > 20):
            assert time.monotonic() < deadline and proc.poll() is None, "never started training"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    stopped = int(out.split("stopped at step ")[1].split(";")[0])
    assert stopped in committed_steps(runs / "tiny" / "checkpoints")  # saved where it stopped
    assert f"run `kubetrain run {path}` to resume" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
