"""In-place restarts (faultTolerance.inPlaceRestarts): the torchrun budget, which exits
end the agent at once, and the count rank 0 reports (pure)."""

from __future__ import annotations

from tests.unit.test_reconcile import SETTINGS, _job
from torch.distributed.elastic.agent.server.api import RunResult, WorkerState
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from kubetrain_core.contract import ExitCode
from kubetrain_operator import builders
from kubetrain_operator.progress import parse_progress
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
