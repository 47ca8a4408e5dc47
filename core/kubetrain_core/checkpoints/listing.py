"""What a checkpoint store holds: every checkpoint directory, read and authenticated.

No torch: listing, verifying and choosing checkpoints never needs it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from kubetrain_core.checkpoints.manifest import (
    GOOD_MARKER,
    MANIFEST,
    FileEntry,
    GoodMarker,
    Manifest,
    ManifestError,
    check_file_name,
    checkpoint_dir,
    parse_checkpoint_dir,
)
from kubetrain_core.checkpoints.storage import Storage
from kubetrain_core.checkpoints.transfer import run_all

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "CorruptCheckpoint",
    "LoadedCheckpoint",
    "download",
    "local_files",
    "merge_entries",
    "scan",
]

log = logging.getLogger(__name__)
_reported: set[str] = set()  # unusable checkpoints already logged: every scan meets them again


class CheckpointError(RuntimeError):
    """A save that did not commit (an upload failed on some rank, or ranks disagree)."""


class CorruptCheckpoint(Exception):
    """A committed checkpoint whose files are missing or do not match the manifest."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint directory as found in storage.

    committed: the manifest parsed and authenticated; torn: no manifest (an upload cut
    short); neither: a manifest this reader cannot use (`problem` says why), kept."""

    step: int
    term: int
    uri: str
    committed: bool
    torn: bool = False
    good: bool = False
    manifest: Manifest | None = None
    problem: str | None = None

    @property
    def directory(self) -> str:
        return checkpoint_dir(self.step, self.term)

    @property
    def epoch(self) -> int | None:
        return self.manifest.epoch if self.manifest else None

    @property
    def time(self) -> float | None:
        return self.manifest.time if self.manifest else None

    @property
    def world_size(self) -> int | None:
        return self.manifest.world_size if self.manifest else None

    @property
    def metrics(self) -> dict[str, float | None]:
        return dict(self.manifest.metrics) if self.manifest else {}

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)


class LoadedCheckpoint(NamedTuple):
    info: CheckpointInfo
    path: Path  # local directory holding the verified files


def scan(storage: Storage, key: bytes | None) -> list[CheckpointInfo]:
    """Every checkpoint directory in the store, of any term, sorted by (step, term);
    manifests and good markers are authenticated with `key` when there is one."""
    found: dict[tuple[int, int], set[str]] = {}
    for name in storage.list_keys():
        head, sep, rest = name.partition("/")
        parsed = parse_checkpoint_dir(head)
        if parsed is not None and sep and head == checkpoint_dir(*parsed):
            found.setdefault(parsed, set()).add(rest)
    return [_info(storage, key, step, term, names) for (step, term), names in sorted(found.items())]


def _info(
    storage: Storage, key: bytes | None, step: int, term: int, names: set[str]
) -> CheckpointInfo:
    directory = checkpoint_dir(step, term)
    uri = storage.uri(directory)
    if MANIFEST not in names:
        return CheckpointInfo(step, term, uri, committed=False, torn=True)
    try:
        manifest = Manifest.from_json(storage.get_bytes(f"{directory}/{MANIFEST}"), key)
        if (manifest.step, manifest.writer.term) != (step, term):
            raise ManifestError(f"manifest says step {manifest.step}, term {manifest.writer.term}")
    except (ManifestError, FileNotFoundError) as error:
        if uri not in _reported:
            _reported.add(uri)
            log.warning("checkpoint %s is not usable (kept): %s", uri, error)
        return CheckpointInfo(step, term, uri, committed=False, problem=str(error))
    good = _is_good(storage, key, directory, names)
    return CheckpointInfo(step, term, uri, True, good=good, manifest=manifest)


def _is_good(storage: Storage, key: bytes | None, directory: str, names: set[str]) -> bool:
    if GOOD_MARKER not in names:
        return False
    if not key:
        return True
    try:
        GoodMarker.from_json(storage.get_bytes(f"{directory}/{GOOD_MARKER}"), key)
    except (ManifestError, FileNotFoundError) as error:
        log.warning("ignoring the good marker of %s: %s", storage.uri(directory), error)
        return False
    return True


def local_files(files: Mapping[str, Path] | Path) -> dict[str, Path]:
    """Name -> local path; a directory contributes every file under it by relative path."""
    if isinstance(files, Mapping):
        collected = {str(name): Path(path) for name, path in files.items()}
    else:
        root = Path(files)
        if not root.is_dir():
            raise FileNotFoundError(f"checkpoint staging directory {root} does not exist")
        collected = {}
        for dirpath, _, filenames in os.walk(root):
            for filename in filenames:
                path = Path(dirpath) / filename
                collected[path.relative_to(root).as_posix()] = path
    for name in collected:
        check_file_name(name)
    return collected


def download(storage: Storage, info: CheckpointInfo, local_dir: Path) -> Path:
    """Download a committed checkpoint into `local_dir`/<dir> and verify every file.

    Files come down concurrently (transfer.py), each verified once whole.
    Raises CorruptCheckpoint when a file is missing, has the wrong size or hash.
    """
    if info.manifest is None:
        raise CorruptCheckpoint(f"{info.uri} is not committed")
    target = Path(local_dir) / info.directory
    shutil.rmtree(target, ignore_errors=True)  # stale files must not mix in

    def fetch(name: str, entry: FileEntry) -> None:
        dest = target / name
        try:
            digest = storage.get_file_sha256(f"{info.directory}/{name}", dest)
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{info.uri}: {name} is missing") from None
        size = dest.stat().st_size
        if size != entry.size:
            raise CorruptCheckpoint(
                f"{info.uri}: {name} has {size} bytes, manifest says {entry.size}"
            )
        if digest != entry.sha256:
            raise CorruptCheckpoint(f"{info.uri}: {name} does not match its sha256")

    files = info.manifest.files
    # Largest first: the long transfers start at once, small files fill in around them.
    names = sorted(files, key=lambda n: (-files[n].size, n))
    try:
        run_all([(name, partial(fetch, name, files[name])) for name in names])
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def merge_entries(directory: str, gathered: list[Any]) -> dict[str, FileEntry]:
    """One manifest's files from every rank's (entries, error): CheckpointError if a rank
    failed, two ranks wrote different contents under one name, or nothing was written."""
    errors = [error for _, error in gathered if error]
    if errors:
        raise CheckpointError(f"checkpoint {directory} not committed: {'; '.join(errors)}")
    merged: dict[str, FileEntry] = {}
    for rank_entries, _ in gathered:
        for name, raw in rank_entries.items():
            entry = FileEntry.from_dict(raw)
            seen = merged.get(name)
            if seen is not None and seen.sha256 != entry.sha256:
                raise CheckpointError(
                    f"checkpoint {directory}: ranks {seen.rank} and {entry.rank} "
                    f"wrote different contents for {name}"
                )
            merged.setdefault(name, entry)
    if not merged:
        raise CheckpointError(f"checkpoint {directory} has no files")
    return merged
