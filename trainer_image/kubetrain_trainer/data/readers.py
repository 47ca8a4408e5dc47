"""Records from files: JSONL, Parquet or text, each with where it came from.

`data.path` is a file, a directory (every data file in it) or a glob, local or under
an s3:// prefix (fetched first), always read in sorted order so every rank and every
run sees the same sequence. Each record carries "file:line" (or "file:row N"), so a
malformed one is reported where it is.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetrain_core.config.data import DataConfig
from kubetrain_trainer import remote
from kubetrain_trainer.data.token_cache import default_cache_dir

_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
TEXT_EXTENSIONS = {".txt", ".text", ".md"}


class BadRecord(ValueError):
    """A record that cannot be used; the message names file, line and field."""


@dataclass(frozen=True)
class Record:
    where: str  # "file:line" or "file:row N"
    fields: dict[str, Any]


def local_data(cfg: DataConfig) -> str:
    """`data.path` on this machine. An s3:// URI of a prefix, an object, or a prefix
    followed by a glob (``s3://b/corpus/*.jsonl``) is fetched first, once per machine,
    under the data cache; the glob then applies to the local copy."""
    location = cfg.path
    if not location.startswith("s3://"):
        if "://" in location:
            raise ValueError(f"data.path: {location}: only local paths and s3:// URIs are read")
        return location
    parts = location.split("/")  # ["s3:", "", bucket, key parts...]
    pattern = next(
        (i for i, part in enumerate(parts) if i > 2 and any(c in part for c in "*?[")), len(parts)
    )
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    fetched = remote.fetch("/".join(parts[:pattern]), "data.path", root / "fetched")
    return str(fetched.joinpath(*parts[pattern:]))


def data_files(location: str) -> list[Path]:
    """The files the local `data.path` names, sorted; ValueError naming the field when none."""
    path = Path(location)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [
            p
            for p in path.rglob("*")
            if p.is_file() and (p.suffix in _EXTENSIONS or p.suffix in TEXT_EXTENSIONS)
        ]
    else:
        # glob.glob, not Path.glob: the pattern may be absolute.
        matches = glob.glob(location, recursive=True)  # noqa: PTH207
        found = [Path(p) for p in matches if Path(p).is_file()]
    if not found:
        raise ValueError(f"data.path: {location} names no data files")
    return sorted(found)


def file_format(path: Path, configured: str) -> str:
    if configured != "auto":
        return configured
    return _EXTENSIONS.get(path.suffix, "text")


def read_records(files: list[Path], configured: str, text_field: str) -> Iterator[Record]:
    """Every record of `files`; a text file's lines become records with `text_field`."""
    for path in files:
        fmt = file_format(path, configured)
        if fmt == "jsonl":
            yield from _jsonl(path)
        elif fmt == "parquet":
            yield from _parquet(path)
        else:
            yield from _text(path, text_field)


def _jsonl(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as err:
                yield Record(where, {"__error__": f"not JSON ({err.msg})"})
                continue
            if not isinstance(fields, dict):
                yield Record(where, {"__error__": "not a JSON object"})
                continue
            yield Record(where, fields)


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for fields in batch.to_pylist():
            yield Record(f"{path}:row {row}", fields)
            row += 1


def _text(path: Path, text_field: str) -> Iterator[Record]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield Record(f"{path}:{number}", {text_field: line.rstrip("\n")})


def field(record: Record, name: str, kind: type) -> Any:
    """`record`'s field `name`, which must be a `kind`; BadRecord otherwise."""
    if "__error__" in record.fields:
        raise BadRecord(f"{record.where}: {record.fields['__error__']}")
    if name not in record.fields:
        raise BadRecord(f"{record.where}: no field {name!r}")
    value = record.fields[name]
    if not isinstance(value, kind):
        raise BadRecord(f"{record.where}: field {name!r} is not a {kind.__name__}")
    return value
