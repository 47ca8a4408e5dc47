"""The operator/trainer contract (docs/contract.md): exit codes, env, termination message.

Shared by the operator, the local runner and the trainer; imports no torch.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Trainer exit codes the operator and `kubetrain run` act on."""

    SUCCEEDED = 0
    RETRYABLE = 1  # anything not listed here is retryable too (Error, Fenced)
    CONFIG_INVALID = 64  # never retried: the job fails with the trainer's message
    NAN_UNRECOVERABLE = 65  # tier-1 budget spent: roll back to an older checkpoint
    PREEMPTED = 143  # SIGTERM: saved a checkpoint (when time allowed) and stopped; retryable


class Env:
    """Environment variables set by the operator (or `kubetrain run`) for the trainer."""

    JOB_NAME = "KUBETRAIN_JOB_NAME"
    NAMESPACE = "KUBETRAIN_NAMESPACE"
    JOB_UID = "KUBETRAIN_JOB_UID"  # with the name: whose checkpoint store this is
    CHECKPOINT_URI = "KUBETRAIN_CHECKPOINT_URI"  # overrides checkpoint.uri
    CHECKPOINT_KEY = "KUBETRAIN_CHECKPOINT_KEY"  # HMAC key for manifests (from a Secret)
    RESTART_COUNT = "KUBETRAIN_RESTART_COUNT"  # the attempt number
    ROLLBACK_BEFORE = "KUBETRAIN_ROLLBACK_BEFORE"  # resume from a good checkpoint before it
    ROLLBACK_ID = "KUBETRAIN_ROLLBACK_ID"  # the rollback request's id: applied once
    SKIP_BATCHES = "KUBETRAIN_SKIP_BATCHES"  # step ranges whose batches are skipped: "40-45,80-81"
    LR_SCALE = "KUBETRAIN_LR_SCALE"  # multiplies the scheduled LR (rollback recipes)
    METRICS_PORT = "KUBETRAIN_METRICS_PORT"  # overrides metrics.port
    RUN_DIR = "KUBETRAIN_RUN_DIR"  # overrides run_dir
    FAULT_INJECT = "KUBETRAIN_FAULT_INJECT"  # e.g. "nan@step=30", "crash@step=20"
    TERMINATION_LOG = "KUBETRAIN_TERMINATION_LOG"  # default /dev/termination-log


DEFAULT_TERMINATION_LOG = "/dev/termination-log"


@dataclass
class TerminationMessage:
    """JSON the trainer writes to the termination log before a non-zero exit."""

    reason: str  # Succeeded | ConfigInvalid | NaNUnrecoverable | Error | Preempted | Fenced
    message: str
    step: int | None = None
    resumed_from: str | None = None  # the checkpoint this attempt started from; null: step 0
    restored_step: int | None = None  # step of the checkpoint it last loaded; null: none
    skip_batches: str | None = None  # step ranges whose batches produced NaN: "40-45,80"

    def to_json(self) -> str:
        # Kubernetes keeps at most 4096 bytes of a termination message.
        text = json.dumps(asdict(self))
        if len(text) > 4000:
            self.message = self.message[: 4000 - len(text) + len(self.message) - 3] + "..."
            text = json.dumps(asdict(self))
        return text

    @classmethod
    def from_json(cls, text: str) -> TerminationMessage | None:
        try:
            data = json.loads(text)
            return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            return None

    def write(self, path: str | Path) -> None:
        # No termination log outside a pod (e.g. not writable): the exit code still tells.
        with contextlib.suppress(OSError):
            Path(path).write_text(self.to_json())


def parse_step_ranges(text: str) -> list[tuple[int, int]]:
    """Parse "40-45,80" into inclusive ranges [(40, 45), (80, 80)]."""
    ranges = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        start, end = int(lo), int(hi or lo)
        if end < start:
            raise ValueError(f"{Env.SKIP_BATCHES}: range {part!r} ends before it starts")
        ranges.append((start, end))
    return ranges


def format_step_ranges(ranges: list[tuple[int, int]]) -> str:
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


@dataclass(frozen=True)
class Fault:
    """A fault the trainer injects on purpose (KUBETRAIN_FAULT_INJECT), for recovery tests."""

    kind: str  # nan | crash | hang | exit | stall
    step: int
    times: int | None = None  # nan: how many consecutive steps; None = every step from `step` on
    rank: int | None = None  # only on this global rank (default: all)
    code: int = 1  # exit: the exit code
    seconds: int = 60  # stall: how long the commit of the checkpoint at `step` waits


_FAULT = re.compile(r"^(nan|crash|hang|exit|stall)@step=(\d+)((?:,[a-z]+=\d+)*)$")
_OPTIONS = {"times", "rank", "code", "seconds"}


def parse_faults(text: str) -> list[Fault]:
    """Parse "nan@step=30,times=2;crash@step=50,rank=1;stall@step=20,seconds=90" into Faults."""
    faults = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        m = _FAULT.match(item)
        if not m:
            raise ValueError(
                f"{Env.FAULT_INJECT}: cannot parse {item!r}; expected KIND@step=N[,times=N]"
                "[,rank=N][,code=N][,seconds=N] with KIND one of nan, crash, hang, exit, stall"
            )
        opts = dict(kv.split("=") for kv in m.group(3).split(",") if kv)
        unknown = set(opts) - _OPTIONS
        if unknown:
            raise ValueError(f"{Env.FAULT_INJECT}: unknown option(s) {sorted(unknown)} in {item!r}")
        faults.append(
            Fault(
                kind=m.group(1),
                step=int(m.group(2)),
                times=int(opts["times"]) if "times" in opts else None,
                rank=int(opts["rank"]) if "rank" in opts else None,
                code=int(opts.get("code", 1)),
                seconds=int(opts.get("seconds", 60)),
            )
        )
    return faults
