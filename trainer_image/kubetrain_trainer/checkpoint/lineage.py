"""Terms and lineage: which checkpoints of a store belong to the run's history (pure).

Every attempt that trains (a process start, or an in-process restore) first claims
a new *term* in the store: the next integer, created only if absent (claims.py).
It writes its checkpoints into directories named by step and term, so two writers
never share a directory, and before every commit or delete it checks that no newer
term exists: an attempt that was replaced (a zombie on a partitioned node, a late
upload) is fenced out.

A claim also records the *lineage* of its term: the segments of history it continues,

    [(term 0, from step 0), (term 3, from step 30), (term 7, from step 50)]

meaning term 0's checkpoints up to step 30, then term 3's from 30 up to 50, then
term 7's from 50 on. A checkpoint is *visible* iff its term has a segment whose range
holds its step. Rolling back to step 30 is a new segment starting at 30: everything
newer on the old path becomes invisible without being touched, so nothing is ever
deleted to abandon a timeline, and a commit that lands late from a fenced term is
invisible as well (its term's range ended where the next term took over).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Claim", "ClaimError", "Lineage", "Owner", "Segment"]

# A claim keeps this many applied rollback requests: enough to recognise a retried
# request, small enough that claims stay tiny.
_ROLLBACK_MEMORY = 16
_MAX_SEGMENTS = 10_000


class ClaimError(ValueError):
    """A claim record that does not parse."""


@dataclass(frozen=True)
class Owner:
    """The job a store belongs to: namespace, name and (on a cluster) its UID."""

    namespace: str = ""
    name: str = ""
    uid: str = ""

    @property
    def anonymous(self) -> bool:
        """A bare `kubetrain train` with no job identity."""
        return not self.name

    def describe(self) -> str:
        if self.anonymous:
            return "an anonymous trainer"
        uid = f" (uid {self.uid})" if self.uid else ""
        return f"TrainingJob {self.namespace}/{self.name}{uid}"

    def same_job(self, other: Owner) -> bool:
        """Whether `other` may write this store: the same job, a re-created job of the
        same namespace and name (it continues an explicit URI on purpose), or a
        trainer without job identity."""
        if self.anonymous or other.anonymous:
            return True
        return (self.namespace, self.name) == (other.namespace, other.name)

    def to_dict(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    @classmethod
    def from_dict(cls, data: Any) -> Owner:
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k, ""), str) for k in ("namespace", "name", "uid")
        ):
            raise ClaimError(f"bad owner {data!r}")
        return cls(data.get("namespace", ""), data.get("name", ""), data.get("uid", ""))


@dataclass(frozen=True)
class Segment:
    """Term `term`'s checkpoints from step `start` up to where the next segment starts."""

    term: int
    start: int


@dataclass(frozen=True)
class Lineage:
    """The segments of history the current term continues, oldest first."""

    segments: tuple[Segment, ...] = ()

    def covers(self, step: int, term: int) -> bool:
        """Whether the checkpoint (step, term) belongs to this history."""
        for i, seg in enumerate(self.segments):
            end = self.segments[i + 1].start if i + 1 < len(self.segments) else None
            if seg.term == term and seg.start <= step and (end is None or step <= end):
                return True
        return False

    def continued(self, term: int, resume: tuple[int, int] | None) -> Lineage:
        """The lineage of a new `term` that resumes from checkpoint (step, term) `resume`
        (which must be visible here), or starts over from step 0 when it is None."""
        if resume is None:
            return Lineage((Segment(term, 0),))
        step, owner_term = resume
        if not self.covers(step, owner_term):
            raise ValueError(f"checkpoint at step {step} of term {owner_term} is not visible")
        # Each term has one segment; the ones after the resumed checkpoint's end here.
        keep = next(i for i, seg in enumerate(self.segments) if seg.term == owner_term)
        return Lineage((*self.segments[: keep + 1], Segment(term, step)))

    def pruned(self, present: Iterable[tuple[int, int]]) -> Lineage:
        """Drop leading segments that hold none of the `present` (step, term) checkpoints.
        Only from the front: dropping a middle segment would widen the one before it
        and bring back checkpoints that a rollback abandoned."""
        held = set(present)
        segments = self.segments
        while len(segments) > 1 and not any(
            term == segments[0].term and Lineage(segments).covers(step, term) for step, term in held
        ):
            segments = segments[1:]
        return Lineage(segments)

    def to_list(self) -> list[list[int]]:
        return [[seg.term, seg.start] for seg in self.segments]

    @classmethod
    def from_list(cls, data: Any) -> Lineage:
        if not isinstance(data, list) or len(data) > _MAX_SEGMENTS:
            raise ClaimError(f"bad lineage {str(data)[:200]}")
        segments = []
        for item in data:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item)
            ):
                raise ClaimError(f"bad lineage segment {item!r}")
            segments.append(Segment(item[0], item[1]))
        return cls(tuple(segments))


@dataclass(frozen=True)
class Claim:
    """One term's record in the store, written once when the term begins."""

    term: int
    owner: Owner
    lineage: Lineage
    attempt: int = 0  # the operator's attempt (KUBETRAIN_RESTART_COUNT)
    resumed_from: str | None = None  # the checkpoint directory it resumed from
    rollbacks: tuple[str, ...] = ()  # ids of the rollback requests applied so far
    time: float = field(default_factory=time.time)

    def successor(
        self,
        term: int,
        owner: Owner,
        resume: tuple[int, int] | None,
        *,
        attempt: int,
        resumed_from: str | None,
        rollback_id: str | None = None,
        present: Iterable[tuple[int, int]] = (),
    ) -> Claim:
        """The claim of a new term that continues this one from `resume`."""
        rollbacks = self.rollbacks + ((rollback_id,) if rollback_id else ())
        lineage = self.lineage.continued(term, resume)
        return Claim(
            term,
            owner,
            lineage.pruned([*present, *([resume] if resume else [])]),
            attempt,
            resumed_from,
            rollbacks[-_ROLLBACK_MEMORY:],
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": 1,
                "term": self.term,
                "owner": self.owner.to_dict(),
                "attempt": self.attempt,
                "time": self.time,
                "resumed_from": self.resumed_from,
                "lineage": self.lineage.to_list(),
                "rollbacks": list(self.rollbacks),
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Claim:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise ClaimError(f"claim is not JSON: {error}") from None
        if not isinstance(data, dict) or data.get("format") != 1:
            raise ClaimError("claim is not a format-1 object")
        term, attempt, stamp = data.get("term"), data.get("attempt", 0), data.get("time", 0)
        resumed, rollbacks = data.get("resumed_from"), data.get("rollbacks", [])
        if not isinstance(term, int) or term < 0 or not isinstance(attempt, int):
            raise ClaimError(f"bad term/attempt in claim: {term!r}, {attempt!r}")
        if not isinstance(stamp, int | float) or not (resumed is None or isinstance(resumed, str)):
            raise ClaimError("bad time or resumed_from in claim")
        if not isinstance(rollbacks, list) or not all(isinstance(r, str) for r in rollbacks):
            raise ClaimError(f"bad rollbacks in claim: {rollbacks!r}")
        return cls(
            term,
            Owner.from_dict(data.get("owner")),
            Lineage.from_list(data.get("lineage")),
            attempt,
            resumed,
            tuple(rollbacks[-_ROLLBACK_MEMORY:]),
            float(stamp),
        )
