"""In-place restarts under the real torchrun (kubetrain_trainer.launch, --max-restarts):
a crashed worker is restarted in the same agent and the run ends at its exact step
count; an outcome for the operator (an invalid config, a NaN to roll back) ends the
agent at once with the trainer's exit code, spending no restart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.trainer_runs import env_with, records, tiny_config, write_config

from kubetrain_core.contract import ExitCode

STARTS = "claimed term"  # rank 0, each time the workers start (a term per start)


def _launch(tmp_path: Path, fault: str, restarts: int = 2) -> subprocess.CompletedProcess[str]:
    training = {"max_steps": 16, "device": "cpu", "process_group_timeout_seconds": 120}
    cfg = tiny_config(tmp_path / "run", training=training)
    config = write_config(tmp_path / "c.yaml", cfg)
    log = tmp_path / "termination.log"
    command = [
        sys.executable, "-m", "kubetrain_trainer.launch", "--standalone",
        "--nproc-per-node=2", f"--max-restarts={restarts}", "--monitor-interval=0.2",
        "-m", "kubetrain_trainer", "train", "--config", str(config),
    ]  # fmt: skip
    env = env_with(KUBETRAIN_FAULT_INJECT=fault, KUBETRAIN_TERMINATION_LOG=str(log))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_a_crashed_worker_restarts_in_place_and_the_run_ends_at_its_exact_step(
    tmp_path: Path,
) -> None:
    result = _launch(tmp_path, "crash@step=12,times=1,rank=1")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert output.count(STARTS) == 2, output[-4000:]  # the first start and one restart
    message = json.loads((tmp_path / "termination.log").read_text())
    assert (message["reason"], message["step"]) == ("Succeeded", 16)
    steps = [r["step"] for r in records(tmp_path / "run", "train")]
    # The restart resumed from the checkpoint at step 10 (interval 5) and trained on.
    assert steps[-1] == 16 and 11 in steps and steps.count(11) == 2, steps


def test_an_outcome_for_the_operator_ends_the_agent_without_a_restart(tmp_path: Path) -> None:
    result = _launch(tmp_path, f"exit@step=3,code={ExitCode.NAN_UNRECOVERABLE.value}")
    output = result.stdout + result.stderr
    assert result.returncode == ExitCode.NAN_UNRECOVERABLE, output[-4000:]
    assert output.count(STARTS) == 1, output[-4000:]
