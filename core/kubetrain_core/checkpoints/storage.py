"""Where checkpoint bytes live: a local directory or an S3 prefix, behind one small interface.

Keys are relative, '/'-separated paths under the storage root ("step-00000120/manifest.json").
The checkpoint protocol (manifest written last) lives in manager.py; this module only moves
bytes and never decides what a checkpoint is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlparse

from kubetrain_core.checkpoints.manifest import sha256_file

if TYPE_CHECKING:
    from kubetrain_core.config.schema import S3Config

__all__ = ["LocalStorage", "Storage", "open_storage"]

# Temp names never collide with checkpoint files and are skipped by listings.
TMP_PREFIX = ".tmp-"
_COPY_CHUNK = 4 * 1024 * 1024


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return key


def dir_prefix(prefix: str) -> str:
    # "step-00000120" must not match "step-000001200/...": always end with "/".
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


class Storage(ABC):
    """A flat key space with just what checkpoints need."""

    @property
    @abstractmethod
    def root_uri(self) -> str:
        """The URI of the storage root, e.g. s3://bucket/prefix or file:///abs/path."""

    def uri(self, key: str = "") -> str:
        """The URI of `key` (or of the root)."""
        key = key.strip("/")
        return f"{self.root_uri}/{key}" if key else self.root_uri

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Store the local file `path` under `key` (replacing it)."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Fetch `key` into the local file `path`; FileNotFoundError if it does not exist."""

    def get_file_sha256(self, key: str, path: Path) -> str:
        """`get_file`, returning the sha256 of the bytes written to `path`. Here the file is
        read back (from the page cache); LocalStorage hashes while it copies."""
        self.get_file(key, path)
        return sha256_file(path)

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key` (replacing it)."""

    @abstractmethod
    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Store `data` under `key` only if nothing is there yet, atomically; False if
        `key` existed (another writer won)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The content of `key`; FileNotFoundError if it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object/file `key` exists."""

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """All keys under the directory-like `prefix`, recursively, sorted."""

    @abstractmethod
    def versions(self, prefix: str = "") -> dict[str, str]:
        """Every key under the `prefix` directory, with a tag that changes whenever the
        object's content does (S3's ETag; a file's size and mtime)."""

    @abstractmethod
    def version(self, key: str) -> str | None:
        """`key`'s tag as in `versions`, or None when there is no such object."""

    @abstractmethod
    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names of the immediate sub-directories (common prefixes) of `prefix`, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one key; a missing key is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete everything under the directory-like `prefix`."""

    def incomplete_uploads(self) -> list[tuple[str, str]]:
        """(key, upload id) of multipart uploads started under the root and never
        completed or aborted (a writer killed mid-upload); none outside S3."""
        return []

    def abort_upload(self, key: str, upload_id: str) -> None:  # noqa: B027 (no-op outside S3)
        """Abort one incomplete multipart upload, freeing its parts."""


class LocalStorage(Storage):
    """A directory on a local or mounted filesystem."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    @property
    def root_uri(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _replace_into(self, target: Path, write: Any) -> None:
        # Write a temp sibling, fsync, then rename: readers never see a partial file.
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{target.name}")
        try:
            with tmp.open("wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, key: str, path: Path) -> None:
        with Path(path).open("rb") as src:
            self._replace_into(self._path(key), lambda out: shutil.copyfileobj(src, out))

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise FileNotFoundError(self.uri(key))
        with source.open("rb") as src:
            self._replace_into(Path(path), lambda out: shutil.copyfileobj(src, out))

    def get_file_sha256(self, key: str, path: Path) -> str:
        source = self._path(key)
        if not source.is_file():
            raise FileNotFoundError(self.uri(key))
        digest = hashlib.sha256()

        def copy(out: BinaryIO) -> None:
            with source.open("rb") as src:
                while chunk := src.read(_COPY_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)

        self._replace_into(Path(path), copy)
        return digest.hexdigest()

    def put_bytes(self, key: str, data: bytes) -> None:
        self._replace_into(self._path(key), lambda out: out.write(data))

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        # A complete temp file hard-linked into place: link() fails if the name exists,
        # so exactly one writer wins and nobody ever reads a partial file.
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{target.name}")
        try:
            with tmp.open("wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(self.uri(key)) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _dir(self, prefix: str) -> Path:
        prefix = dir_prefix(prefix)
        return self._path(prefix.rstrip("/")) if prefix else self.root

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self._dir(prefix)
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                if not name.startswith(TMP_PREFIX):
                    keys.append((Path(dirpath) / name).relative_to(self.root).as_posix())
        return sorted(keys)

    def versions(self, prefix: str = "") -> dict[str, str]:
        return {key: v for key in self.list_keys(prefix) if (v := self.version(key)) is not None}

    def version(self, key: str) -> str | None:
        try:
            stat = self._path(key).stat()
        except FileNotFoundError:
            return None
        return f"{stat.st_size}-{stat.st_mtime_ns}"

    def list_dirs(self, prefix: str = "") -> list[str]:
        base = self._dir(prefix)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        if not dir_prefix(prefix):
            raise ValueError("refusing to delete the whole storage root")
        shutil.rmtree(self._dir(prefix), ignore_errors=True)


# Files above this go up and down in parallel parts through boto3's transfer manager.
def open_storage(uri: str, s3: S3Config | None = None) -> Storage:
    """Storage for `uri`: s3://bucket/prefix, file:///abs/path or a plain local path."""
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise ValueError(f"checkpoint URI {uri!r} names no bucket")
        from kubetrain_core.checkpoints.s3 import S3Storage  # boto3 only for s3:// URIs

        return S3Storage(
            parsed.netloc,
            parsed.path.strip("/"),
            endpoint=s3.endpoint if s3 is not None else None,
            region=s3.region if s3 is not None else None,
        )
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URI {uri!r} must be file:///absolute/path")
        return LocalStorage(Path(unquote(parsed.path)))
    if "://" in uri:
        raise ValueError(f"unsupported checkpoint URI scheme in {uri!r} (s3:// or file://)")
    return LocalStorage(Path(uri))
