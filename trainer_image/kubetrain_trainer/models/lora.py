"""LoRA and QLoRA through peft: adapters on a frozen pretrained base.

`model.lora` wraps the model the hf_* adapter loaded with `get_peft_model`, so only
the adapters train. A checkpoint holds only what trains (state.py saves without
frozen parameters); the base is referenced by `model.pretrained` and the sha256 of
its weights, checked again on resume, never copied. `model.quantization` loads the
frozen base in 4 or 8 bits with bitsandbytes (QLoRA), which needs CUDA.

The export holds the adapter directory (`adapter/`: adapter_config.json and
adapter_model.safetensors, ~MBs, what `PeftModel.from_pretrained` loads) and the
merged model: the base reloaded in full precision with the adapter folded in
(`merge_and_unload`), which plain transformers loads.
"""

from __future__ import annotations

import hashlib
import logging
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubetrain_core.config import ConfigError
from kubetrain_core.config.model import ModelConfig
from kubetrain_trainer.pretrained import local_dir

ADAPTER_DIR = "adapter"


def peft_module() -> Any:
    # bitsandbytes, imported by peft, warns on CPU that an optional kernel package (which
    # would download from a hub) is missing: expected here, and nothing is downloaded.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import peft

    return peft


def quantization_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """from_pretrained's arguments for a 4/8-bit frozen base (none without
    model.quantization); ConfigError where it cannot run."""
    q = cfg.quantization
    if q is None:
        return {}
    if not torch.cuda.is_available():
        raise ConfigError(
            "model.quantization",
            [
                "QLoRA's 4/8-bit base needs a CUDA GPU (bitsandbytes); on this machine "
                "remove model.quantization to train LoRA on the full-precision base"
            ],
        )
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=q.bits == 4,
        load_in_8bit=q.bits == 8,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
    )
    return {"quantization_config": bnb, "device_map": {"": torch.cuda.current_device()}}


def wrap(model: nn.Module, cfg: ModelConfig, task_type: str | None) -> nn.Module:
    """`model` with LoRA adapters where model.lora says; every other weight frozen."""
    lora = cfg.lora
    if lora is None:
        return model
    peft = peft_module()
    if cfg.quantization is not None:
        model = peft.prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing
        )
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
    )
    try:
        wrapped: nn.Module = peft.get_peft_model(model, config)
    except ValueError as err:  # no default targets for the architecture, or no match
        raise ConfigError("model.lora.target_modules", [str(err)]) from None
    return wrapped


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; peft counts a 4-bit weight's packed elements right."""
    if is_lora(model):
        counted: tuple[int, int] = model.get_nb_trainable_parameters()  # type: ignore[operator]
        return counted
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@cache
def base_digest(location: str) -> str:
    """sha256 over the base's weight files (names and bytes, in name order): what a
    LoRA checkpoint, which holds no base weights, must be resumed on."""
    directory = local_dir(location, "model.pretrained")
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as weights:
            while chunk := weights.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def save_adapter(
    model: nn.Module, directory: Path, weights: dict[str, torch.Tensor] | None
) -> None:
    """The peft adapter directory; `weights`: the whole state dict of a sharded model."""
    save: Any = model.save_pretrained
    if weights is not None:
        save(str(directory), state_dict=peft_module().get_peft_model_state_dict(model, weights))
    else:
        save(str(directory))


def merged(cfg: ModelConfig, auto_class: str, adapter_dir: Path) -> nn.Module:
    """The base reloaded in full precision on the CPU with the adapter folded into its
    weights: a plain transformers model (a quantised base cannot be merged exactly)."""
    import transformers

    assert cfg.pretrained is not None  # model.lora requires it (config validation)
    base = getattr(transformers, auto_class).from_pretrained(
        str(local_dir(cfg.pretrained, "model.pretrained")), local_files_only=True
    )
    with_adapter = peft_module().PeftModel.from_pretrained(base, str(adapter_dir))
    model: nn.Module = with_adapter.merge_and_unload()
    return model
