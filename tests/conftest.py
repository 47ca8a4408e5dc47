"""Fixtures shared by all tests: the local cluster (started lazily, once per session),
a fresh namespace per test, and kubectl against that cluster.

The harness is imported inside the fixtures, so unit tests run without its
dependencies and without root.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.harness.cluster import Cluster, Kubectl

_KEPT_LOGS = pytest.StashKey[str]()
_STARTUP = pytest.StashKey[float]()
_NAMESPACE_READY_SECONDS = 30.0


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """One real cluster with 3 nodes, MinIO and Prometheus for the whole session."""
    from tests.harness.cluster import Cluster, default_nodes

    instance = Cluster(default_nodes(3))
    instance.start()  # raises (never skips) when not root: e2e tests must not pass silently
    if instance.startup_seconds is not None:
        request.config.stash[_STARTUP] = instance.startup_seconds
    yield instance
    kept = instance.stop(keep_logs=request.session.testsfailed > 0)
    if kept is not None:
        request.config.stash[_KEPT_LOGS] = str(kept)


@pytest.fixture
def kubectl(cluster: Cluster) -> Kubectl:
    """Run the real kubectl with the cluster's admin kubeconfig: kubectl("get", "pods", ...)."""
    return cluster.kubectl


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace, ready for pods (default service account and root CA present)."""
    from tests.harness.services import wait_until

    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base or 't'}-{secrets.token_hex(3)}"
    status, body = cluster.api.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    if status != 201:
        raise RuntimeError(f"creating namespace {name} failed ({status}): {body}")

    def ready() -> bool:
        sa, _ = cluster.api.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
        ca, _ = cluster.api.request("GET", f"/api/v1/namespaces/{name}/configmaps/kube-root-ca.crt")
        return sa == 200 and ca == 200

    wait_until(ready, timeout=_NAMESPACE_READY_SECONDS, what=f"namespace {name} to be ready")
    yield name
    # Not waiting for the namespace to go away: its pods die in the background.
    cluster.api.request("DELETE", f"/api/v1/namespaces/{name}")


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    if _STARTUP in config.stash:
        terminalreporter.write_line(f"local cluster start-up: {config.stash[_STARTUP]:.1f} s")
    if _KEPT_LOGS in config.stash:
        terminalreporter.write_line(
            f"a test failed: local cluster logs kept in {config.stash[_KEPT_LOGS]}", red=True
        )
