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
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch
import yaml
from torch import nn

from kubetrain_core import registry
from kubetrain_core.checkpoints.listing import CheckpointInfo, download, scan
from kubetrain_core.checkpoints.manifest import parse_checkpoint_dir
from kubetrain_core.checkpoints.storage import Storage, open_storage
from kubetrain_core.config import ConfigError, TrainingConfig, parse_config, to_yaml
from kubetrain_trainer.checkpoint import claims
from kubetrain_trainer.checkpoint.state import (
    CONFIG_FILE,
    HF_CONFIG_FILE,
    TOKENIZER_FILE,
    read_model,
)
from kubetrain_trainer.data.hf_tokenizer import PretrainedTokenizer
from kubetrain_trainer.data.tokenizers import BPETokenizer, Tokenizer
from kubetrain_trainer.models import lora

log = logging.getLogger(__name__)

EXPORT_PREFIX = "export"
NATIVE_TOKENIZER = "kubetrain-tokenizer.json"


def write_export(
    model: nn.Module,
    tokenizer: Tokenizer,
    cfg: TrainingConfig,
    directory: Path,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the loadable model directory (replacing an older one) and return it.
    `weights`: the whole state dict when `model` itself holds only a shard."""
    staging = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_pretrained = getattr(model, "save_pretrained", None)
    if lora.is_lora(model):
        lora.save_adapter(model, staging / lora.ADAPTER_DIR, weights)
        auto = registry.MODEL_ADAPTERS.get(cfg.model.adapter).auto_class
        whole = lora.merged(cfg.model, auto, staging / lora.ADAPTER_DIR)
        whole.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[operator]
    elif callable(save_pretrained):
        if weights is not None:
            weights = _without_aliases(model, weights)
        save_pretrained(str(staging), state_dict=weights, safe_serialization=True)
    else:
        from safetensors.torch import save_file

        state = weights if weights is not None else model.state_dict()
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
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


def _without_aliases(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` less the second name of each tied parameter (lm_head beside the input
    embeddings): save_pretrained drops those itself only when they share memory, which
    gathered copies do not."""
    seen: set[int] = set()
    aliases: set[str] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            aliases.add(name)
        seen.add(id(tensor))
    return {name: tensor for name, tensor in weights.items() if name not in aliases}


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
    return Path(urlparse(store_uri).path).resolve().parent == directory.resolve().parent


def publish(directory: Path, storage: Storage) -> str:
    """Copy the export into the store's export/ prefix (replacing an older one)."""
    storage.delete_prefix(EXPORT_PREFIX)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        storage.put_file(f"{EXPORT_PREFIX}/{path.relative_to(directory)}", path)
    uri = storage.uri(EXPORT_PREFIX)
    log.info("exported the model to %s", uri)
    return uri


def export_checkpoint(target: str, out: Path, key: bytes | None) -> tuple[CheckpointInfo, Path]:
    """`kubetrain export`: the loadable model of a committed checkpoint. `target` is a
    checkpoint directory's URI, or a store's: then its newest committed checkpoint of
    the current timeline (never one a rollback abandoned). Every file is verified
    against the manifest on the way."""
    store, step_term = _store_and_checkpoint(target)
    storage = open_storage(store)
    committed = [i for i in scan(storage, key) if i.committed]
    if step_term is not None:
        committed = [i for i in committed if (i.step, i.term) == step_term]
    elif (head := claims.read_head(storage)) is not None:
        committed = [i for i in committed if head.lineage.covers(i.step, i.term)]
    if not committed:
        raise ConfigError(target, ["no committed checkpoint there (`kubetrain checkpoints`)"])
    info = committed[-1]
    with tempfile.TemporaryDirectory(prefix="kubetrain-export-") as tmp:
        local = download(storage, info, Path(tmp))
        if not (local / CONFIG_FILE).is_file():
            raise ConfigError(target, [f"{info.uri} predates exports (no {CONFIG_FILE})"])
        cfg = parse_config(yaml.safe_load((local / CONFIG_FILE).read_text()), plugins="import")
        _check_base(cfg, info)
        tokenizer = Tokenizer.load(local / TOKENIZER_FILE)
        model = _skeleton(cfg, tokenizer, local)
        read_model(local, model)
        strategy = registry.STRATEGIES.get(cfg.training.strategy)
        weights = strategy.export_weights(model, cfg.training, None)
        return info, write_export(model, tokenizer, cfg, out, weights)


def _store_and_checkpoint(target: str) -> tuple[str, tuple[int, int] | None]:
    head, _, last = target.rstrip("/").rpartition("/")
    parsed = parse_checkpoint_dir(last)
    return (head, parsed) if parsed is not None and head else (target, None)


def _check_base(cfg: TrainingConfig, info: CheckpointInfo) -> None:
    """A LoRA checkpoint exports only onto the base it was trained on (by sha256)."""
    saved = info.manifest.meta.get("base") if info.manifest else None
    if cfg.model.lora is None or cfg.model.pretrained is None or not isinstance(saved, dict):
        return
    if saved.get("sha256") != lora.base_digest(cfg.model.pretrained):
        raise ConfigError(
            "model.pretrained",
            [f"{cfg.model.pretrained} is not the base {info.uri} was trained on (sha256)"],
        )


def _skeleton(cfg: TrainingConfig, tokenizer: Tokenizer, local: Path) -> nn.Module:
    """The model's modules; the checkpoint's weights replace what trains. A LoRA model is
    its base, loaded again from its reference, with fresh adapters."""
    hf_config = local / HF_CONFIG_FILE
    if hf_config.is_file() and cfg.model.lora is None:
        import transformers
        from transformers import AutoConfig

        fields = json.loads(hf_config.read_text())
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        auto = registry.MODEL_ADAPTERS.get(cfg.model.adapter).auto_class
        model: nn.Module = getattr(transformers, auto).from_config(config)
        return model
    adapter = registry.MODEL_ADAPTERS.get(cfg.model.adapter)(cfg.model, tokenizer.vocab_size)
    built: nn.Module = adapter.build_model()
    # The modules the strategy adds (a progressive trunk's adapters) hold weights too.
    registry.STRATEGIES.get(cfg.training.strategy).configure_model(built, cfg.training)
    return built
