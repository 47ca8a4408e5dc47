"""Tier-1 recovery: the in-process NaN / loss-spike guard (pure logic, floats in, verdicts out).

Per optimizer step the loop calls ``NanGuard.check(step, loss, grad_norm)``
before applying the update and acts on the verdict:

* ``OK``: apply the update.
* ``SKIP``: drop this update (zero the gradients), go on with the next step.
* ``RESTORE``: too many bad steps in a row; load the last good state, skip
  ``batches_to_skip()`` when replaying (batch content is a pure function of
  the step, so skipping is exact), optionally ``scale_lr`` to ``cfg.lr_scale_percent``.
* ``ABORT``: the restore budget is spent; exit with
  ``ExitCode.NAN_UNRECOVERABLE`` and let the operator roll back further.

A skipped step still consumes its step number (and batch): otherwise the
same bad batch would come back forever. The guard's counters must survive an
in-process restore (do not load the guard's state from the checkpoint you
restore to, or the budget would never run out); they are saved in checkpoints
so that a resumed process keeps its budget.

``HealthTracker`` decides when a checkpoint becomes good, i.e. a rollback
target: once ``good_after_steps`` healthy steps followed it.
"""

from __future__ import annotations

import math
from collections import deque
from enum import Enum
from typing import Any

from kubetrain_core.config.schema import RecoveryConfig


class Verdict(Enum):
    OK = "ok"
    SKIP = "skip"
    RESTORE = "restore"
    ABORT = "abort"


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def merge_ranges(steps: list[int], extra: int = 0) -> list[tuple[int, int]]:
    """Inclusive ranges covering ``steps``, each extended by ``extra`` steps after it."""
    ranges: list[tuple[int, int]] = []
    for step in sorted(set(steps)):
        end = step + extra
        if ranges and step <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], end))
        else:
            ranges.append((step, end))
    return ranges


def step_in_ranges(step: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= step <= hi for lo, hi in ranges)


class NanGuard:
    """Classifies each step's loss and gradient norm and keeps the skip/restore budget."""

    def __init__(self, cfg: RecoveryConfig) -> None:
        self.cfg = cfg
        self.consecutive_bad = 0
        self.restores = 0
        self.bad_steps: list[int] = []
        self.window: deque[float] = deque(maxlen=cfg.spike_window)  # healthy losses only
        self.last_reason: str | None = None

    def is_spike(self, loss: float) -> bool:
        """Whether ``loss`` lies more than ``spike_zscore`` std-devs above the recent mean.

        Only once the window is full: a short window's statistics flag the
        ordinary drops and bumps of early training.
        """
        z = self.cfg.spike_zscore
        if z is None or len(self.window) < self.cfg.spike_window:
            return False
        mean = math.fsum(self.window) / len(self.window)
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in self.window) / len(self.window))
        # A flat window has no spread to measure against; NaN/inf are caught anyway.
        return std > 0.0 and (loss - mean) / std > z

    def check(self, step: int, loss: float, grad_norm: float | None) -> Verdict:
        """The verdict on step ``step``; ``grad_norm`` is None when it was not computed."""
        if not self.cfg.enabled:
            return Verdict.OK
        if not _finite(loss):
            self.last_reason = f"non-finite loss {loss}"
        elif not _finite(grad_norm):
            self.last_reason = f"non-finite gradient norm {grad_norm}"
        elif self.is_spike(loss):
            self.last_reason = f"loss spike {loss:.4g} (z > {self.cfg.spike_zscore})"
        else:
            self.last_reason = None
            self.consecutive_bad = 0
            self.window.append(loss)
            return Verdict.OK

        self.bad_steps.append(step)
        self.consecutive_bad += 1
        if self.consecutive_bad <= self.cfg.max_consecutive_skips:
            return Verdict.SKIP
        self.consecutive_bad = 0
        self.restores += 1
        if self.restores > self.cfg.max_restores:
            return Verdict.ABORT
        return Verdict.RESTORE

    def batches_to_skip(self) -> list[tuple[int, int]]:
        """Inclusive step ranges whose batches a replay must skip: every bad step so far,
        each followed by ``cfg.skip_batches`` more (format with ``contract.format_step_ranges``)."""
        return merge_ranges(self.bad_steps, self.cfg.skip_batches)

    def state_dict(self) -> dict[str, Any]:
        return {
            "consecutive_bad": self.consecutive_bad,
            "restores": self.restores,
            "bad_steps": list(self.bad_steps),
            "window": list(self.window),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters from ``state_dict``; missing keys (older checkpoints) start fresh."""
        self.consecutive_bad = int(state.get("consecutive_bad", 0))
        self.restores = int(state.get("restores", 0))
        self.bad_steps = [int(s) for s in state.get("bad_steps", [])]
        window = (float(x) for x in state.get("window", []))
        self.window = deque(window, maxlen=self.cfg.spike_window)


class HealthTracker:
    """Promotes checkpoints to good once ``good_after_steps`` healthy steps followed them.

    Bad steps do not count (nor reset the count: a skipped bad batch says
    nothing against the weights saved before it). After an in-process restore
    to step ``g``, call ``discard_after(g)``: the pending checkpoints belong to
    the abandoned trajectory.
    """

    def __init__(self, good_after_steps: int) -> None:
        if good_after_steps < 0:
            raise ValueError(f"good_after_steps must be >= 0, got {good_after_steps}")
        self.good_after_steps = good_after_steps
        self.pending: dict[int, int] = {}  # checkpoint step -> healthy steps seen after it
        self.good: list[int] = []

    @property
    def last_good(self) -> int | None:
        return max(self.good) if self.good else None

    def is_good(self, step: int) -> bool:
        return step in self.good

    def mark_good(self, step: int) -> None:
        """Record a checkpoint already known to be good (e.g. the one a run resumed from)."""
        self.pending.pop(step, None)
        if step not in self.good:
            self.good.append(step)
            self.good.sort()

    def checkpoint_saved(self, step: int) -> list[int]:
        """Track a newly committed checkpoint; returns ``[step]`` if it is good at once (K = 0)."""
        if self.good_after_steps == 0:
            self.mark_good(step)
            return [step]
        if step not in self.good:
            self.pending[step] = 0
        return []

    def observe_healthy(self, step: int) -> list[int]:
        """Count healthy step ``step``; returns the checkpoints that just became good."""
        promoted = []
        for ckpt in sorted(self.pending):
            if step > ckpt:
                self.pending[ckpt] += 1
                if self.pending[ckpt] >= self.good_after_steps:
                    promoted.append(ckpt)
        for ckpt in promoted:
            self.mark_good(ckpt)
        return promoted

    def discard_after(self, step: int) -> None:
        """Forget pending checkpoints newer than ``step`` (the state rolled back to ``step``)."""
        self.pending = {s: n for s, n in self.pending.items() if s <= step}

    def state_dict(self) -> dict[str, Any]:
        # Pairs, not a dict: JSON (and YAML dumps of it) would turn the int keys into strings.
        return {"pending": sorted(self.pending.items()), "good": list(self.good)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = {int(s): int(n) for s, n in state.get("pending", [])}
        self.good = sorted(int(s) for s in state.get("good", []))
