"""The trained model as files anyone can load, with no kubetrain import.

A Hugging Face model is written with `save_pretrained` (safetensors, config) and its
tokenizer with theirs, so `AutoModelForCausalLM.from_pretrained(dir)` and
`AutoTokenizer.from_pretrained(dir)` load it (a trained BPE tokenizer is wrapped for
transformers); the native Transformer as `model.safetensors` plus its config.
kubetrain's own tokenizer file and `kubetrain-config.yaml`, the config that trained
it, are always there. The directory is written under the run dir and, when the
checkpoint store lives elsewhere (S3, a volume), copied to the store's `export/`
prefix, which outlives the pod.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from kubetrain_core.checkpoints.storage import LocalStorage, Storage
from kubetrain_core.config import TrainingConfig, to_yaml
from kubetrain_trainer.data.hf_tokenizer import PretrainedTokenizer
from kubetrain_trainer.data.tokenizers import BPETokenizer, Tokenizer

log = logging.getLogger(__name__)

EXPORT_PREFIX = "export"
CONFIG_FILE = "kubetrain-config.yaml"
NATIVE_TOKENIZER = "kubetrain-tokenizer.json"


def write_export(
    model: nn.Module, tokenizer: Tokenizer, cfg: TrainingConfig, directory: Path
) -> Path:
    """Write the loadable model directory (replacing an older one) and return it."""
    staging = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_pretrained = getattr(model, "save_pretrained", None)
    if callable(save_pretrained):
        save_pretrained(str(staging), safe_serialization=True)
    else:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(_untied(state), str(staging / "model.safetensors"))
        config = cfg.model.model_dump(mode="json") | {"vocab_size": tokenizer.vocab_size}
        (staging / "config.json").write_text(json.dumps(config, indent=2))
    _save_tokenizer(tokenizer, staging)
    (staging / CONFIG_FILE).write_text(to_yaml(cfg))
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return directory


def _save_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    """AutoTokenizer's files where transformers can read them (a trained BPE is wrapped as
    a fast tokenizer); kubetrain's own file always, which `Tokenizer.load` restores."""
    if isinstance(tokenizer, PretrainedTokenizer):
        tokenizer.save_pretrained(directory)
    elif isinstance(tokenizer, BPETokenizer):
        from transformers import PreTrainedTokenizerFast

        wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer.hf)  # type: ignore[no-untyped-call]
        wrapped.save_pretrained(str(directory))
    tokenizer.save(directory / NATIVE_TOKENIZER)


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied embeddings): store copies."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        pointer = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


def beside(directory: Path, store_uri: str) -> bool:
    """Whether the store is a local directory next to the export (the run dir's own
    checkpoints/): copying it there too would only double the disk it takes."""
    if not store_uri.startswith("file://"):
        return False
    store = LocalStorage(Path(urlparse(store_uri).path))
    return store.root.resolve().parent == directory.resolve().parent


def publish(directory: Path, storage: Storage) -> str:
    """Copy the export into the store's export/ prefix (replacing an older one)."""
    storage.delete_prefix(EXPORT_PREFIX)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        storage.put_file(f"{EXPORT_PREFIX}/{path.relative_to(directory)}", path)
    uri = storage.uri(EXPORT_PREFIX)
    log.info("exported the model to %s", uri)
    return uri
