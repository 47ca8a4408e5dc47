"""A real MinIO server on loopback, for tests that need S3 but no cluster.

Tests own their fixtures; this module starts and stops the server (services.py's
MinioServer) and gives the environment an S3 client process needs.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from localkube.binaries import binary
from localkube.services import MinioServer

__all__ = ["minio_binary", "new_bucket", "running_minio", "s3_env"]


def minio_binary() -> Path:
    """The minio binary (testbin cache, KUBEBUILDER_ASSETS or PATH); never a skip."""
    return binary("minio")


@contextmanager
def running_minio(workdir: Path) -> Iterator[MinioServer]:
    """`minio server` on 127.0.0.1 (free port, data in `workdir`), stopped on exit."""
    server = MinioServer(
        binary=minio_binary(),
        data_dir=workdir / "data",
        log_path=workdir / "minio.log",
        host="127.0.0.1",
        secret_key=secrets.token_hex(16),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def s3_env(server: MinioServer) -> dict[str, str]:
    """Environment for boto3's default credential chain, as a pod with a Secret gets it."""
    return {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        # Never fall through to the instance-metadata endpoint (off-host traffic).
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }


def new_bucket(server: MinioServer) -> str:
    """A fresh, empty bucket (one per test keeps tests independent)."""
    name = f"bucket-{secrets.token_hex(4)}"
    server.create_bucket(name)
    return name
