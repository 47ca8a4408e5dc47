"""The operator e2e fixture: the operator from source under its own ServiceAccount,
one per test module (modules that install it with Helm start their own)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kubetrain_devcluster.operator import OperatorProcess
    from localkube.cluster import Cluster


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    from kubetrain_devcluster.operator import OperatorProcess, install

    install(cluster)
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"))
    op.write_kubeconfig()
    op.start()
    yield op
    op.kill()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's table (tests/e2e/chaos.py), when scenarios ran."""
    from tests.e2e import chaos

    if chaos.ROWS:
        terminalreporter.section("chaos: one row per scenario")
        for line in chaos.table():
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"written to {chaos.REPORT}")
