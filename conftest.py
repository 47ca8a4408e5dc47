"""The root of the test tree (tests/ and localkube/tests/): one local cluster for the
whole session, whose pods run kubetrain from this checkout."""

from __future__ import annotations

import pytest

from localkube.images import Images

pytest_plugins = ["localkube.pytest_plugin"]


@pytest.fixture(scope="session")
def localkube_images() -> Images:
    from kubetrain_devcluster.project import images

    return images()
