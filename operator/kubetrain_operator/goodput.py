"""Goodput: the share of wall time spent on training steps that were kept.

The operator sees the step only when it reads rank 0's /progress, so the time
between two readings is split evenly over the steps made in between. Steps at
or below the highest step ever reached are being redone after a restart and
count as lost, as do scheduling, resuming and backoff (no new steps at all).
Pure arithmetic: reconcile keeps the running totals in status.recovery.
"""

from __future__ import annotations


def productive_seconds(prev_step: int, step: int, highest: int, elapsed: float) -> float:
    """The part of `elapsed` (prev_step -> step) spent on steps beyond `highest`."""
    if step <= prev_step or elapsed <= 0:
        return 0.0
    kept = step - max(prev_step, highest)
    return elapsed * max(kept, 0) / (step - prev_step)


def percent(productive: float, wall: float) -> float | None:
    """Productive over wall time, in percent (None before any wall time has passed)."""
    if wall <= 0:
        return None
    return round(min(100.0, 100.0 * productive / wall), 1)
