"""Fault injection (``KUBETRAIN_FAULT_INJECT``): misbehave on purpose, so tests exercise recovery.

Kinds (grammar in ``contract.parse_faults``):

* ``nan@step=N[,times=T]``: the loss of steps N..N+T-1 (every step from N
  on without ``times``) becomes NaN; the loop asks ``loss_fault(step)``.
  Models a bad batch: it comes back on every attempt that trains step N,
  which is what rollback plus batch skipping must cure.
* ``crash@step=N``: hard exit with code 1 and no cleanup (``os._exit``), as
  when the process is killed or segfaults.
* ``exit@step=N,code=C``: a clean ``SystemExit(C)``; ``finally`` blocks run,
  as when the trainer decides to exit with C.
* ``hang@step=N``: stop making progress forever (the metrics thread keeps
  answering), for the operator's progress deadline.
* ``stall@step=N,seconds=S``: the upload worker waits S seconds before it
  commits the checkpoint at step N, so that a replaced attempt's commit
  arrives late (the fence must refuse it).

For crash, exit, hang and stall, ``times=T`` means "on the first T attempts"
(starts before this one < T: ``KUBETRAIN_RESTART_COUNT``, the operator's attempt,
plus ``TORCHELASTIC_RESTART_COUNT``, torchrun's in-place restarts) and no ``times`` means
on every attempt: ``crash@step=20,times=1`` is a transient failure that a
restart cures, ``crash@step=20`` one that exhausts the restart budget.
``rank=R`` limits a fault to global rank R.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping

from kubetrain_core.contract import Env, Fault, parse_faults


def _hang_forever() -> None:
    while True:
        threading.Event().wait(3600)


class FaultInjector:
    """The faults that apply to this process, asked by the loop once per step."""

    def __init__(
        self,
        faults: list[Fault],
        rank: int = 0,
        restart_count: int = 0,
        hang: Callable[[], None] = _hang_forever,
    ) -> None:
        self.rank = rank
        self.restart_count = restart_count
        self.faults = [
            f
            for f in faults
            if (f.rank is None or f.rank == rank)
            and (f.kind == "nan" or f.times is None or restart_count < f.times)
        ]
        self._hang = hang

    @classmethod
    def from_env(cls, rank: int = 0, environ: Mapping[str, str] | None = None) -> FaultInjector:
        """Faults from ``KUBETRAIN_FAULT_INJECT`` (none when unset); ValueError on bad text."""
        env = os.environ if environ is None else environ
        faults = parse_faults(env.get(Env.FAULT_INJECT, ""))
        # Every start counts: the operator's attempts and torchrun's in-place restarts.
        keys = (Env.RESTART_COUNT, Env.WORKER_RESTARTS)
        restart_count = sum(int(env.get(k, "0") or 0) for k in keys)
        return cls(faults, rank=rank, restart_count=restart_count)

    def __bool__(self) -> bool:
        return bool(self.faults)

    def loss_fault(self, step: int) -> bool:
        """Whether the loop must replace step ``step``'s loss with NaN."""
        return any(
            f.kind == "nan" and step >= f.step and (f.times is None or step < f.step + f.times)
            for f in self.faults
        )

    def maybe_fail(self, step: int) -> None:
        """Crash, exit or hang here if a fault is due at ``step``; otherwise return."""
        for f in self.faults:
            if f.step != step or f.kind in ("nan", "stall"):
                continue
            self._announce(f)
            if f.kind == "crash":
                os._exit(1)  # no cleanup on purpose: no finally, no flush, no termination message
            if f.kind == "exit":
                raise SystemExit(f.code)
            if f.kind == "hang":
                self._hang()

    def stall_commit(self, step: int) -> None:
        """Called by the upload worker before committing the checkpoint at `step`."""
        for f in self.faults:
            if f.kind == "stall" and f.step == step:
                self._announce(f)
                time.sleep(f.seconds)

    def _announce(self, fault: Fault) -> None:
        detail = {"exit": f" code {fault.code}", "stall": f" of {fault.seconds} s"}.get(
            fault.kind, ""
        )
        print(
            f"kubetrain: fault injection: {fault.kind}{detail} at step {fault.step} "
            f"(rank {self.rank}, restart {self.restart_count})",
            file=sys.stderr,
            flush=True,
        )
