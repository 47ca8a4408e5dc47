"""Tokenised corpora on disk, built once and memory-mapped by every rank and run.

A corpus is tokenised into fixed-length rows by a generator and written as an Arrow
dataset (Hugging Face datasets) under `<cache>/<key>`, the key hashing the files
(path, size, modification time), the tokenizer and every setting that shapes the
rows. The first process to take the key's lock builds it; the others wait and then
open the same files. Opening maps them: a rank's memory does not grow with the corpus.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_ENV = "KUBETRAIN_DATA_CACHE"
FORMAT_VERSION = 1
_STATS = "kubetrain-rows.json"  # written last: a directory without it is incomplete


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kubetrain" / "data")


def cache_key(files: list[Path], tokenizer_state: Any, settings: dict[str, Any]) -> str:
    """A key that changes whenever the rows would."""
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    tokenizer = hashlib.sha256(json.dumps(tokenizer_state, sort_keys=True).encode()).hexdigest()
    doc = {"version": FORMAT_VERSION, "files": stats, "tokenizer": tokenizer, **settings}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


class RowStats:
    """What the builder counted; kept next to the rows."""

    def __init__(self) -> None:
        self.records = 0
        self.skipped = 0  # malformed (data.bad_records: skip)
        self.low_quality = 0  # below data.min_quality_score
        self.rows = 0
        self.first_problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def rows_dataset(
    root: Path,
    key: str,
    rows: Callable[[RowStats], Iterator[dict[str, Any]]],
    features: Any,
) -> tuple[Any, dict[str, Any]]:
    """The cached rows under `key` (built by `rows` if absent) and their stats."""
    import datasets

    datasets.disable_progress_bars()
    root.mkdir(parents=True, exist_ok=True)
    target = root / key
    with (root / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per key; the others wait here
        if not (target / _STATS).exists():
            _build(target, rows, features)
    stats: dict[str, Any] = json.loads((target / _STATS).read_text())
    return datasets.load_from_disk(str(target)), stats


def _build(
    target: Path, rows: Callable[[RowStats], Iterator[dict[str, Any]]], features: Any
) -> None:
    import datasets

    started = time.monotonic()
    print(f"tokenising the corpus into {target} (once; later runs reuse it)", file=sys.stderr)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    stats = RowStats()
    try:
        try:
            built = datasets.Dataset.from_generator(
                lambda: rows(stats),
                features=features,
                cache_dir=str(staging / "build"),
                fingerprint=target.name,
            )
        except datasets.exceptions.DatasetGenerationError as err:
            if isinstance(err.__cause__, ValueError):  # a bad record, named by the reader
                raise err.__cause__ from None
            raise
        built.save_to_disk(str(staging / "rows"))
        (staging / "rows" / _STATS).write_text(json.dumps(stats.as_dict()))
        shutil.rmtree(target, ignore_errors=True)
        (staging / "rows").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "tokenised %d records into %d rows in %.1f s (%d skipped, %d below quality)",
        stats.records,
        stats.rows,
        time.monotonic() - started,
        stats.skipped,
        stats.low_quality,
    )
