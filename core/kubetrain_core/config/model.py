"""The `model` section: the native Transformer's sizes, or a Hugging Face model."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubetrain_core import cel, registry
from kubetrain_core.config.base import LOCATION, Name, Section, registered

HF_MODEL_ADAPTERS = frozenset({"hf_causal_lm", "hf_seq2seq", "hf_masked_lm"})
"""Adapters that build a transformers model from `pretrained` or `hf_config`."""


_LORA_NEEDS_BASE = (
    "model.lora adapts a pretrained model: set model.pretrained (a save_pretrained "
    "directory or s3:// URI) with an hf_* adapter"
)
_QUANTIZATION_NEEDS_LORA = (
    "model.quantization freezes the base in 4 or 8 bits, which only LoRA can then train:"
    " set model.lora too"
)
_CAUSAL_IS_NATIVE = (
    "model.causal: false makes the native transformer an encoder; a Hugging Face encoder"
    " is model.adapter hf_masked_lm (leave model.causal out)"
)
ModuleName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.*]+$")]


class LoraConfig(Section):
    """LoRA (peft): low-rank adapters on a frozen pretrained model; only they train, and
    checkpoints hold only them (the base is referenced by model.pretrained and its
    sha256, not copied)."""

    r: int = Field(8, ge=1, le=1024)
    """Rank of each adapter's update matrices."""
    alpha: int = Field(16, ge=1, le=4096)
    """Scaling numerator: the update is multiplied by alpha / r."""
    dropout: float = Field(0.05, ge=0.0, le=0.9)
    """Dropout on the adapters' input."""
    target_modules: list[ModuleName] | None = Field(None, min_length=1, max_length=64)
    """Names (or name suffixes) of the linear layers that get adapters, e.g. [q_proj,
    v_proj]; null: peft's default for the architecture (Llama, Qwen2: q_proj, v_proj;
    GPT-2: c_attn; T5: q, v)."""


class QuantizationConfig(Section):
    """QLoRA: the frozen base held in 4 or 8 bits by bitsandbytes (CUDA GPUs only)."""

    bits: Literal[4, 8] = 4
    """Bits per frozen weight."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type: nf4 (normal float, the QLoRA paper's) or fp4."""
    double_quant: bool = True
    """4-bit: quantise the quantisation constants too (about 0.4 bits per weight saved)."""
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """The dtype 4-bit weights are dequantised to for each matmul."""


class ModelConfig(Section):
    """The network and the adapter that feeds it batches and computes its loss."""

    adapter: Annotated[Name, registered(registry.MODEL_ADAPTERS)] = "standard"
    """Model adapter (registry ``model adapter``): ``standard`` (the native Transformer
    sized by the fields below), ``hf_causal_lm``, ``hf_seq2seq`` or ``hf_masked_lm`` (a
    transformers causal LM, encoder-decoder LM or BERT-style encoder from ``pretrained``
    or ``hf_config``)."""
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
    causal: bool = True
    """Native transformer: each position attends only to earlier ones (a language
    model); false: to the whole sequence (an encoder, for training.strategy
    pretrain_mlm). Hugging Face encoders: model.adapter hf_masked_lm."""
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
    lora: LoraConfig | None = None
    """hf_* adapters with model.pretrained: train LoRA adapters instead of every weight;
    the export holds the adapter (export/adapter) and the merged model."""
    quantization: QuantizationConfig | None = None
    """With model.lora: hold the frozen base in 4 or 8 bits (QLoRA; needs a CUDA GPU and
    bitsandbytes, refused on CPU)."""

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
            cel.rule(
                "!has(self.lora) || has(self.pretrained)", _LORA_NEEDS_BASE, fieldPath=".lora"
            ),
            cel.rule(
                "!has(self.causal) || self.causal || !has(self.adapter)"
                " || self.adapter == 'standard'",
                _CAUSAL_IS_NATIVE,
                fieldPath=".causal",
            ),
            cel.rule(
                "!has(self.quantization) || has(self.lora)",
                _QUANTIZATION_NEEDS_LORA,
                fieldPath=".quantization",
            ),
        )
    )

    @property
    def is_hf(self) -> bool:
        return self.adapter in HF_MODEL_ADAPTERS

    @property
    def reads_both_sides(self) -> bool:
        """An encoder: every position sees the whole sequence (masked LM only)."""
        return self.adapter == "hf_masked_lm" or not self.causal

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
        if self.lora is not None and self.pretrained is None:
            raise ValueError(_LORA_NEEDS_BASE)
        if self.quantization is not None and self.lora is None:
            raise ValueError(_QUANTIZATION_NEEDS_LORA)
        if not self.causal and self.adapter != "standard":
            raise ValueError(_CAUSAL_IS_NATIVE)
        if self.adapter == "standard" and (self.pretrained or self.hf_config):
            raise ValueError(
                "model.pretrained and model.hf_config need a Hugging Face adapter: "
                "set model.adapter: hf_causal_lm (or hf_seq2seq)"
            )
        return self
