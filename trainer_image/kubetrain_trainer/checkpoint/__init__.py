"""Checkpoints: storage backends, the manifest commit protocol, the manager, torch state.

`state` (model/optimizer/RNG through torch.distributed.checkpoint) is not imported
here, so the operator can list and verify checkpoints without torch.
"""

from kubetrain_trainer.checkpoint.manager import (
    CheckpointError,
    CheckpointInfo,
    CheckpointManager,
    CorruptCheckpoint,
    LoadedCheckpoint,
)
from kubetrain_trainer.checkpoint.manifest import (
    GOOD_MARKER,
    MANIFEST,
    FileEntry,
    GoodMarker,
    Manifest,
    ManifestError,
    parse_step_dir,
    step_dir,
)
from kubetrain_trainer.checkpoint.storage import LocalStorage, S3Storage, Storage, open_storage

__all__ = [
    "GOOD_MARKER",
    "MANIFEST",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointManager",
    "CorruptCheckpoint",
    "FileEntry",
    "GoodMarker",
    "LoadedCheckpoint",
    "LocalStorage",
    "Manifest",
    "ManifestError",
    "S3Storage",
    "Storage",
    "open_storage",
    "parse_step_dir",
    "step_dir",
]
