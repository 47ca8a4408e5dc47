"""The trainer's configuration tree (pydantic v2, no torch).

The tree mirrors the object tree: ``model`` configures the model adapter,
``data`` the dataset adapter, ``optimization`` the optimizer/scheduler/loss,
and so on. The same model is embedded in the TrainingJob CRD as
``spec.trainer``, so every field carries a docstring (it becomes the
``kubectl explain`` text) and every number, string and list is bounded.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from kubetrain_core import cel, registry
from kubetrain_core.config.base import (
    CHECKPOINT_URI_PATTERN,
    ENDPOINT_PATTERN,
    MetricMode,
    MetricName,
    Name,
    Section,
    registered,
)
from kubetrain_core.config.data import HF_TOKENIZER_ADAPTERS, TEXT_ADAPTERS, DataConfig
from kubetrain_core.config.evaluation import REFERENCE_ADAPTERS, EvaluationConfig
from kubetrain_core.config.model import HF_MODEL_ADAPTERS, ModelConfig
from kubetrain_core.config.tracking import WandbConfig, WebhookConfig
from kubetrain_core.config.training import TrainingLoopConfig


class OptimizerConfig(Section):
    """The optimizer; weight decay never applies to biases and norm weights."""

    name: Annotated[Name, registered(registry.OPTIMIZERS)] = "adamw"
    """Optimizer: adamw, adam, sgd or rmsprop (or any registered one)."""
    lr: float = Field(3e-4, gt=0.0, le=10.0)
    """Peak learning rate."""
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    """Decoupled (adamw) or L2 weight decay on weight matrices and embeddings."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = Field(1e-8, gt=0.0, le=1.0)
    """Adam / RMSprop epsilon."""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """Momentum for sgd and rmsprop."""
    alpha: float = Field(0.99, gt=0.0, lt=1.0)
    """RMSprop smoothing constant."""

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                "!has(self.betas) || self.betas.all(b, b >= 0.0 && b < 1.0)",
                "each beta must be in [0, 1)",
                fieldPath=".betas",
            )
        )
    )

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {list(v)}")
        return v


class SchedulerConfig(Section):
    """Learning-rate schedule, stepped once per optimizer step."""

    name: Annotated[Name, registered(registry.SCHEDULERS)] = "cosine"
    """Schedule: constant, linear_warmup, cosine or exponential (all with optional warmup)."""
    warmup_steps: int = Field(0, ge=0, le=10_000_000)
    """Steps of linear warmup from 0 to the peak LR."""
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Cosine: final LR as a fraction of the peak."""
    decay_rate: float = Field(0.999, gt=0.0, le=1.0)
    """Exponential: LR multiplier per step after warmup."""


class LossConfig(Section):
    """Training objective."""

    name: Annotated[Name, registered(registry.LOSSES)] = "cross_entropy"
    """Loss (registry ``loss``)."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """Mix this much of the uniform distribution into the targets."""
    ignore_index: int = Field(-100, ge=-1_000_000, le=-1)
    """Target id excluded from the loss (padding)."""


class OptimizationConfig(Section):
    """Optimizer, schedule, loss and the gradient path between them."""

    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    loss: LossConfig = LossConfig()
    max_grad_norm: float | None = Field(1.0, gt=0.0, le=1e6)
    """Clip the global gradient norm to this value; null disables clipping."""
    accumulation_steps: int = Field(1, ge=1, le=4096)
    """Micro-batches whose gradients are summed before each optimizer step."""
    global_batch_ranks: int | None = Field(None, ge=1, le=65536)
    """Ranks the global batch is sized for: every optimizer step trains data.batch_size x
    accumulation_steps x this many sequences whatever the world size, each rank running
    accumulation_steps x this / world size micro-batches (rounded up where the world
    size does not divide it, which makes the batch that much larger). An elastic
    TrainingJob sets it to its largest world, so a smaller gang trains on the same
    batches; null: the world size."""

    def step_micro_batches(self, world_size: int) -> int:
        """Micro-batches one optimizer step is planned to train, all ranks together."""
        return self.accumulation_steps * (self.global_batch_ranks or world_size)

    def micro_batches(self, world_size: int) -> int:
        """Micro-batches per rank and step in a world of `world_size` ranks."""
        return -(-self.step_micro_batches(world_size) // world_size)


class S3Config(Section):
    """S3-compatible object store settings; credentials come from the environment
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or a mounted Secret, never the config."""

    endpoint: str | None = Field(None, max_length=2048, pattern=ENDPOINT_PATTERN)
    """Endpoint URL, e.g. http://minio:9000 (no credentials in it); null uses AWS."""
    region: str | None = Field(None, max_length=64)
    """Region name."""


class CheckpointConfig(Section):
    """Committed, verifiable checkpoints (one directory per step, manifest written last)."""

    uri: str | None = Field(
        None, max_length=2048, pattern=rf"{CHECKPOINT_URI_PATTERN}|^[^:\x00-\x1f]+$"
    )
    """s3://bucket/prefix, file:///abs/path or a local path; default <run_dir>/checkpoints."""
    interval_steps: int = Field(100, ge=1, le=1_000_000_000)
    """Save every this many optimizer steps (and at the end)."""
    keep_last: int = Field(3, ge=1, le=10_000)
    """Committed checkpoints kept by recency (the newest is never deleted)."""
    keep_best: int = Field(0, ge=0, le=10_000)
    """Extra checkpoints kept by best validation metric."""
    best_metric: MetricName = "val_loss"
    """Metric that ranks checkpoints for the best ones kept: val_loss, val_perplexity or
    val_<name> of an evaluation metric (val_bleu, val_rougeL, ...)."""
    best_mode: MetricMode = "auto"
    """Which way best_metric improves: min, max, or auto (lower for *loss and
    *perplexity, higher for every other metric)."""
    resume: bool = True
    """Resume from the newest committed checkpoint under uri when one exists; false starts
    a new timeline on the job's first attempt (the old checkpoints are kept, never
    deleted) and later attempts resume within it."""
    async_upload: bool = True
    """The loop only copies its state into RAM; a background thread writes, uploads and
    commits it (one in flight, one extra copy of model + optimizer state per rank).
    false: the loop waits for the whole save."""
    s3: S3Config = S3Config()


class MetricsConfig(Section):
    """Where progress goes: JSONL, console, Prometheus, TensorBoard, W&B, a webhook."""

    log_steps: int = Field(10, ge=1, le=1_000_000)
    """Log a training record every this many steps."""
    jsonl: bool = True
    """Write <run_dir>/metrics.jsonl."""
    console: bool = True
    """Print log lines (rank 0) and a progress bar on a terminal."""
    port: int | None = Field(None, ge=1, le=65535)
    """Serve /metrics (Prometheus) and /progress (JSON) on rank 0; null disables."""
    tensorboard: bool = False
    """Also write TensorBoard event files under <run_dir>/tensorboard."""
    wandb: WandbConfig = WandbConfig()
    webhook: WebhookConfig = WebhookConfig()


class RecoveryConfig(Section):
    """Tier-1 recovery inside the trainer: the NaN and loss-spike guard."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "lr_scale" in data:
            raise ValueError(
                "lr_scale was replaced by lr_scale_percent, an integer percentage like"
                " faultTolerance.nan.lrScalePercent (lr_scale: 0.5 is lr_scale_percent: 50)"
            )
        return data

    enabled: bool = True
    """Check every step's loss and gradient norm."""
    max_consecutive_skips: int = Field(3, ge=0, le=1000)
    """Bad steps whose update is skipped before the last good state is restored."""
    max_restores: int = Field(2, ge=0, le=1000)
    """In-process restores before the trainer exits with the NaN exit code."""
    skip_batches: int = Field(0, ge=0, le=1_000_000)
    """Extra batches skipped after the offending ones when restoring."""
    lr_scale_percent: int = Field(100, ge=1, le=100)
    """Scale the LR to this percentage after each restore (e.g. 50), the form of
    faultTolerance.nan.lrScalePercent."""
    spike_zscore: float | None = Field(None, gt=0.0, le=1000.0)
    """Treat a loss this many standard deviations above the recent mean as a spike."""
    spike_window: int = Field(50, ge=5, le=100_000)
    """Steps in the loss window for the spike test."""
    good_after_steps: int = Field(10, ge=0, le=1_000_000)
    """A checkpoint counts as good once this many healthy steps follow it."""


class CallbackConfig(Section):
    """A callback chosen by name with its keyword options."""

    name: Annotated[Name, registered(registry.CALLBACKS)]
    """Callback (registry ``callback``)."""
    options: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=64)
    """Keyword arguments for the callback's constructor."""


class ExtensionsConfig(Section):
    """Hooks into the loop."""

    callbacks: list[CallbackConfig] = Field(default_factory=list, max_length=64)
    """Callbacks called at train/epoch/batch/validation/checkpoint begin and end."""


_METRICS_NEED_REFERENCES = (
    "evaluation.metrics score generated answers against the records' own: use data.adapter"
    " chat_jsonl or seq2seq_jsonl, or leave evaluation.metrics empty"
)
_BEAMS_NEED_HF = "evaluation.num_beams > 1 (beam search) needs an hf_* model adapter"
_FREEZE_NEEDS_BASE = (
    "training.finetune freezes weights that checkpoints then leave out and reload from"
    " model.pretrained: set model.pretrained (with an hf_* adapter), or drop freeze and"
    " freeze_blocks"
)
_MLM_NEEDS_ENCODER = (
    "training.strategy pretrain_mlm (or training.mlm) needs a model that reads both sides"
    " of a masked token: model.adapter hf_masked_lm, or the native transformer with"
    " model.causal: false"
)
_ENCODER_NEEDS_MLM = (
    "model.adapter hf_masked_lm and model.causal: false see the very token they would"
    " predict next: train them with training.strategy pretrain_mlm (or training.mlm)"
)
_MLM_DATA = (
    "training.strategy pretrain_mlm (or training.mlm) reads plain text: data.adapter"
    " text_file or jsonl_text"
)
_STAGE_TOO_LONG = "training.curriculum.stages: a stage's seq_len must be at most data.seq_len"
_QUANTIZED_NOT_SHARDED = (
    "model.quantization (a 4/8-bit base) cannot be sharded by training.parallelism fsdp:"
    " use ddp, whose replicas the quantisation already shrinks"
)


# CEL for TrainingLoopConfig.masks.
_MASKED_OBJECTIVE = (
    "(has(self.training.strategy) && self.training.strategy == 'pretrain_mlm')"
    " || has(self.training.mlm)"
)
# CEL for ModelConfig.reads_both_sides.
_MASKED_MODEL = (
    "(has(self.model) && has(self.model.adapter) && self.model.adapter == 'hf_masked_lm')"
    " || (has(self.model) && has(self.model.causal) && !self.model.causal)"
)


class TrainingConfig(Section):
    """Everything the trainer needs; the same document as TrainingJob spec.trainer."""

    run_dir: str = Field("runs/default", min_length=1, max_length=4096)
    """Local directory for metrics.jsonl, logs and (by default) checkpoints."""
    model: ModelConfig = ModelConfig()
    data: DataConfig
    optimization: OptimizationConfig = OptimizationConfig()
    training: TrainingLoopConfig
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: MetricsConfig = MetricsConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    extensions: ExtensionsConfig = ExtensionsConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    def for_world(self, world_size: int) -> TrainingConfig:
        """This config as `world_size` ranks run it: the global batch of
        optimization.global_batch_ranks kept through the micro-batches per rank."""
        opt = self.optimization
        micro = opt.micro_batches(world_size)
        fitted = opt.model_copy(update={"accumulation_steps": micro, "global_batch_ranks": None})
        return self.model_copy(update={"optimization": fitted})

    def global_batch(self, world_size: int) -> int:
        """Sequences one optimizer step trains in a world of `world_size` ranks."""
        return self.data.batch_size * self.optimization.micro_batches(world_size) * world_size

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                "!has(self.model) || !has(self.data.seq_len) || !has(self.model.max_seq_len)"
                " || (has(self.model.adapter) && self.model.adapter != 'standard')"
                " || self.data.seq_len <= self.model.max_seq_len",
                "data.seq_len exceeds model.max_seq_len; raise model.max_seq_len or lower"
                " data.seq_len",
                fieldPath=".data.seq_len",
            ),
            cel.rule(
                "!has(self.evaluation) || !has(self.evaluation.metrics)"
                " || size(self.evaluation.metrics) == 0"
                " || (has(self.data.adapter) && self.data.adapter in"
                f" {sorted(REFERENCE_ADAPTERS)})",
                _METRICS_NEED_REFERENCES,
                fieldPath=".evaluation.metrics",
            ),
            cel.rule(
                "!has(self.evaluation) || !has(self.evaluation.num_beams)"
                " || self.evaluation.num_beams <= 1"
                " || (has(self.model) && has(self.model.adapter)"
                f" && self.model.adapter in {sorted(HF_MODEL_ADAPTERS)})",
                _BEAMS_NEED_HF,
                fieldPath=".evaluation.num_beams",
            ),
            cel.rule(
                "!has(self.training.finetune)"
                " || ((!has(self.training.finetune.freeze)"
                " || size(self.training.finetune.freeze) == 0)"
                " && (!has(self.training.finetune.freeze_blocks)"
                " || self.training.finetune.freeze_blocks == 0))"
                " || (has(self.model) && has(self.model.pretrained))",
                _FREEZE_NEEDS_BASE,
                fieldPath=".training.finetune",
            ),
            cel.rule(
                f"!({_MASKED_OBJECTIVE}) || ({_MASKED_MODEL})",
                _MLM_NEEDS_ENCODER,
                fieldPath=".training.strategy",
            ),
            cel.rule(
                f"!({_MASKED_MODEL}) || {_MASKED_OBJECTIVE}",
                _ENCODER_NEEDS_MLM,
                fieldPath=".training.strategy",
            ),
            cel.rule(
                f"!({_MASKED_OBJECTIVE})"
                f" || !has(self.data.adapter) || self.data.adapter in {sorted(TEXT_ADAPTERS)}",
                _MLM_DATA,
                fieldPath=".data.adapter",
            ),
            cel.rule(
                "!has(self.training.curriculum) || self.training.curriculum.stages.all(s,"
                " !has(s.seq_len) || s.seq_len <= (has(self.data.seq_len) ? self.data.seq_len"
                f" : {DataConfig.model_fields['seq_len'].default}))",
                _STAGE_TOO_LONG,
                fieldPath=".training.curriculum.stages",
            ),
            cel.rule(
                "!has(self.model) || !has(self.model.quantization)"
                " || !has(self.training.parallelism) || self.training.parallelism != 'fsdp'",
                _QUANTIZED_NOT_SHARDED,
                fieldPath=".model.quantization",
            ),
        )
    )

    @model_validator(mode="after")
    def _sequence_fits_model(self) -> Self:
        if self.model.adapter == "standard" and self.data.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) exceeds model.max_seq_len "
                f"({self.model.max_seq_len}); raise model.max_seq_len or lower data.seq_len"
            )
        return self

    @model_validator(mode="after")
    def _resolve_tokenizer(self) -> Self:
        """A tokenizer without a path is the model's own (``auto``, ``pretrained``);
        ``auto`` is then written as what it resolved to, as checkpoints record it."""
        tokenizer = self.data.tokenizer
        if tokenizer.kind in ("auto", "pretrained") and tokenizer.path is None:
            if tokenizer.kind == "pretrained" and self.model.pretrained is None:
                raise ValueError(
                    "data.tokenizer.kind pretrained needs data.tokenizer.path (a Hugging "
                    "Face tokenizer directory) or model.pretrained"
                )
            tokenizer.path = self.model.pretrained
        tokenizer.kind = tokenizer.resolved_kind
        return self

    @model_validator(mode="after")
    def _generation_has_references(self) -> Self:
        scored = self.evaluation
        if scored.metrics and self.data.adapter not in REFERENCE_ADAPTERS:
            raise ValueError(_METRICS_NEED_REFERENCES)
        if scored.num_beams > 1 and not self.model.is_hf:
            raise ValueError(_BEAMS_NEED_HF)
        return self

    @model_validator(mode="after")
    def _strategy_fits(self) -> Self:
        loop, model = self.training, self.model
        if loop.freezes and model.pretrained is None:
            raise ValueError(_FREEZE_NEEDS_BASE)
        mlm = loop.masks
        if mlm != model.reads_both_sides:
            raise ValueError(_MLM_NEEDS_ENCODER if mlm else _ENCODER_NEEDS_MLM)
        if mlm and self.data.adapter not in TEXT_ADAPTERS:
            raise ValueError(_MLM_DATA)
        stages = loop.curriculum.stages if loop.curriculum else []
        if any(s.seq_len is not None and s.seq_len > self.data.seq_len for s in stages):
            raise ValueError(f"{_STAGE_TOO_LONG} ({self.data.seq_len})")
        return self

    @model_validator(mode="after")
    def _quantized_base_is_not_sharded(self) -> Self:
        if self.model.quantization is not None and self.training.parallelism == "fsdp":
            raise ValueError(_QUANTIZED_NOT_SHARDED)
        return self

    @model_validator(mode="after")
    def _masks_match_the_loss(self) -> Self:
        if (
            self.data.adapter in HF_TOKENIZER_ADAPTERS
            and self.optimization.loss.ignore_index != -100
        ):
            raise ValueError(
                f"data.adapter {self.data.adapter!r} marks the targets it does not learn "
                "with -100: leave optimization.loss.ignore_index at -100"
            )
        return self
