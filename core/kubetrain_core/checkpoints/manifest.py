"""The manifest that commits a checkpoint, and the marker that proves it good.

A checkpoint directory `step-00000120-t3/` (step 120, written in term 3: see
lineage.py) is committed iff its `manifest.json` exists, parses and, when the job
has a signing key, authenticates; the manifest lists the sha256 and size of every
other file in the directory, so a reader can tell a complete checkpoint from a torn,
corrupted or forged one. `good.json` is written later, once K healthy steps followed
the checkpoint (design: "Two tiers of recovery"). Neither file imports torch.

Both documents carry an HMAC-SHA256 over their canonical JSON when a key is given
(KUBETRAIN_CHECKPOINT_KEY): torch.distributed.checkpoint unpickles `.metadata`, so a
file that a bucket writer could swap must never reach the loader unauthenticated.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "GOOD_MARKER",
    "MANIFEST",
    "FileEntry",
    "GoodMarker",
    "Manifest",
    "ManifestError",
    "Unauthenticated",
    "Writer",
    "check_file_name",
    "checkpoint_dir",
    "describe_files",
    "parse_checkpoint_dir",
    "sha256_file",
]

MANIFEST = "manifest.json"
GOOD_MARKER = "good.json"
RESERVED_NAMES = frozenset({MANIFEST, GOOD_MARKER})
FORMAT_VERSION = 2

_CHECKPOINT_DIR = re.compile(r"^step-(\d{8,})-t(\d+)$")
_HASH_CHUNK = 4 * 1024 * 1024
_HMAC_FIELD = "hmac"


class ManifestError(ValueError):
    """A manifest or marker that does not parse: the checkpoint is not committed."""


class Unauthenticated(ManifestError):
    """A manifest or marker whose HMAC is missing or wrong for this job's key."""


def checkpoint_dir(step: int, term: int) -> str:
    """The directory of the checkpoint at `step` written in `term` (zero-padded steps,
    so names sort by step; the term keeps writers of different attempts apart)."""
    if step < 0 or term < 0:
        raise ValueError(f"step and term must be >= 0, got {step}, {term}")
    return f"step-{step:08d}-t{term}"


def parse_checkpoint_dir(name: str) -> tuple[int, int] | None:
    """(step, term) of a checkpoint directory name, or None if `name` is not one."""
    match = _CHECKPOINT_DIR.match(name.strip("/").rsplit("/", 1)[-1])
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_file_name(name: str) -> str:
    """A file name inside a checkpoint directory: a relative path of plain segments that
    is not the manifest or the marker. ValueError otherwise (a manifest naming "../x"
    must never make a reader write outside its directory)."""
    parts = name.split("/")
    if name in RESERVED_NAMES or any(p in ("", ".", "..") or "\\" in p for p in parts):
        raise ValueError(f"invalid checkpoint file name {name!r}")
    return name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _canonical(data: dict[str, Any]) -> bytes:
    body = {k: v for k, v in data.items() if k != _HMAC_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _sign(data: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    if key:
        data[_HMAC_FIELD] = hmac.new(key, _canonical(data), hashlib.sha256).hexdigest()
    return data


def _authenticate(data: dict[str, Any], key: bytes | None, what: str) -> None:
    """With a key, the document must carry its HMAC; without one nothing is checked
    (sha256 of the files still catches corruption, not forgery)."""
    if not key:
        return
    tag = data.get(_HMAC_FIELD)
    if not isinstance(tag, str):
        raise Unauthenticated(f"{what} is not signed, and this job has a signing key")
    expected = hmac.new(key, _canonical(data), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(tag, expected):
        raise Unauthenticated(f"{what} signature does not match this job's key")


def _load_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ManifestError(f"{what} is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{what} is not an object")
    return data


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint: content hash, size, and the rank that wrote it."""

    sha256: str
    size: int
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "rank": self.rank}

    @classmethod
    def from_dict(cls, data: Any) -> FileEntry:
        if not isinstance(data, dict):
            raise ManifestError(f"file entry is not an object: {data!r}")
        sha, size, rank = data.get("sha256"), data.get("size"), data.get("rank", 0)
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ManifestError(f"bad sha256 {sha!r}")
        if not isinstance(size, int) or size < 0 or not isinstance(rank, int):
            raise ManifestError(f"bad size/rank in {data!r}")
        return cls(sha, size, rank)


def describe_files(files: dict[str, Path], rank: int) -> dict[str, FileEntry]:
    """Hash local files for the manifest; names are the keys inside the checkpoint dir."""
    return {
        name: FileEntry(sha256_file(path), Path(path).stat().st_size, rank)
        for name, path in files.items()
    }


def _non_negative_int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestError(f"{name} is not a non-negative int: {value!r}")
    return value


def _finite_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    # JSON has no NaN/Infinity: a diverged metric is recorded as null (ranks worst).
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}


@dataclass(frozen=True)
class Writer:
    """Who committed a checkpoint: the store term, the operator's attempt, the job."""

    term: int
    attempt: int = 0
    job_uid: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "attempt": self.attempt, "job_uid": self.job_uid}

    @classmethod
    def from_dict(cls, data: Any) -> Writer:
        if not isinstance(data, dict):
            raise ManifestError(f"writer is not an object: {data!r}")
        uid = data.get("job_uid", "")
        if not isinstance(uid, str):
            raise ManifestError(f"bad writer job_uid {uid!r}")
        return cls(_non_negative_int(data, "term"), _non_negative_int(data, "attempt"), uid)


@dataclass(frozen=True)
class Manifest:
    """The commit record of one checkpoint."""

    step: int
    epoch: int
    world_size: int
    files: dict[str, FileEntry]
    writer: Writer
    metrics: dict[str, float | None] = field(default_factory=dict)
    time: float = field(default_factory=time.time)
    meta: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    @classmethod
    def create(
        cls,
        step: int,
        *,
        epoch: int,
        world_size: int,
        files: dict[str, FileEntry],
        writer: Writer,
        metrics: dict[str, float] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Manifest:
        return cls(
            step,
            epoch,
            world_size,
            dict(files),
            writer,
            _finite_metrics(metrics or {}),
            meta=dict(meta or {}),
        )

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())

    def to_json(self, key: bytes | None = None) -> bytes:
        data = {
            "format": self.format,
            "step": self.step,
            "epoch": self.epoch,
            "world_size": self.world_size,
            "writer": self.writer.to_dict(),
            "time": self.time,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)),
            "metrics": self.metrics,
            "meta": self.meta,
            "files": {name: self.files[name].to_dict() for name in sorted(self.files)},
        }
        return json.dumps(_sign(data, key), indent=1, allow_nan=False).encode()

    @classmethod
    def from_json(cls, raw: bytes, key: bytes | None = None) -> Manifest:
        """Parse and authenticate; ManifestError (Unauthenticated for a bad HMAC)."""
        data = _load_object(raw, "manifest")
        if data.get("format") != FORMAT_VERSION:
            raise ManifestError(f"unknown manifest format {data.get('format')!r}")
        _authenticate(data, key, "manifest")
        files, metrics = data.get("files"), data.get("metrics", {})
        if not isinstance(files, dict) or not files:
            raise ManifestError("manifest lists no files")
        try:
            for name in files:
                check_file_name(str(name))
        except ValueError as error:
            raise ManifestError(str(error)) from None
        if not isinstance(metrics, dict) or not all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool))
            for v in metrics.values()
        ):
            raise ManifestError(f"bad metrics {metrics!r}")
        timestamp = data.get("time")
        if not isinstance(timestamp, int | float) or not math.isfinite(timestamp):
            raise ManifestError(f"bad time {timestamp!r}")
        meta = data.get("meta", {})
        return cls(
            step=_non_negative_int(data, "step"),
            epoch=_non_negative_int(data, "epoch"),
            world_size=_non_negative_int(data, "world_size"),
            files={str(k): FileEntry.from_dict(v) for k, v in files.items()},
            writer=Writer.from_dict(data.get("writer")),
            metrics={str(k): (None if v is None else float(v)) for k, v in metrics.items()},
            time=float(timestamp),
            meta=meta if isinstance(meta, dict) else {},
        )


@dataclass(frozen=True)
class GoodMarker:
    """Written once K healthy steps followed a checkpoint: a safe rollback target."""

    step: int
    healthy_steps: int | None = None
    time: float = field(default_factory=time.time)

    def to_json(self, key: bytes | None = None) -> bytes:
        data = {"step": self.step, "healthy_steps": self.healthy_steps, "time": self.time}
        return json.dumps(_sign(data, key)).encode()

    @classmethod
    def from_json(cls, raw: bytes, key: bytes | None = None) -> GoodMarker:
        data = _load_object(raw, "good marker")
        _authenticate(data, key, "good marker")
        step, healthy, stamp = data.get("step"), data.get("healthy_steps"), data.get("time")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ManifestError(f"bad good marker step {step!r}")
        if not isinstance(stamp, int | float):
            raise ManifestError(f"bad good marker time {stamp!r}")
        return cls(step, healthy if isinstance(healthy, int) else None, float(stamp))
