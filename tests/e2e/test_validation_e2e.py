"""The API server's side of tests/cases/validation.py: the CRD's schema and CEL rules,
run by a real kube-apiserver (`kubectl apply --dry-run=server`), give the verdict the
pydantic models give (tests/unit/test_validation_cases.py) on every case."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from tests.cases.validation import CASES, Case

if TYPE_CHECKING:
    from localkube.cluster import Cluster

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Cluster:
    from kubetrain_devcluster.operator import install

    install(cluster)
    return cluster


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_api_server_agrees_with_the_case(
    installed: Cluster, namespace: str, case: Case
) -> None:
    result = installed.kubectl(
        "-n", namespace, "apply", "--dry-run=server", "-f", "-",
        input_text=json.dumps(case.job()), check=False,
    )  # fmt: skip
    if case.says is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0, f"{case.id} was admitted"
        assert case.says in result.stderr, result.stderr
