"""Elastic gangs under the real torchrun: the global batch every world size keeps, and
the operator's c10d command shrinking through a lost agent and growing back.

Two torchrun agents on loopback stand in for two pods: the rendezvous arguments are
the operator's own (builders.torchrun_command), with the pods' DNS names mapped to
127.0.0.1 and 127.0.0.2.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.trainer_runs import (
    REPO,
    env_with,
    losses_by_step,
    records,
    tiny_config,
    train_ok,
    write_config,
)

from kubetrain_core.api import TrainingJob
from kubetrain_operator import builders
from kubetrain_operator.settings import Settings
from localkube.kubelet.runtime import descendants
from localkube.services import wait_until

pytestmark = pytest.mark.slow


def _launch(config: Path, log: Path, *torchrun: str, **env: str) -> subprocess.Popen[bytes]:
    """torchrun with the trainer, its output in `log` (a file: a pipe nobody reads fills)."""
    command = [sys.executable, "-m", "kubetrain_trainer.launch", *torchrun]
    command += ["-m", "kubetrain_trainer", "train", "--config", str(config)]
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            env=env_with(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_one_rank_trains_the_global_batch_of_two(tmp_path: Path) -> None:
    training = {"max_steps": 6, "eval_steps": 100}
    two = tiny_config(tmp_path / "two", training=training)
    log = tmp_path / "two.log"
    run = _launch(
        write_config(tmp_path / "two.yaml", two), log, "--standalone", "--nproc-per-node=2"
    )
    assert run.wait(timeout=300) == 0, log.read_text()[-4000:]
    one = tiny_config(tmp_path / "one", training=training)
    one["optimization"]["global_batch_ranks"] = 2
    train_ok(one, tmp_path / "one.yaml")
    alone = tiny_config(tmp_path / "alone", training=training)
    train_ok(alone, tmp_path / "alone.yaml")

    by_two, by_one = losses_by_step(tmp_path / "two"), losses_by_step(tmp_path / "one")
    assert sorted(by_two) == sorted(by_one) == list(range(1, 7))
    assert by_one == pytest.approx(by_two, rel=1e-4)  # the same batches, summed differently
    # Without global_batch_ranks one rank trains half the batch: other losses.
    assert losses_by_step(tmp_path / "alone")[6] != pytest.approx(by_two[6], rel=1e-4)


def _elastic_job() -> TrainingJob:
    data = yaml.safe_load((REPO / "examples" / "trainingjob.yaml").read_text())
    data["spec"] |= {
        "numNodes": 2,
        "elastic": {"minNodes": 1},
        "faultTolerance": {"inPlaceRestarts": 3},
    }
    return TrainingJob.model_validate(data)


def _agent_args(job: TrainingJob, index: int) -> list[str]:
    """The operator's torchrun arguments for pod `index`, on loopback."""
    name = job.metadata.name
    loopback = {f"{name}-{i}.{name}": f"127.0.0.{i + 1}" for i in range(2)}
    command = builders.torchrun_command(job, index, Settings(torchrun=["torchrun"]))
    args = command[1 : command.index("-m")]
    for host, addr in loopback.items():
        args = [a.replace(host, addr) for a in args]
    return [*args, "--monitor-interval=0.2"]


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL an agent and its workers (torchrun starts them in sessions of their own)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _worlds(log: Path) -> list[int]:
    """The world size of each start of the workers, from rank 0's log."""
    return [int(n) for n in re.findall(r"world of (\d+) ranks", log.read_text())]


def _trained(run_dir: Path, at_least: int) -> bool:
    if not (run_dir / "metrics.jsonl").exists():
        return False
    train = records(run_dir, "train")
    return bool(train) and train[-1]["step"] >= at_least


def test_an_elastic_gang_trains_on_without_a_lost_agent_and_grows_back(tmp_path: Path) -> None:
    steps = 400
    run_dir = tmp_path / "run"
    training = {"max_steps": steps, "eval_steps": 1000, "process_group_timeout_seconds": 60}
    cfg: dict[str, Any] = tiny_config(run_dir, training=training)
    cfg["checkpoint"]["interval_steps"] = 20
    cfg["optimization"]["global_batch_ranks"] = 2  # what the operator's config says
    config = write_config(tmp_path / "c.yaml", cfg)
    job = _elastic_job()
    env = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    logs = [tmp_path / f"agent{i}.log" for i in range(3)]
    zero = _launch(config, logs[0], *_agent_args(job, 0), **env)
    one = _launch(config, logs[1], *_agent_args(job, 1), **env)
    again: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: _trained(run_dir, 50), timeout=240, what="two agents to train 50 steps")
        _kill_tree(one)  # the node of pod 1 is gone
        one.wait(timeout=30)
        lost_at = records(run_dir, "train")[-1]["step"]
        alone = lambda: _trained(run_dir, lost_at + 30) and 1 in _worlds(logs[0])  # noqa: E731
        wait_until(alone, timeout=120, what="agent 0 to train on alone")
        again = _launch(config, logs[2], *_agent_args(job, 1), **env)  # the recreated pod
        assert zero.wait(timeout=600) == 0, logs[0].read_text()[-6000:]
        assert again.wait(timeout=60) == 0, logs[2].read_text()[-4000:]
    finally:
        for proc in (zero, one, again):
            if proc is not None and proc.poll() is None:
                _kill_tree(proc)
    worlds = _worlds(logs[0])
    assert worlds[0] == 2 and 1 in worlds and worlds[-1] == 2, worlds
    assert records(run_dir, "train")[-1]["step"] == steps
