"""Which checkpoint an attempt starts from (pure: the store's newest claim and listing in,
a plan out). The manager loads the plan's candidates in order, newest first, and the
first that verifies on every rank is the resume point."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kubetrain_core.checkpoints.listing import CheckpointInfo
from kubetrain_trainer.checkpoint.lineage import Claim, Lineage

__all__ = ["NoUsableCheckpoint", "ResumePlan", "ResumeRequest", "plan_restore", "plan_resume"]

log = logging.getLogger(__name__)


class NoUsableCheckpoint(RuntimeError):
    """The lineage holds checkpoints, but none could be read and verified: the run is
    not started over next to them."""


@dataclass(frozen=True)
class ResumeRequest:
    """What this attempt was asked to do (env from the operator or `kubetrain run`)."""

    fresh: bool = False  # start a new timeline at step 0; the old one is kept
    rollback_before: int | None = None  # resume from the newest good checkpoint before this
    rollback_id: str | None = None  # the request's id: applied once, even across restarts


@dataclass(frozen=True)
class ResumePlan:
    candidates: list[CheckpointInfo]  # newest first
    present: list[tuple[int, int]] = field(default_factory=list)  # (step, term) in the lineage
    rolling_back: bool = False  # this attempt applies a rollback request
    rollback_id: str | None = None
    must_resume: bool = False  # the lineage holds checkpoints: never silently start over
    problems: list[str] = field(default_factory=list)

    def unusable(self, uri: str) -> NoUsableCheckpoint:
        """The error when every candidate failed (or there were only unreadable ones)."""
        tried = self.problems + [f"{c.uri}: failed to verify" for c in self.candidates]
        return NoUsableCheckpoint(
            f"{uri} holds checkpoints of this run, but none could be used: {'; '.join(tried)}. "
            "They are kept. To start over beside them set checkpoint.resume: false "
            "(kubetrain run --from-scratch)"
        )


def plan_resume(
    head: Claim | None, listed: list[CheckpointInfo], request: ResumeRequest
) -> ResumePlan:
    """The candidates of a starting attempt: none for a fresh start, the good ones before
    the step of a rollback request not applied yet, else every committed checkpoint of
    the newest claim's lineage."""
    lineage = head.lineage if head is not None else Lineage()
    visible = [i for i in listed if lineage.covers(i.step, i.term)]
    committed = [i for i in visible if i.committed]
    present = [(i.step, i.term) for i in visible if not i.torn]
    if request.fresh:
        if visible:
            log.info("new timeline; the %d checkpoints before it are kept", len(visible))
        return ResumePlan([], present)
    before, rollback_id = request.rollback_before, request.rollback_id
    applied = head.rollbacks if head is not None else ()
    if before is not None and (rollback_id is None or rollback_id not in applied):
        good = [c for c in committed if c.good and c.step < before]
        return ResumePlan(list(reversed(good)), present, True, rollback_id)
    problems = [f"{i.uri}: {i.problem}" for i in visible if i.problem]
    return ResumePlan(
        list(reversed(committed)),
        present,
        must_resume=bool(committed or problems),
        problems=problems,
    )


def plan_restore(committed: list[CheckpointInfo]) -> ResumePlan:
    """The candidates of an in-process restore: the lineage's good checkpoints, newest
    first, then the others."""
    good = [c for c in committed if c.good]
    rest = [c for c in committed if not c.good]
    return ResumePlan([*reversed(good), *reversed(rest)], [(c.step, c.term) for c in committed])
