"""The manifest that commits a checkpoint, and the marker that proves it good.

A checkpoint directory `step-00000120/` is committed iff its `manifest.json` exists and
parses; the manifest lists the sha256 and size of every other file in the directory, so
a reader can tell a complete checkpoint from a torn or corrupted one. `good.json` is
written later, once K healthy steps followed the checkpoint (design: "Two tiers of
recovery"). Neither file imports torch: the operator reads them too.
"""

from __future__ import annotations

import hashlib
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
    "describe_files",
    "parse_step_dir",
    "sha256_file",
    "step_dir",
]

MANIFEST = "manifest.json"
GOOD_MARKER = "good.json"
RESERVED_NAMES = frozenset({MANIFEST, GOOD_MARKER})
FORMAT_VERSION = 1

_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_HASH_CHUNK = 4 * 1024 * 1024


class ManifestError(ValueError):
    """A manifest or marker that does not parse: the checkpoint is not committed."""


def step_dir(step: int) -> str:
    """The directory name of the checkpoint at `step` (zero-padded so names sort by step)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"step-{step:08d}"


def parse_step_dir(name: str) -> int | None:
    """The step of a checkpoint directory name, or None if `name` is not one."""
    match = _STEP_DIR.match(name.strip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
        raise ManifestError(f"manifest {name} is not a non-negative int: {value!r}")
    return value


def _finite_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    # JSON has no NaN/Infinity: a diverged metric is recorded as null (ranks worst).
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}


@dataclass(frozen=True)
class Manifest:
    """The commit record of one checkpoint."""

    step: int
    epoch: int
    world_size: int
    files: dict[str, FileEntry]
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
        metrics: dict[str, float] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Manifest:
        return cls(
            step,
            epoch,
            world_size,
            dict(files),
            _finite_metrics(metrics or {}),
            meta=dict(meta or {}),
        )

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())

    def to_json(self) -> bytes:
        data = {
            "format": self.format,
            "step": self.step,
            "epoch": self.epoch,
            "world_size": self.world_size,
            "time": self.time,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)),
            "metrics": self.metrics,
            "meta": self.meta,
            "files": {name: self.files[name].to_dict() for name in sorted(self.files)},
        }
        return json.dumps(data, indent=1, allow_nan=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as error:
            raise ManifestError(f"manifest is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise ManifestError("manifest is not an object")
        if data.get("format") != FORMAT_VERSION:
            raise ManifestError(f"unknown manifest format {data.get('format')!r}")
        files, metrics = data.get("files"), data.get("metrics", {})
        if not isinstance(files, dict) or not files:
            raise ManifestError("manifest lists no files")
        if not isinstance(metrics, dict) or not all(
            v is None or isinstance(v, int | float) for v in metrics.values()
        ):
            raise ManifestError(f"bad metrics {metrics!r}")
        timestamp = data.get("time")
        if not isinstance(timestamp, int | float):
            raise ManifestError(f"bad time {timestamp!r}")
        meta = data.get("meta", {})
        return cls(
            step=_non_negative_int(data, "step"),
            epoch=_non_negative_int(data, "epoch"),
            world_size=_non_negative_int(data, "world_size"),
            files={str(k): FileEntry.from_dict(v) for k, v in files.items()},
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

    def to_json(self) -> bytes:
        return json.dumps(
            {"step": self.step, "healthy_steps": self.healthy_steps, "time": self.time}
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> GoodMarker:
        try:
            data = json.loads(raw)
            step, healthy, stamp = data["step"], data.get("healthy_steps"), data["time"]
        except (UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
            raise ManifestError(f"bad good marker: {error}") from None
        if not isinstance(step, int) or not isinstance(stamp, int | float):
            raise ManifestError(f"bad good marker {data!r}")
        return cls(step, healthy if isinstance(healthy, int) else None, float(stamp))
