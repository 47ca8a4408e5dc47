"""A real MinIO on loopback, one per test module that asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localkube.s3 import running_minio
from localkube.services import MinioServer


@pytest.fixture(scope="module")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    with running_minio(tmp_path_factory.mktemp("minio")) as server:
        yield server
