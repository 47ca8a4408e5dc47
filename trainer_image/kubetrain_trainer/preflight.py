"""What can be checked of a config before any process starts, without torch.

`kubetrain run` calls it so that a missing file or an uncached model is one clear
message, not an error from every rank followed by torchrun's traceback. The trainer
makes the same checks again where it runs (a pod sees other files than the laptop).
"""

from __future__ import annotations

from pathlib import Path

from kubetrain_core.config import ConfigError, TrainingConfig
from kubetrain_core.config.data import RECORD_ADAPTERS
from kubetrain_trainer.data.readers import data_files
from kubetrain_trainer.pretrained import local_dir


def problems(cfg: TrainingConfig) -> list[str]:
    """One "field: problem" line per thing that would stop the run at start."""
    found: list[str] = []
    data = cfg.data
    try:
        if data.path.startswith("s3://"):
            pass  # fetched where it runs, with the credentials it has there
        elif data.adapter == "text_file" and not Path(data.path).is_file():
            found.append(f"data.path: {data.path} does not exist (or is not a file)")
        elif data.adapter in RECORD_ADAPTERS:
            data_files(data.path)
    except ValueError as err:
        found.append(str(err))
    directories = {"model.pretrained": cfg.model.pretrained}
    if data.tokenizer.kind == "pretrained" and data.tokenizer.path != cfg.model.pretrained:
        directories["data.tokenizer.path"] = data.tokenizer.path
    for field, location in directories.items():
        if location is None or location.startswith("s3://"):  # fetched where it runs
            continue
        try:
            local_dir(location, field)
        except ConfigError as err:
            found.extend(f"{field}: {line}" for line in err.errors)
    return found
