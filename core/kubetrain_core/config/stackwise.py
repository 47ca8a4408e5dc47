"""`training.progressive` and `training.end_to_end`: seed 003's stack-wise training.

A model is a rack of stacks, a stack is `blocks_per_stack` consecutive Transformer
blocks (the modules the model names in _no_split_modules). Strategy ``progressive``
trains the rack one stack more per stage: stage k (from 0) runs stacks 0..k and
trains stack k on top of the others (the trunk). The stage is a function of the step
alone, so a resumed or rolled-back run is in the stage it left. Strategy
``end_to_end`` trains every stack at once: each on its own objective (``stackwise``)
or the rack as one model (``rackwise``).
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubetrain_core import cel
from kubetrain_core.config.base import Section


class RackConfig(Section):
    """How the model's blocks form stacks, and which of them the export writes apart."""

    blocks_per_stack: int = Field(1, ge=1, le=256)
    """Transformer blocks per stack (the seed's block_size); must divide the model's
    blocks (model.n_layers for the native transformer)."""
    save_stacks: bool = True
    """The export also holds each stack's weights on its own: stacks/stack-<k>.safetensors."""
    save_rack: bool = False
    """The export also holds the rack (every block, no embeddings or head) as
    rack.safetensors."""


class EndToEndConfig(RackConfig):
    """Strategy ``end_to_end``: every stack trains at every step."""

    scope: Literal["stackwise", "rackwise"] = "rackwise"
    """``stackwise``: each stack learns from its own loss (the shared final norm and head
    read its output; its input is the stack below's output, detached), so no gradient
    crosses a stack boundary; the reported loss is the mean over stacks, validation the
    last stack's. ``rackwise``: the rack as one model, the standard step."""


class ActivationCacheConfig(Section):
    """Seed 003's activation cache (its cache_mode rack): the frozen trunk's output per
    input row, kept for the stage, so a row seen again skips the trunk's forward."""

    max_mib: int = Field(512, ge=1, le=1_048_576)
    """Memory the cached activations may take, on the device that computed them (the
    seed's time_step_cache_size and store_all_time_steps, as a size); the least
    recently used rows go first."""


class TrunkAdaptersConfig(Section):
    """Seed 003's QLoRA: LoRA adapters (peft) on every linear layer of a frozen trunk, in
    full precision over the trunk's stored weights; a stack's adapters train from the
    stage its stack joins the trunk, and the export folds them into its weights."""

    r: int = Field(8, ge=1, le=1024)
    """Rank of each adapter (the seed's qlora.rank)."""
    alpha: float = Field(16.0, gt=0.0, le=4096.0)
    """Scale: an adapter adds (alpha / r) * B A to its layer's weight."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapters' input while training."""
    lr_scale: float = Field(1.0, gt=0.0, le=100.0)
    """The adapters' learning rate as a multiple of optimization.optimizer.lr (the
    seed's qlora.lr)."""


_CACHE_NEEDS_FROZEN = (
    "training.progressive.cache keeps the trunk's activations, which only a frozen trunk"
    " keeps constant: set trunk_strategy: frozen, or remove cache"
)
_PRECISION_NEEDS_FROZEN = (
    "training.progressive.trunk_precision stores the trunk's weights in lower precision,"
    " which only a frozen trunk can be: set trunk_strategy: frozen, or trunk_precision: fp32"
)
_ADAPTERS_NEED_FROZEN = (
    "training.progressive.trunk_adapters adapt a frozen trunk: set trunk_strategy: frozen,"
    " or remove trunk_adapters"
)
_ADAPTERS_CHANGE_CACHE = (
    "training.progressive.trunk_adapters train the trunk, so its activations change and"
    " cannot be cached: remove cache or trunk_adapters"
)


_FROZEN = "(!has(self.trunk_strategy) || self.trunk_strategy == 'frozen')"


class ProgressiveConfig(RackConfig):
    """Strategy ``progressive``: grow the model a stack per stage (the seed's
    target_stacks is the model's blocks / blocks_per_stack)."""

    stage_steps: int = Field(ge=1, le=1_000_000_000)
    """Optimizer steps per stage: stage k runs from step k * stage_steps; the last
    stage (the whole rack) runs to the end of training."""
    trunk_strategy: Literal["frozen", "scaled_lr"] = "frozen"
    """What the stacks below the new one do: ``frozen`` (no gradients, no dropout: a fixed
    feature extractor, with the embeddings before them; a head tied to the embeddings
    freezes with them), or ``scaled_lr`` (they keep training at trunk_lr_scale times
    the learning rate)."""
    trunk_lr_scale: float = Field(0.1, gt=0.0, le=1.0)
    """LR multiplier of the trunk with trunk_strategy scaled_lr."""
    trunk_precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """How a frozen trunk's stacks hold their weights (the seed's backbone_quantized and
    quantization_type): ``fp32`` as trained; ``bf16`` or ``fp16``: cast when the stack
    joins the trunk (half the memory), its blocks then compute in that precision, on
    CPUs and GPUs alike. Needs trunk_strategy frozen. The embeddings and head stay."""
    trunk_adapters: TrunkAdaptersConfig | None = None
    """LoRA adapters on the frozen trunk (the seed's QLoRA; needs trunk_strategy
    frozen, excludes cache); unset: the trunk stays exactly as trained."""
    cache: ActivationCacheConfig | None = None
    """Cache the frozen trunk's output per input row (needs trunk_strategy frozen);
    unset: the trunk runs at every step."""
    restart_schedule: bool = True
    """The LR schedule (optimization.scheduler: its warmup and decay) runs over each
    stage and restarts at the next, so every new stack gets its warmup and its anneal;
    false: one schedule over the whole run."""

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(f"!has(self.cache) || {_FROZEN}", _CACHE_NEEDS_FROZEN, fieldPath=".cache"),
            cel.rule(
                f"!has(self.trunk_precision) || self.trunk_precision == 'fp32' || {_FROZEN}",
                _PRECISION_NEEDS_FROZEN,
                fieldPath=".trunk_precision",
            ),
            cel.rule(
                f"!has(self.trunk_adapters) || {_FROZEN}",
                _ADAPTERS_NEED_FROZEN,
                fieldPath=".trunk_adapters",
            ),
            cel.rule(
                "!has(self.trunk_adapters) || !has(self.cache)",
                _ADAPTERS_CHANGE_CACHE,
                fieldPath=".trunk_adapters",
            ),
        )
    )

    @model_validator(mode="after")
    def _trunk_options_fit(self) -> Self:
        frozen = self.trunk_strategy == "frozen"
        if self.cache is not None and not frozen:
            raise ValueError(_CACHE_NEEDS_FROZEN)
        if self.trunk_precision != "fp32" and not frozen:
            raise ValueError(_PRECISION_NEEDS_FROZEN)
        if self.trunk_adapters is not None and not frozen:
            raise ValueError(_ADAPTERS_NEED_FROZEN)
        if self.trunk_adapters is not None and self.cache is not None:
            raise ValueError(_ADAPTERS_CHANGE_CACHE)
        return self

    def stage_at(self, step: int, stacks: int) -> int:
        """The stage (0-based) step `step` trains in, of a rack of `stacks` stacks."""
        return min(step // self.stage_steps, stacks - 1)
