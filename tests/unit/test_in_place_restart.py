"""In-place restarts (faultTolerance.inPlaceRestarts): the torchrun budget, which exits
end the agent at once, and the count rank 0 reports (pure)."""

from __future__ import annotations

import socket

import pytest
from tests.unit.test_reconcile import SETTINGS, _job
from torch.distributed import PrefixStore, TCPStore
from torch.distributed.elastic.agent.server.api import RunResult, WorkerState
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from kubetrain_core.contract import ExitCode
from kubetrain_operator import builders
from kubetrain_operator.progress import parse_progress
from kubetrain_trainer import distributed
from kubetrain_trainer.faults import FaultInjector
from kubetrain_trainer.launch import is_final
from kubetrain_trainer.runtime import Runtime


def test_the_budget_is_torchruns_max_restarts() -> None:
    assert "--max-restarts=0" in builders.torchrun_command(_job(), 0, SETTINGS)
    job = _job(faultTolerance={"inPlaceRestarts": 3})
    assert "--max-restarts=3" in builders.torchrun_command(job, 1, SETTINGS)


def _failed(*codes: int) -> RunResult:
    failures = {
        rank: ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=code, error_file="")
        for rank, code in enumerate(codes)
    }
    return RunResult(state=WorkerState.FAILED, failures=failures)


def test_only_a_crash_is_restarted_in_place() -> None:
    assert not is_final(_failed(1))  # an error exit: restart in place
    assert not is_final(_failed(-9, 1))  # killed by a signal
    assert is_final(_failed(1, ExitCode.NAN_UNRECOVERABLE))  # the operator rolls back
    assert is_final(_failed(ExitCode.CONFIG_INVALID))
    assert is_final(_failed(ExitCode.PREEMPTED))
    assert not is_final(RunResult(state=WorkerState.SUCCEEDED))


def test_faults_and_fresh_starts_count_in_place_restarts_as_starts() -> None:
    env = {"KUBETRAIN_RESTART_COUNT": "1", "TORCHELASTIC_RESTART_COUNT": "2"}
    assert Runtime.from_env(env).earlier_starts == 3

    def crashes(times: int) -> bool:
        fault = f"crash@step=5,times={times}"
        return bool(FaultInjector.from_env(environ={**env, "KUBETRAIN_FAULT_INJECT": fault}))

    assert not crashes(3) and crashes(4)  # the first 3 starts crashed: this is the fourth


def test_rank_zero_reports_its_in_place_restarts() -> None:
    progress = parse_progress({"step": 7, "workerRestarts": 2})
    assert progress is not None and progress.workerRestarts == 2
    bad = parse_progress({"step": 7, "workerRestarts": -1})
    assert bad is not None and bad.workerRestarts is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("agent_store", "prefixed"), [("True", True), ("False", False)])
def test_only_the_agents_long_lived_store_is_split_by_incarnation(
    monkeypatch: pytest.MonkeyPatch, agent_store: str, prefixed: bool
) -> None:
    """torchrun's agent store outlives its workers (static rendezvous, --standalone): a
    restarted incarnation must not read the last one's keys. A store of the round's own
    (c10d without a shared store, as elastic jobs run) needs no prefix: its agents count
    their restarts apart, so a prefix would split one world in two."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    env |= {"TORCHELASTIC_USE_AGENT_STORE": agent_store, "TORCHELASTIC_RESTART_COUNT": "2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if agent_store == "True":  # the agent serves it; here nobody else does
        server = TCPStore("127.0.0.1", int(env["MASTER_PORT"]), 1, is_master=True)
        server.set("kubetrain/incarnation-2/seen", "yes")
    store = distributed._incarnation_store(0, 1, None)
    assert isinstance(store, PrefixStore) is prefixed
    if prefixed:
        assert store.get("seen") == b"yes"
