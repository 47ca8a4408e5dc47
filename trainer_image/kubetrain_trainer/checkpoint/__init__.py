"""Checkpoints: storage backends, the manifest commit protocol, terms and lineage, the
manager, torch state.

`state` and `async_save` (torch) are not imported here, so the checkpoint protocol
stays usable without torch.
"""

from kubetrain_trainer.checkpoint.claims import Fenced, StoreConflict, StoreUnreadable
from kubetrain_trainer.checkpoint.lineage import Claim, Lineage, Owner
from kubetrain_trainer.checkpoint.listing import (
    CheckpointError,
    CheckpointInfo,
    CorruptCheckpoint,
    LoadedCheckpoint,
)
from kubetrain_trainer.checkpoint.manager import CheckpointManager
from kubetrain_trainer.checkpoint.manifest import (
    GOOD_MARKER,
    MANIFEST,
    FileEntry,
    GoodMarker,
    Manifest,
    ManifestError,
    Unauthenticated,
    Writer,
    checkpoint_dir,
    parse_checkpoint_dir,
)
from kubetrain_trainer.checkpoint.resume import NoUsableCheckpoint, ResumeRequest
from kubetrain_trainer.checkpoint.retrying import RetryingStorage
from kubetrain_trainer.checkpoint.s3 import S3Storage
from kubetrain_trainer.checkpoint.storage import LocalStorage, Storage, open_storage

__all__ = [
    "GOOD_MARKER",
    "MANIFEST",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointManager",
    "Claim",
    "CorruptCheckpoint",
    "Fenced",
    "FileEntry",
    "GoodMarker",
    "Lineage",
    "LoadedCheckpoint",
    "LocalStorage",
    "Manifest",
    "ManifestError",
    "NoUsableCheckpoint",
    "Owner",
    "ResumeRequest",
    "RetryingStorage",
    "S3Storage",
    "Storage",
    "StoreConflict",
    "StoreUnreadable",
    "Unauthenticated",
    "Writer",
    "checkpoint_dir",
    "open_storage",
    "parse_checkpoint_dir",
]
