"""Where a pretrained model or tokenizer directory is on this machine.

`model.pretrained` (and `data.tokenizer.path`) name a local `save_pretrained`
directory, an `s3://` prefix holding one, or a hub id already in the local Hugging
Face cache. Nothing is ever downloaded from a hub: an id that is not cached is a
config error saying how to provide the weights. An `s3://` directory is fetched once
per machine into a cache keyed by its URI (the first process fetches, the others
wait on a lock), and every safetensors file is opened before it is used.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from kubetrain_core.checkpoints.storage import open_storage
from kubetrain_core.config import ConfigError

log = logging.getLogger(__name__)

CACHE_ENV = "KUBETRAIN_MODEL_CACHE"
"""Where fetched s3:// models live; default ~/.cache/kubetrain/models."""

_FETCHED = ".kubetrain-fetched"  # written last: a directory without it is incomplete


def local_dir(location: str, field: str) -> Path:
    """The local directory `location` (the value of config `field`) names."""
    if location.startswith("s3://"):
        return fetch(location, field)
    if "://" in location:
        raise ConfigError(field, [f"{location!r}: only local paths and s3:// URIs are read"])
    path = Path(location)
    if path.is_dir():
        return path
    if path.exists():
        raise ConfigError(field, [f"{location} is a file; give the save_pretrained directory"])
    return _cached_hub_snapshot(location, field)


def _cached_hub_snapshot(repo_id: str, field: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise ConfigError(
            field,
            [
                f"{repo_id!r} is neither a directory nor a model in the local Hugging Face "
                "cache, and kubetrain never downloads at run time. Give a save_pretrained "
                "directory (a path, e.g. on a mounted volume), an s3:// URI of one, or "
                "bake it into the image's Hugging Face cache (HF_HOME)."
            ],
        ) from None


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kubetrain" / "models")


def fetch(uri: str, field: str) -> Path:
    """Download the directory under `uri` once per machine; returns the local copy."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
    with (root / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per machine; the others wait here
        if (target / _FETCHED).exists():
            return target
        _download(uri, target, field)
    return target


def _download(uri: str, target: Path, field: str) -> None:
    storage = open_storage(uri)
    keys = [k for k in storage.list_keys() if not k.endswith("/")]
    if not keys:
        raise ConfigError(field, [f"{uri} holds no files (expected a save_pretrained dir)"])
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for i, key in enumerate(sorted(keys), 1):
            print(f"fetching {uri}: {i}/{len(keys)} {key}", file=sys.stderr, flush=True)
            (staging / key).parent.mkdir(parents=True, exist_ok=True)
            storage.get_file(key, staging / key)
        _verify(staging, uri, field)
        (staging / _FETCHED).write_text(uri)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("fetched %s into %s (%d files)", uri, target, len(keys))


def _verify(directory: Path, uri: str, field: str) -> None:
    """Every safetensors file must open (a truncated download fails here, not in a rank)."""
    from safetensors import safe_open

    for path in directory.rglob("*.safetensors"):
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except Exception as err:  # safetensors raises its own error types
            problem = f"{uri}: {path.name} is not a valid safetensors file: {err}"
            raise ConfigError(field, [problem]) from None
