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
    """Environment variables set by the operator (or `kubetrain run`) for the trainer: the
    attempt's facts. The trainer config itself reaches the pods only as a file."""

    JOB_NAME = "KUBETRAIN_JOB_NAME"
    NAMESPACE = "KUBETRAIN_NAMESPACE"
    JOB_UID = "KUBETRAIN_JOB_UID"  # with the name: whose checkpoint store this is
    CHECKPOINT_KEY = "KUBETRAIN_CHECKPOINT_KEY"  # HMAC key for manifests (from a Secret)
    RESTART_COUNT = "KUBETRAIN_RESTART_COUNT"  # the attempt number
    ROLLBACK_BEFORE = "KUBETRAIN_ROLLBACK_BEFORE"  # resume from a good checkpoint before it
    ROLLBACK_ID = "KUBETRAIN_ROLLBACK_ID"  # the rollback request's id: applied once
    SKIP_BATCHES = "KUBETRAIN_SKIP_BATCHES"  # step ranges whose batches are skipped: "40-45,80-81"
    LR_SCALE = "KUBETRAIN_LR_SCALE"  # multiplies the scheduled LR (rollback recipes)
    RUN_DIR = "KUBETRAIN_RUN_DIR"  # overrides run_dir: each worker pod has its own
    FAULT_INJECT = "KUBETRAIN_FAULT_INJECT"  # e.g. "nan@step=30", "crash@step=20"
    TERMINATION_LOG = "KUBETRAIN_TERMINATION_LOG"  # default /dev/termination-log
    # Set by torchrun, not by us: how often the workers were restarted in place.
    WORKER_RESTARTS = "TORCHELASTIC_RESTART_COUNT"


DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# What a trainer may say, and the bounds of what is kept of it: the operator copies these
# values into status, whose schema (and the API server) would refuse anything larger.
REASONS = frozenset(
    {"Succeeded", "ConfigInvalid", "NaNUnrecoverable", "Error", "Preempted", "Fenced"}
)
MAX_STEP = 10**12
MAX_MESSAGE_CHARS = 4096
MAX_SKIP_CHARS = 4000  # status.recovery.skipBatches holds 4096


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def bounded_step(value: object) -> int | None:
    """A step count from an untrusted source: an int in [0, MAX_STEP], else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STEP:
        return None
    return value


def _text(value: object, limit: int) -> str | None:
    return value if isinstance(value, str) and len(value) <= limit else None


def _ranges(value: object) -> str | None:
    if not isinstance(value, str) or len(value) > MAX_MESSAGE_CHARS:
        return None
    try:
        ranges = parse_step_ranges(value)
    except ValueError:
        return None
    if any(hi > MAX_STEP for _, hi in ranges):
        return None
    return format_step_ranges(merge_step_ranges(ranges))


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
        """Read what a trainer wrote, trusting nothing: None unless it is a JSON object;
        an unknown or mistyped reason reads as Error, other mistyped, oversized or out of
        range fields as absent."""
        try:
            data = json.loads(text[:MAX_MESSAGE_CHARS], parse_constant=_no_constant)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        reason = data.get("reason")
        message = data.get("message")
        return cls(
            reason=reason if isinstance(reason, str) and reason in REASONS else "Error",
            message=message[:MAX_MESSAGE_CHARS] if isinstance(message, str) else "",
            step=bounded_step(data.get("step")),
            resumed_from=_text(data.get("resumed_from"), 2048),
            restored_step=bounded_step(data.get("restored_step")),
            skip_batches=_ranges(data.get("skip_batches")),
        )

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


def merge_step_ranges(
    ranges: list[tuple[int, int]], max_chars: int = MAX_SKIP_CHARS
) -> list[tuple[int, int]]:
    """Sorted, with overlapping and adjacent ranges joined; while the text would exceed
    `max_chars`, the two closest ranges are joined too (skipping the few good batches
    between them: more skipping is safe, a status the API server refuses is not)."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    while len(merged) > 1 and len(format_step_ranges(merged)) > max_chars:
        gaps = [merged[i + 1][0] - merged[i][1] for i in range(len(merged) - 1)]
        i = gaps.index(min(gaps))
        merged[i : i + 2] = [(merged[i][0], merged[i + 1][1])]
    return merged


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
