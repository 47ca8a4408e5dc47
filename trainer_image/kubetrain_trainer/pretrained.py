"""Where a pretrained model or tokenizer directory is on this machine.

`model.pretrained` (and `data.tokenizer.path`) name a local `save_pretrained`
directory, an `s3://` prefix holding one, or a hub id already in the local Hugging
Face cache. Nothing is ever downloaded from a hub: an id that is not cached is a
config error saying how to provide the weights. An `s3://` directory is fetched once
per machine (remote.py), and every safetensors file is opened before it is used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kubetrain_core.config import ConfigError
from kubetrain_trainer import remote

log = logging.getLogger(__name__)

CACHE_ENV = "KUBETRAIN_MODEL_CACHE"
"""Where fetched s3:// models live; default ~/.cache/kubetrain/models."""


def local_dir(location: str, field: str) -> Path:
    """The local directory `location` (the value of config `field`) names."""
    if "://" in location and not location.startswith("s3://"):
        raise ConfigError(field, [f"{location!r}: only local paths and s3:// URIs are read"])
    path = fetch(location, field) if location.startswith("s3://") else Path(location)
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
    """The local copy of the directory under `uri`, fetched once per machine."""
    return remote.fetch(uri, field, cache_root(), lambda staging: _verify(staging, uri, field))


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
