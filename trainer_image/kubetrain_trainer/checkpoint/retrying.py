"""A Storage whose every call is retried with backoff: outages are waited out, answers
(a missing key, an invalid name) are not."""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kubetrain_core.checkpoints.storage import Storage

__all__ = ["RetryingStorage"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class RetryingStorage(Storage):
    """A Storage whose every call is retried with exponential backoff.

    FileNotFoundError and ValueError are answers, not outages: they pass through.
    With the defaults a call is tried 5 times over about a minute (2+4+8+16+30 s waits
    are capped by `max_delay`).
    """

    def __init__(
        self,
        inner: Storage,
        *,
        attempts: int = 5,
        base_delay: float = 2.0,
        max_delay: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"RetryingStorage({self.inner!r})"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except (FileNotFoundError, ValueError):
                raise
            except Exception as error:
                if attempt == self.attempts:
                    raise
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                log.warning(
                    "%s on %s failed (attempt %d/%d), retrying in %.1fs: %s",
                    what,
                    self.inner.root_uri,
                    attempt,
                    self.attempts,
                    delay,
                    error,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")

    @property
    def root_uri(self) -> str:
        return self.inner.root_uri

    def uri(self, key: str = "") -> str:
        return self.inner.uri(key)

    def put_file(self, key: str, path: Path) -> None:
        self._call(f"upload of {key}", lambda: self.inner.put_file(key, path))

    def get_file(self, key: str, path: Path) -> None:
        self._call(f"download of {key}", lambda: self.inner.get_file(key, path))

    def get_file_sha256(self, key: str, path: Path) -> str:
        return self._call(f"download of {key}", lambda: self.inner.get_file_sha256(key, path))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(f"write of {key}", lambda: self.inner.put_bytes(key, data))

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        return self._call(f"create of {key}", lambda: self.inner.put_bytes_if_absent(key, data))

    def get_bytes(self, key: str) -> bytes:
        return self._call(f"read of {key}", lambda: self.inner.get_bytes(key))

    def exists(self, key: str) -> bool:
        return self._call(f"lookup of {key}", lambda: self.inner.exists(key))

    def list_keys(self, prefix: str = "") -> builtins.list[str]:
        return self._call(f"listing of {prefix!r}", lambda: self.inner.list_keys(prefix))

    def versions(self, prefix: str = "") -> dict[str, str]:
        return self._call(f"listing of {prefix!r}", lambda: self.inner.versions(prefix))

    def version(self, key: str) -> str | None:
        return self._call(f"lookup of {key}", lambda: self.inner.version(key))

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        return self._call(f"listing of {prefix!r}", lambda: self.inner.list_dirs(prefix))

    def delete(self, key: str) -> None:
        self._call(f"delete of {key}", lambda: self.inner.delete(key))

    def delete_prefix(self, prefix: str) -> None:
        self._call(f"delete of {prefix}/", lambda: self.inner.delete_prefix(prefix))

    def incomplete_uploads(self) -> builtins.list[tuple[str, str]]:
        return self._call("listing of uploads", self.inner.incomplete_uploads)

    def abort_upload(self, key: str, upload_id: str) -> None:
        self._call(f"abort of {key}", lambda: self.inner.abort_upload(key, upload_id))
