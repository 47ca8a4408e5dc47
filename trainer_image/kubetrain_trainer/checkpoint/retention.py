"""Which checkpoints rotation may delete (pure: listings in, directories out).

Only what the writer owns is ever a candidate: the committed checkpoints of its
own lineage beyond the retention policy, and torn directories (no manifest) that
no live writer can still complete. Everything else is kept, whatever it costs in
storage: checkpoints that a rollback abandoned, manifests this trainer cannot read
(an unknown format, a transient 404, a failed signature), directories it does not
recognise. The newest committed and the newest good checkpoint are always kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import isfinite
from typing import Protocol

from kubetrain_core.config.base import lower_is_better

__all__ = ["doomed", "to_keep"]


class Listed(Protocol):
    """What retention needs to know of one checkpoint directory."""

    @property
    def step(self) -> int: ...
    @property
    def term(self) -> int: ...
    @property
    def committed(self) -> bool: ...
    @property
    def torn(self) -> bool: ...
    @property
    def good(self) -> bool: ...
    def metric(self, name: str) -> float | None: ...


def to_keep(
    committed: Sequence[Listed],
    keep_last: int,
    keep_best: int,
    best_metric: str,
    best_mode: str = "auto",
) -> set[tuple[int, int]]:
    """(step, term) of the committed checkpoints (sorted by step) to keep. The best are
    ranked by `best_metric` in its direction (`best_mode`, as lower_is_better reads it);
    a checkpoint without a finite value of it is kept or not by recency alone."""
    if not committed:
        return set()
    keep = {(c.step, c.term) for c in committed[-keep_last:]}
    keep.add((committed[-1].step, committed[-1].term))  # the newest, whatever keep_last says
    good = [c for c in committed if c.good]
    if good:
        keep.add((good[-1].step, good[-1].term))  # the rollback target of last resort
    if keep_best:
        sign = 1.0 if lower_is_better(best_metric, best_mode) else -1.0
        scored = [(c.metric(best_metric), -c.step, c.term) for c in committed]
        ranked = sorted((sign * m, s, t) for m, s, t in scored if m is not None and isfinite(m))
        keep.update((-s, t) for _, s, t in ranked[:keep_best])
    return keep


def doomed(
    listed: Sequence[Listed],
    visible: Sequence[Listed],
    *,
    term: int,
    keep_last: int,
    keep_best: int,
    best_metric: str,
    best_mode: str = "auto",
) -> list[tuple[int, int]]:
    """(step, term) of the directories that rotation by the writer of `term` deletes.

    `listed` is every checkpoint directory in the store, `visible` the committed ones
    of the writer's lineage (sorted by step)."""
    keep = to_keep(visible, keep_last, keep_best, best_metric, best_mode)
    victims = [(c.step, c.term) for c in visible if (c.step, c.term) not in keep]
    own = [c.step for c in visible if c.term == term]
    newest_own = max(own, default=-1)
    for c in listed:
        # A torn directory of an older term: its writer is fenced and cannot finish it.
        # One of this term: only if older than its newest commit (not the one in flight).
        if c.torn and (c.term < term or (c.term == term and c.step < newest_own)):
            victims.append((c.step, c.term))
    return sorted(set(victims))
