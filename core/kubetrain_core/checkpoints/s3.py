"""S3 (and MinIO) as checkpoint storage: boto3 with retries, multipart transfers in
parallel through one transfer manager per storage (files moved from many threads share
its request threads), batched deletes, and conditional
writes (IfNoneMatch) for claims."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetrain_core.checkpoints.storage import TMP_PREFIX, Storage, check_key, dir_prefix

# Transient S3 errors (throttling, 5xx, dropped connections) are retried by botocore's
# "standard" mode with exponential backoff and jitter.
_S3_MAX_ATTEMPTS = 8
_S3_CONNECT_TIMEOUT_S = 10
_S3_READ_TIMEOUT_S = 120

# Transfers (benchmarks/s3_throughput.py, docs/benchmarks.md). Parts of 16 MiB: a
# 100 MB shard goes up and down as 7 parallel parts (at 64 MiB, as 2: one file kept
# 2 threads busy), with half the requests of boto3's 8 MiB; s3transfer raises the part
# size for files that would need more than 10,000 parts. Files above the threshold
# are multipart. 10 parts in flight per storage, boto3's default, whatever the number
# of files. Downloads read the body 512 KiB at a time (boto3: 256 KiB), half the
# Python work per byte (1 MiB buffers made the kernel's page work grow round after
# round on the benchmark's VM); at most 64 such chunks wait for the disk.
_MULTIPART_THRESHOLD = 16 * 1024 * 1024
_MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
_MAX_CONCURRENCY = 10
_IO_CHUNKSIZE = 512 * 1024
_MAX_IO_QUEUE = 64
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


class S3Storage(Storage):
    """A prefix in an S3 bucket (AWS or S3-compatible, e.g. MinIO).

    Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
    a profile, an instance role); `endpoint` None means $AWS_ENDPOINT_URL_S3,
    $AWS_ENDPOINT_URL or AWS itself.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
        *,
        multipart_threshold: int = _MULTIPART_THRESHOLD,
        multipart_chunksize: int = _MULTIPART_CHUNKSIZE,
        max_concurrency: int = _MAX_CONCURRENCY,
        max_attempts: int = _S3_MAX_ATTEMPTS,
    ) -> None:
        # boto3 is imported here so that local-only runs never pay for it.
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # boto3 reads these too; resolved here so path-style addressing follows them.
        self.endpoint = (
            endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=_S3_CONNECT_TIMEOUT_S,
            read_timeout=_S3_READ_TIMEOUT_S,
            # Every part in flight holds a connection, and listings or claims may run beside.
            max_pool_connections=max_concurrency + 2,
            # Custom endpoints (MinIO, in-cluster services) rarely have wildcard DNS.
            s3={"addressing_style": "path" if self.endpoint else "auto"},
        )
        # region None: boto3 takes AWS_REGION / AWS_DEFAULT_REGION, else us-east-1.
        # A session of its own: boto3's default one caches the credentials it first
        # resolved for the whole process, so a storage for another endpoint or
        # account would sign with stale keys.
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=region, config=config
        )
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
            io_chunksize=_IO_CHUNKSIZE,
            max_io_queue=_MAX_IO_QUEUE,
        )
        self._lock = threading.Lock()
        self._manager: Any = None  # made by the first file transfer
        self._manager_pid = 0

    def __repr__(self) -> str:
        return f"S3Storage({self.root_uri!r}, endpoint={self.endpoint!r})"

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _full_prefix(self, prefix: str) -> str:
        prefix = dir_prefix(prefix)
        return f"{self.prefix}/{prefix}" if self.prefix else prefix

    @staticmethod
    def _is_missing(error: Exception) -> bool:
        return _error_code(error) in ("404", "NoSuchKey", "NotFound")

    def _submit(self, submit: Callable[[Any], Any]) -> None:
        """Run one transfer on the storage's transfer manager and wait for it. Files
        moved from several threads at once share its `max_concurrency` request threads
        (boto3's upload_file would make a manager, and as many threads, per call)."""
        with self._lock:  # s3transfer's submit is not documented as thread-safe
            if self._manager is None or self._manager_pid != os.getpid():
                # Made once per process: a forked child has none of the parent's threads.
                from boto3.s3.transfer import create_transfer_manager

                self._manager = create_transfer_manager(self.client, self.transfer)
                self._manager_pid = os.getpid()
            future = submit(self._manager)
        try:
            future.result()
        except BaseException:
            future.cancel()  # an interrupted caller leaves no parts in flight
            raise

    def put_file(self, key: str, path: Path) -> None:
        self._submit(lambda tm: tm.upload(str(path), self.bucket, self._key(key)))

    def get_file(self, key: str, path: Path) -> None:
        # Into a temp sibling, renamed once whole: s3transfer writes the parts at their
        # offsets as they come. The caller hashes the file afterwards (Storage's
        # get_file_sha256): measured faster on 2 cores than hashing while the parts land.
        from botocore.exceptions import ClientError

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        try:
            self._submit(lambda tm: tm.download(self.bucket, self._key(key), str(tmp)))
            tmp.replace(path)
        except ClientError as error:
            if self._is_missing(error):
                raise FileNotFoundError(self.uri(key)) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        # S3 conditional writes (If-None-Match: *), which AWS S3 and MinIO honour.
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
            )
        except ClientError as error:
            if _error_code(error) in ("PreconditionFailed", "412"):
                return False
            raise  # e.g. 409 ConditionalRequestConflict: a concurrent write, retried
        return True

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if self._is_missing(error):
                raise FileNotFoundError(self.uri(key)) from None
            raise
        body: bytes = response["Body"].read()
        return body

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if self._is_missing(error):
                return False
            raise
        return True

    def _strip(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def list_keys(self, prefix: str = "") -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._full_prefix(prefix)):
            keys.extend(self._strip(item["Key"]) for item in page.get("Contents", []))
        return sorted(keys)

    def versions(self, prefix: str = "") -> dict[str, str]:
        paginator = self.client.get_paginator("list_objects_v2")
        found: dict[str, str] = {}
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._full_prefix(prefix)):
            for item in page.get("Contents", []):
                found[self._strip(item["Key"])] = f"{item['ETag']}-{item['Size']}"
        return found

    def version(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if self._is_missing(error):
                return None
            raise
        return f"{head['ETag']}-{head['ContentLength']}"

    def list_dirs(self, prefix: str = "") -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._full_prefix(prefix)
        names: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.append(common["Prefix"][len(full) :].rstrip("/"))
        return sorted(names)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def incomplete_uploads(self) -> list[tuple[str, str]]:
        # Filtered here, not with Prefix: MinIO matches Prefix against whole keys only.
        paginator = self.client.get_paginator("list_multipart_uploads")
        root = self._full_prefix("")
        found = []
        for page in paginator.paginate(Bucket=self.bucket):
            for upload in page.get("Uploads", []):
                if upload["Key"].startswith(root):
                    found.append((self._strip(upload["Key"]), upload["UploadId"]))
        return sorted(found)

    def abort_upload(self, key: str, upload_id: str) -> None:
        self.client.abort_multipart_upload(
            Bucket=self.bucket, Key=self._key(key), UploadId=upload_id
        )

    def delete_prefix(self, prefix: str) -> None:
        if not dir_prefix(prefix):
            raise ValueError("refusing to delete the whole storage root")
        keys = [self._key(k) for k in self.list_keys(prefix)]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            response = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                raise OSError(
                    f"deleting {self.uri(prefix)} failed for {len(errors)} keys: {errors[0]}"
                )


def _error_code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
