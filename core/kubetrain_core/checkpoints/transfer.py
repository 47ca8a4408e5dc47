"""Moving a checkpoint's files concurrently, each one hashed beside the others' transfers.

A checkpoint is a few large shard files and several small ones. One at a time, a
transfer waits on the previous file's last part and the sha256 of every file is a
second pass before (upload) or after (download) all of them. Here every file is in
flight at once, up to `WORKERS` of them: an upload hashes the local file on a thread of
its own while the storage sends it (`upload_files`); a download hashes each file as soon
as it is whole, while the others still arrive (`Storage.get_file_sha256`, run by
listing.download through `run_all`). The storage bounds its own requests (S3Storage:
one transfer manager per storage, `max_concurrency` parts in flight whatever the number
of files).

Safety is what the serial version had: the manifest describes the local bytes (a
file whose size, mtime or inode changed between its hash and the end of its upload
fails the save; any other mismatch is still caught by the sha256 check of every
download), every file is verified once it is whole, and the first error fails the whole
transfer once the files already in flight have ended (none is left writing behind
the caller's back); files not yet started are skipped. Retries stay the storage's
(RetryingStorage, per file), so they stay bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import TypeVar

from kubetrain_core.checkpoints.manifest import FileEntry, sha256_file
from kubetrain_core.checkpoints.storage import Storage

__all__ = ["WORKERS", "run_all", "upload_files"]

log = logging.getLogger(__name__)

# Files (and their hashes) in flight at once; the storage bounds the requests beneath.
WORKERS = 8

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def run_all(jobs: Sequence[tuple[K, Callable[[], T]]], workers: int = WORKERS) -> dict[K, T]:
    """Run every job on up to `workers` threads and return their results by key.

    The first job to fail (in completion order) is re-raised once every job already
    running has ended; jobs not yet started never start. Any other failures are logged.
    """
    if workers <= 1 or len(jobs) <= 1:
        return {key: job() for key, job in jobs}
    pool = ThreadPoolExecutor(min(workers, len(jobs)), thread_name_prefix="kubetrain-transfer")
    futures: dict[Future[T], K] = {}
    try:
        futures = {pool.submit(job): key for key, job in jobs}
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            pool.shutdown(wait=True, cancel_futures=True)
            first = failed[0].exception()
            for other in futures:
                error = None if other.cancelled() else other.exception()
                if error is not None and error is not first:
                    log.warning("also failed: %s: %r", futures[other], error)
            assert first is not None
            raise first
        return {key: future.result() for future, key in futures.items()}
    finally:
        # Also on KeyboardInterrupt in the caller: nothing new starts, the rest ends.
        pool.shutdown(wait=True, cancel_futures=True)


def _state(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino)


def upload_files(
    storage: Storage,
    directory: str,
    local: dict[str, Path],
    rank: int,
    workers: int = WORKERS,
) -> dict[str, FileEntry]:
    """Upload `local` (name -> path) under `directory` concurrently and return the
    manifest entries of what was uploaded: each file's sha256 is computed from the
    local copy while it uploads, and a file whose size, mtime or inode changed between
    the hash and the end of its upload fails the whole upload (OSError)."""
    before = {name: _state(path) for name, path in local.items()}
    jobs: list[tuple[tuple[str, str], Callable[[], object]]] = []
    # Largest first: the long transfers start at once, small files fill in around them.
    for name in sorted(local, key=lambda n: (-before[n][0], n)):
        path = local[name]
        jobs.append((("put", name), partial(storage.put_file, f"{directory}/{name}", path)))
        jobs.append((("hash", name), partial(sha256_file, path)))
    results = run_all(jobs, workers)
    entries: dict[str, FileEntry] = {}
    for name, path in local.items():
        if _state(path) != before[name]:
            raise OSError(f"{path} changed while it was uploaded as {directory}/{name}")
        digest = results[("hash", name)]
        assert isinstance(digest, str)
        entries[name] = FileEntry(digest, before[name][0], rank)
    return entries
