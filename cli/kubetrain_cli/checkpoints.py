"""`kubetrain checkpoints`: what a job's checkpoint store holds, read as the trainer reads it.

The target is a TrainingJob YAML (its spec.checkpoint; a `kubetrain run` job's store and
signing key under --runs-dir) or a store URI. Manifests and good markers are
authenticated when the signing key is known (the run dir's checkpoint.key, --key-file,
or KUBETRAIN_CHECKPOINT_KEY), and `--verify` downloads every committed checkpoint and
checks each file against its manifest. Nothing is written to the store.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kubetrain_core.checkpoints.listing import CheckpointInfo, CorruptCheckpoint, download, scan
from kubetrain_core.checkpoints.storage import Storage, open_storage
from kubetrain_core.config import ConfigError, S3Config
from kubetrain_core.contract import Env


@dataclass(frozen=True)
class Store:
    uri: str
    s3: S3Config | None
    key: bytes | None


def store_of(target: str, runs_dir: Path, key_file: Path | None) -> Store:
    """The store a TrainingJob file (or a URI) names, and the key to authenticate it."""
    key = key_file.read_text().strip().encode() if key_file else None
    key = key or os.environ.get(Env.CHECKPOINT_KEY, "").encode() or None
    path = Path(target)
    if not path.is_file():
        return Store(target, None, key)
    from kubetrain_cli.cli import load_job

    job = load_job(path)
    run_dir = runs_dir / job.metadata.name
    ckpt = job.spec.checkpoint
    local_key = run_dir / "checkpoint.key"
    if key is None and local_key.is_file():
        key = local_key.read_text().strip().encode()
    s3 = S3Config(endpoint=ckpt.s3.endpoint, region=ckpt.s3.region)
    return Store(ckpt.uri or str(run_dir / "checkpoints"), s3, key)


def state_of(info: CheckpointInfo) -> str:
    if info.torn:
        return "torn (no manifest: an upload cut short)"
    if not info.committed:
        return f"unusable: {info.problem}"
    return "good" if info.good else "committed"


def verify(storage: Storage, info: CheckpointInfo) -> str:
    with tempfile.TemporaryDirectory(prefix="kubetrain-verify-") as tmp:
        try:
            download(storage, info, Path(tmp))
        except CorruptCheckpoint as err:
            return f"CORRUPT: {err}"
    return "verified"


def show(store: Store, check: bool) -> int:
    """Print one line per checkpoint directory; 1 when --verify found a corrupt one."""
    storage = open_storage(store.uri, store.s3)
    found = scan(storage, store.key)
    trust = "authenticated" if store.key else "not authenticated (no signing key)"
    print(f"{store.uri}: {len(found)} checkpoint directories, manifests {trust}")
    corrupt = 0
    for info in found:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.time)) if info.time else "-"
        line = f"  step {info.step:>8}  term {info.term:>3}  {stamp}  {state_of(info)}"
        if check and info.committed:
            result = verify(storage, info)
            corrupt += result.startswith("CORRUPT")
            line += f"  {result}"
        print(line)
    return 1 if corrupt else 0


def main(target: str, runs_dir: Path, key_file: Path | None, check: bool) -> int:
    try:
        store = store_of(target, runs_dir, key_file)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    return show(store, check)
