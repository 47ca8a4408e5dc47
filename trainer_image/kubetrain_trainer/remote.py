"""Local copies of what an ``s3://`` URI names: a model directory, a tokenizer, data.

A URI names a prefix (a directory: every object under it) or one object. The first
process on a machine downloads it under a lock into `root`, keyed by the URI; the
others wait and use that copy. The copy records the store's listing (every key with
its ETag), which is compared at each use, so an object added or changed in the
store is fetched again rather than trained on stale. A copy without its marker,
written last, is incomplete and fetched again too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from kubetrain_core.checkpoints.storage import Storage, open_storage
from kubetrain_core.config import ConfigError

log = logging.getLogger(__name__)

_FETCHED = ".kubetrain-fetched"  # the listing the copy holds; written last


def fetch(uri: str, field: str, root: Path, verify: Callable[[Path], None] | None = None) -> Path:
    """The local copy of `uri` (the value of config `field`): a directory for a prefix,
    the file for one object. `verify(staging)` may reject a download (ConfigError)."""
    storage, listing, single = _listing(uri, field)
    root.mkdir(parents=True, exist_ok=True)
    target = root / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
    with (root / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per machine; the others wait here
        marker = target / _FETCHED
        if not (marker.is_file() and json.loads(marker.read_text()) == listing):
            _download(storage, uri, listing, target, verify)
    return target / single if single else target


def _listing(uri: str, field: str) -> tuple[Storage, dict[str, str], str | None]:
    """The storage to read from, its keys with their versions, and the object's name
    when `uri` names one object rather than a prefix."""
    storage = open_storage(uri)
    listing = {k: v for k, v in storage.versions().items() if not k.endswith("/")}
    if listing:
        return storage, listing, None
    head, _, name = uri.rstrip("/").rpartition("/")
    if name and "/" in head.removeprefix("s3://"):  # s3://bucket/.../name
        parent = open_storage(head)
        version = parent.version(name)
        if version is not None:
            return parent, {name: version}, name
    raise ConfigError(field, [f"{uri} names no objects (an empty or missing prefix)"])


def _download(
    storage: Storage,
    uri: str,
    listing: dict[str, str],
    target: Path,
    verify: Callable[[Path], None] | None,
) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for i, key in enumerate(sorted(listing), 1):
            print(f"fetching {uri}: {i}/{len(listing)} {key}", file=sys.stderr, flush=True)
            (staging / key).parent.mkdir(parents=True, exist_ok=True)
            storage.get_file(key, staging / key)
        if verify is not None:
            verify(staging)
        (staging / _FETCHED).write_text(json.dumps(listing, sort_keys=True))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("fetched %s into %s (%d files)", uri, target, len(listing))
