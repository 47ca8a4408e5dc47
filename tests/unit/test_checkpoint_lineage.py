"""Lineage and claims (pure): which checkpoints a term's history holds."""

from __future__ import annotations

import json

import pytest

from kubetrain_trainer.checkpoint.lineage import Claim, ClaimError, Lineage, Owner, Segment
from kubetrain_trainer.checkpoint.retention import doomed


def _lineage(*pairs: tuple[int, int]) -> Lineage:
    return Lineage(tuple(Segment(term, start) for term, start in pairs))


def test_a_segment_covers_its_term_from_its_start_to_the_next_start() -> None:
    lineage = _lineage((0, 0), (3, 30), (7, 50))
    assert lineage.covers(30, 0) and lineage.covers(10, 0)
    assert not lineage.covers(40, 0)  # term 0 after step 30: abandoned
    assert lineage.covers(40, 3) and lineage.covers(50, 3)
    assert not lineage.covers(60, 3)  # term 3 after term 7 took over (a late commit)
    assert lineage.covers(10_000, 7)
    assert not lineage.covers(40, 5)  # a term that is not in this history


def test_continuing_truncates_at_the_resumed_checkpoint() -> None:
    lineage = _lineage((0, 0), (3, 30), (7, 50))
    rolled_back = lineage.continued(8, (20, 0))
    assert rolled_back == _lineage((0, 0), (8, 20))
    assert not rolled_back.covers(30, 0) and not rolled_back.covers(40, 3)
    assert lineage.continued(8, (60, 7)) == _lineage((0, 0), (3, 30), (7, 50), (8, 60))
    assert lineage.continued(8, None) == _lineage((8, 0))
    with pytest.raises(ValueError, match="not visible"):
        lineage.continued(8, (40, 0))


def test_pruning_drops_only_leading_segments_that_hold_nothing() -> None:
    lineage = _lineage((0, 0), (3, 30), (7, 50))
    assert lineage.pruned([(40, 3), (60, 7)]) == _lineage((3, 30), (7, 50))
    # Term 3 holds nothing now, but dropping a middle segment would widen term 0's.
    assert lineage.pruned([(20, 0), (60, 7)]) == lineage
    assert lineage.pruned([]) == _lineage((7, 50))


def test_claims_round_trip_and_refuse_garbage() -> None:
    claim = Claim(
        7,
        Owner("ns", "job", "uid"),
        _lineage((0, 0), (7, 50)),
        attempt=3,
        resumed_from="step-00000050-t3",
        rollbacks=("uid/2",),
        time=12.5,
    )
    assert Claim.from_json(claim.to_json()) == claim
    for raw in (b"[", b"[]", b'{"format": 2}', b'{"format": 1, "term": -1}'):
        with pytest.raises(ClaimError):
            Claim.from_json(raw)
    data = json.loads(claim.to_json())
    data["lineage"] = [[0, "x"]]
    with pytest.raises(ClaimError):
        Claim.from_json(json.dumps(data).encode())


def test_a_successor_remembers_a_bounded_number_of_rollbacks() -> None:
    claim = Claim(0, Owner(), _lineage((0, 0)))
    for term in range(1, 30):
        claim = claim.successor(
            term, Owner(), None, attempt=term, resumed_from=None, rollback_id=f"r{term}"
        )
    assert len(claim.rollbacks) == 16 and claim.rollbacks[-1] == "r29"


def test_owners_of_other_jobs_conflict_and_a_recreated_job_does_not() -> None:
    job = Owner("ns", "bert", "uid-1")
    assert job.same_job(Owner("ns", "bert", "uid-2"))
    assert not job.same_job(Owner("ns", "gpt", "uid-1"))
    assert not job.same_job(Owner("other", "bert", "uid-1"))
    assert job.same_job(Owner())  # a bare `kubetrain train`


class _Listed:
    def __init__(
        self,
        step: int,
        term: int,
        *,
        committed: bool = True,
        torn: bool = False,
        good: bool = False,
    ) -> None:
        self.step, self.term, self.committed, self.torn, self.good = (
            step,
            term,
            committed,
            torn,
            good,
        )

    def metric(self, name: str) -> float | None:
        return None


def test_rotation_deletes_only_within_the_writers_lineage() -> None:
    visible = [_Listed(10, 0, good=True), _Listed(20, 1), _Listed(30, 1), _Listed(40, 1)]
    abandoned = _Listed(25, 0)  # committed, but a rollback left it
    unknown = _Listed(15, 1, committed=False)  # a manifest this reader cannot use
    torn_old = _Listed(50, 0, committed=False, torn=True)
    torn_in_flight = _Listed(50, 1, committed=False, torn=True)
    listed = [*visible, abandoned, unknown, torn_old, torn_in_flight]
    victims = doomed(listed, visible, term=1, keep_last=2, keep_best=0, best_metric="val_loss")
    assert victims == [(20, 1), (50, 0)]  # 10 is the newest good one
