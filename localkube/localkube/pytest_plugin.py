"""pytest fixtures for tests against a local cluster (`-p localkube.pytest_plugin`, or
`pytest_plugins` in the root conftest.py): one cluster per session, started when a test
first asks for it, a fresh namespace per test, and kubectl against the cluster.

Override the `localkube_images` fixture to say what your images are (images.py).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest

from localkube.cluster import Cluster, Kubectl, default_nodes
from localkube.images import Images

_KEPT_LOGS = pytest.StashKey[str]()
_STARTUP = pytest.StashKey[float]()
_NAMESPACE_READY_SECONDS = 30.0


@pytest.fixture(scope="session")
def localkube_images() -> Images:
    """What pods' images mean on this host; the default: nothing but the host itself."""
    return Images()


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, localkube_images: Images) -> Iterator[Cluster]:
    """One real cluster with 3 nodes, MinIO and Prometheus for the whole session."""
    instance = Cluster(default_nodes(3), images=localkube_images)
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
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base or 't'}-{secrets.token_hex(3)}"
    cluster.create_namespace(name, timeout=_NAMESPACE_READY_SECONDS)
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
