"""torchrun, stopped quietly: `python -m kubetrain_trainer.launch [torchrun args]`.

A SIGTERM makes torchrun stop its workers (each saves a checkpoint and exits) and then
raise its SignalException as a traceback; the stop is asked for, so it is an exit
code (128 + the signal) instead, as a shell reports it. A failed worker has printed
why; its exit code (the trainer's contract: 64 config, 65 NaN, ...) is returned in
place of torchrun's traceback and blanket 1.

With --max-restarts (faultTolerance.inPlaceRestarts) torchrun restarts failed workers
inside the pod whatever their exit code; an exit the operator must act on (FINAL: an
invalid config, a NaN that needs a rollback, a preemption) ends the pod at once instead,
so that no restart is spent on a failure a restart cannot cure.
"""

from __future__ import annotations

import sys
from typing import Any

from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun

from kubetrain_core.contract import ExitCode

FINAL = frozenset({ExitCode.CONFIG_INVALID, ExitCode.NAN_UNRECOVERABLE, ExitCode.PREEMPTED})


def is_final(result: RunResult) -> bool:
    """Whether a worker of this failed run exited with an outcome for the operator."""
    return result.is_failed() and any(f.exitcode in FINAL for f in result.failures.values())


def _final_exits_end_the_agent() -> None:
    """The agent restarts while restarts remain (SimpleElasticAgent._invoke_run); a final
    exit leaves it none, so it stops its workers and reports the failure."""
    monitor = LocalElasticAgent._monitor_workers

    def monitor_workers(self: Any, worker_group: WorkerGroup) -> RunResult:
        result: RunResult = monitor(self, worker_group)
        if is_final(result):
            self._remaining_restarts = 0
        return result

    LocalElasticAgent._monitor_workers = monitor_workers  # type: ignore[method-assign]


def main() -> int:
    _final_exits_end_the_agent()
    try:
        torchrun()
    except SignalException as stopped:
        return 128 + int(stopped.sigval)
    except ChildFailedError as failed:  # the workers said why; their exit code says what
        code = int(failed.get_first_failure()[1].exitcode)
        return code if code > 0 else 128 - code  # a negative code is the killing signal
    return 0


if __name__ == "__main__":
    sys.exit(main())
