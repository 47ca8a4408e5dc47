"""The Python side of tests/cases/validation.py: the pydantic models' verdicts (the
e2e test checks the API server's on the same cases)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tests.cases.validation import CASES, Case

from kubetrain_core import crd
from kubetrain_core.api import TrainingJob
from kubetrain_core.cel import KEY


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_models_agree_with_the_case(case: Case) -> None:
    if case.says is None:
        TrainingJob.model_validate(case.job())
        return
    with pytest.raises(ValidationError) as refused:
        TrainingJob.model_validate(case.job())
    assert case.says in str(refused.value)


def _messages(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [r.get("messageExpression", r["message"]) for r in node.get(KEY, [])]
        return own + [m for v in node.values() for m in _messages(v)]
    if isinstance(node, list):
        return [m for v in node for m in _messages(v)]
    return []


def test_every_cel_rule_of_the_spec_has_a_case() -> None:
    """A rule nobody tests could disagree with its validator unnoticed."""
    said = [c.says for c in CASES if c.says]
    rules = _messages(crd.root_schema())
    untested = [m for m in rules if "immutable" not in m and not any(s in m for s in said)]
    # Bounds of int-or-string fields are generated, not written: pydantic's own types.
    assert [m for m in untested if not m.startswith("must be an integer")] == []
