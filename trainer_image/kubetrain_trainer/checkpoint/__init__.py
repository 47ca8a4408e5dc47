"""Checkpoints, the writer's side: claims and fencing, terms and lineage, the manager,
torch state. The store itself (backends, manifests, listing) is torch-free and lives in
`kubetrain_core.checkpoints`, so `kubetrain checkpoints` reads it as the trainer does;
it is re-exported here.

`state` and `async_save` (torch) are not imported here, so the checkpoint protocol
stays usable without torch.
"""

from kubetrain_core.checkpoints.listing import (
    CheckpointError,
    CheckpointInfo,
    CorruptCheckpoint,
    LoadedCheckpoint,
)
from kubetrain_core.checkpoints.manifest import (
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
from kubetrain_core.checkpoints.s3 import S3Storage
from kubetrain_core.checkpoints.storage import LocalStorage, Storage, open_storage
from kubetrain_trainer.checkpoint.claims import Fenced, StoreConflict, StoreUnreadable
from kubetrain_trainer.checkpoint.lineage import Claim, Lineage, Owner
from kubetrain_trainer.checkpoint.manager import CheckpointManager
from kubetrain_trainer.checkpoint.resume import NoUsableCheckpoint, ResumeRequest
from kubetrain_trainer.checkpoint.retrying import RetryingStorage

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
