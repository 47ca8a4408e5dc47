"""The `model` section: the native Transformer's sizes, or a Hugging Face model."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubetrain_core import cel, registry
from kubetrain_core.config.base import LOCATION, Name, Section, registered

HF_MODEL_ADAPTERS = frozenset({"hf_causal_lm", "hf_seq2seq"})
"""Adapters that build a transformers model from `pretrained` or `hf_config`."""


class ModelConfig(Section):
    """The network and the adapter that feeds it batches and computes its loss."""

    adapter: Annotated[Name, registered(registry.MODEL_ADAPTERS)] = "standard"
    """Model adapter (registry ``model adapter``): ``standard`` (the native Transformer
    sized by the fields below), ``hf_causal_lm`` or ``hf_seq2seq`` (a transformers
    causal or encoder-decoder LM from ``pretrained`` or ``hf_config``)."""
    architecture: Annotated[Name, registered(registry.MODELS)] = "transformer"
    """Network architecture built by the ``standard`` adapter."""
    d_model: int = Field(128, ge=8, le=16384)
    """Width of the residual stream."""
    n_layers: int = Field(2, ge=1, le=256)
    """Number of Transformer blocks."""
    n_heads: int = Field(4, ge=1, le=256)
    """Attention heads per block; must divide d_model."""
    d_ff: int | None = Field(None, ge=8, le=65536)
    """Hidden width of the MLP; default 4 * d_model."""
    max_seq_len: int = Field(256, ge=8, le=131072)
    """Longest sequence the position embedding covers; must be >= data.seq_len."""
    dropout: float = Field(0.0, ge=0.0, le=0.9)
    """Dropout probability in attention and MLP outputs (native Transformer)."""
    tie_embeddings: bool = True
    """Share the token embedding with the output projection."""
    gradient_checkpointing: bool = False
    """Recompute block activations in backward to save memory (every adapter)."""
    pretrained: LOCATION | None = None
    """hf_* adapters: a ``save_pretrained`` directory (config, safetensors weights,
    tokenizer) as a local path (relative to the config file) or an ``s3://`` URI. A hub
    id is used only when it is already in the local Hugging Face cache: nothing is
    downloaded at run time."""
    hf_config: dict[str, Any] | None = Field(None, max_length=256)
    """hf_* adapters without ``pretrained``: a transformers config given inline
    (``model_type`` and its fields, e.g. ``{model_type: llama, hidden_size: 64}``),
    initialised from scratch; ``vocab_size`` defaults to the tokenizer's."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """hf_* adapters: the attention kernel (``flash_attention_2`` needs CUDA and the
    flash-attn package)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """hf_* adapters: the dtype the weights are held in. Keep float32 and set
    training.precision for mixed precision; lower it for pure low-precision weights."""

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                "!has(self.d_model) || !has(self.n_heads) || self.d_model % self.n_heads == 0",
                "d_model must be divisible by n_heads",
                fieldPath=".n_heads",
            ),
            cel.rule(
                "!has(self.pretrained) || !has(self.hf_config)",
                "set model.pretrained or model.hf_config, not both",
                fieldPath=".hf_config",
            ),
        )
    )

    @property
    def is_hf(self) -> bool:
        return self.adapter in HF_MODEL_ADAPTERS

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.pretrained is not None and self.hf_config is not None:
            raise ValueError("set model.pretrained or model.hf_config, not both")
        if self.is_hf and self.pretrained is None and self.hf_config is None:
            raise ValueError(
                f"model.adapter {self.adapter!r} needs model.pretrained (a save_pretrained "
                "directory or s3:// URI) or model.hf_config (a transformers config to "
                "train from scratch)"
            )
        if self.hf_config is not None and not isinstance(self.hf_config.get("model_type"), str):
            raise ValueError(
                "model.hf_config needs a model_type (e.g. llama, gpt2, qwen2) naming the "
                "transformers architecture"
            )
        if self.adapter == "standard" and (self.pretrained or self.hf_config):
            raise ValueError(
                "model.pretrained and model.hf_config need a Hugging Face adapter: "
                "set model.adapter: hf_causal_lm (or hf_seq2seq)"
            )
        return self
