"""The `training` section: how long the loop runs, how a step is computed (the
strategy, with the options of the built-in ones beside it) and when it stops early."""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubetrain_core import cel, registry
from kubetrain_core.config.base import MetricMode, MetricName, Name, Section, registered
from kubetrain_core.config.stackwise import EndToEndConfig, ProgressiveConfig

ParamPattern = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.*?]+$")]
"""A shell-style pattern (fnmatch: * and ?) over parameter names as the model's
named_parameters() gives them, e.g. ``tok_emb.*`` or ``*.attn.*``."""


class EarlyStoppingConfig(Section):
    """Stop when the validation metric stops improving."""

    patience: int | None = Field(None, ge=1, le=100_000)
    """Evaluations without improvement before stopping; null disables early stopping."""
    metric: MetricName = "val_loss"
    """Validation metric to watch: val_loss, val_perplexity, or val_<name> of an
    evaluation metric (val_bleu, val_rougeL, ...)."""
    mode: MetricMode = "auto"
    """Which way the metric improves: min, max, or auto (lower for *loss and
    *perplexity, higher for every other metric)."""
    min_delta: float = Field(0.0, ge=0.0, le=1e6)
    """Smallest change in the improving direction that counts as an improvement."""


class LrScale(Section):
    """A learning-rate multiplier for the parameters whose names match a pattern."""

    pattern: ParamPattern
    """Parameter names it applies to (fnmatch)."""
    scale: float = Field(gt=0.0, le=1000.0)
    """Multiplier of the scheduled learning rate."""


_FINETUNE_EMPTY = (
    "training.finetune changes nothing: set freeze, freeze_blocks, lr_scales or"
    " layer_lr_decay (or use training.strategy: standard)"
)


class FinetuneConfig(Section):
    """Strategy ``finetune``: adapt a pretrained model, freezing part of it and giving
    its parts their own learning rates. Frozen weights are not checkpointed: they are
    reloaded from model.pretrained (checked by sha256), like a LoRA base."""

    freeze: list[ParamPattern] = Field(default_factory=list, max_length=64)
    """Parameters that do not train (fnmatch patterns; each must match something)."""
    freeze_blocks: int = Field(0, ge=0, le=10_000)
    """Also freeze the first N Transformer blocks (the modules the model names in
    _no_split_modules, in order) and the embeddings before them."""
    lr_scales: list[LrScale] = Field(default_factory=list, max_length=64)
    """Per-group learning rates, the first matching pattern wins (unmatched: 1), e.g. a
    lower LR for the body than the head: [{pattern: lm_head.*, scale: 1}, {pattern: '*',
    scale: 0.1}]."""
    layer_lr_decay: float | None = Field(None, gt=0.0, le=1.0)
    """Layer-wise LR decay: block i of N learns at decay^(N-i) times the LR, the
    embeddings at decay^(N+1), what follows the last block at 1 (multiplies lr_scales)."""

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                "(has(self.freeze) && size(self.freeze) > 0)"
                " || (has(self.freeze_blocks) && self.freeze_blocks > 0)"
                " || (has(self.lr_scales) && size(self.lr_scales) > 0)"
                " || has(self.layer_lr_decay)",
                _FINETUNE_EMPTY,
            )
        )
    )

    @property
    def freezes(self) -> bool:
        return bool(self.freeze) or self.freeze_blocks > 0

    @model_validator(mode="after")
    def _changes_something(self) -> Self:
        if not (self.freezes or self.lr_scales or self.layer_lr_decay is not None):
            raise ValueError(_FINETUNE_EMPTY)
        return self


_MLM_FRACTIONS = "training.mlm: mask_fraction + random_fraction must be at most 1"
_TIME_STEPS = (
    "training.mlm.time_steps: the time steps of mask_fractions and bins must be in"
    " [0, num_time_steps)"
)
_STEPS = "(has(self.num_time_steps) ? self.num_time_steps : 10)"


class TimeStepMasking(Section):
    """Seed 003's time-step masking: each sequence draws a time step t (uniformly from
    `bins`) and that share of its tokens is selected for prediction, so the objective's
    difficulty varies with t, as in a masked-diffusion model. The draw is seeded like
    the masks: resume is exact."""

    num_time_steps: int = Field(10, ge=1, le=10_000)
    """Time steps t = 0 .. num_time_steps - 1."""
    bins: list[Annotated[int, Field(ge=0, le=9_999)]] | None = Field(
        None, min_length=1, max_length=10_000
    )
    """The time steps sequences draw from (the seed's time_step_bins); unset: all."""
    mask_fractions: dict[int, Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(
        min_length=1, max_length=64
    )
    """Share of a sequence's tokens selected at time step t, by t (the seed's
    time_step_mask_fractions, e.g. {0: 0.15, 5: 0.5, 9: 0.9}); linear between the time
    steps named, constant before the first and after the last."""
    per_sequence: bool = False
    """Draw a sequence's mask at time step t from the sequence and t alone (not the
    step), so a sequence drawn again at the same t is the same input: what lets
    training.progressive.cache hit in training, not only in evaluation."""

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                f"self.mask_fractions.all(k, k.matches('^[0-9]+$') && int(k) < {_STEPS})"
                f" && (!has(self.bins) || self.bins.all(b, b < {_STEPS}))",
                _TIME_STEPS,
                fieldPath=".mask_fractions",
            )
        )
    )

    @model_validator(mode="after")
    def _in_range(self) -> Self:
        steps = [*self.mask_fractions, *(self.bins or [])]
        if any(not 0 <= t < self.num_time_steps for t in steps):
            raise ValueError(_TIME_STEPS)
        return self

    def fraction(self, time_step: float) -> float:
        """The share of tokens selected at `time_step` (interpolated)."""
        known = sorted(self.mask_fractions.items())
        if time_step <= known[0][0]:
            return known[0][1]
        for (t0, f0), (t1, f1) in pairwise(known):
            if time_step <= t1:
                return f0 + (f1 - f0) * (time_step - t0) / (t1 - t0)
        return known[-1][1]

    def time_steps(self) -> list[int]:
        """The time steps sequences draw from."""
        return list(self.bins) if self.bins else list(range(self.num_time_steps))


class MlmConfig(Section):
    """Strategy ``pretrain_mlm`` (BERT's masked language modelling): select
    ``mask_probability`` of the tokens; of those, replace ``mask_fraction`` by the mask
    token, ``random_fraction`` by a random token and keep the rest; learn only the
    selected ones. The draw is a pure function of seed and step: resume is exact."""

    mask_probability: float = Field(0.15, gt=0.0, lt=1.0)
    """Share of the tokens selected for prediction."""
    mask_fraction: float = Field(0.8, ge=0.0, le=1.0)
    """Share of the selected tokens replaced by the mask token."""
    random_fraction: float = Field(0.1, ge=0.0, le=1.0)
    """Share of the selected tokens replaced by a random token (the rest are kept)."""
    time_steps: TimeStepMasking | None = None
    """Each sequence's selected share set by a time step it draws, in place of
    mask_probability; unset: mask_probability for every sequence."""

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                "(has(self.mask_fraction) ? self.mask_fraction : 0.8)"
                " + (has(self.random_fraction) ? self.random_fraction : 0.1) <= 1.0",
                _MLM_FRACTIONS,
                fieldPath=".random_fraction",
            )
        )
    )

    @model_validator(mode="after")
    def _fractions(self) -> Self:
        if self.mask_fraction + self.random_fraction > 1.0 + 1e-12:
            raise ValueError(_MLM_FRACTIONS)
        return self


class CurriculumStage(Section):
    """From `start_step` on (until the next stage): shorter sequences and/or a subset."""

    start_step: int = Field(ge=0, le=1_000_000_000)
    """First optimizer step of the stage; the first stage starts at 0."""
    seq_len: int | None = Field(None, ge=1, le=131072)
    """Tokens per sequence during the stage (the first seq_len of each sample, at most
    data.seq_len); null: data.seq_len."""
    data_fraction: float = Field(1.0, gt=0.0, le=1.0)
    """Train on the first fraction of the training samples (in corpus order, so order
    the data easy to hard), each stage in its own shuffled order."""


_STAGES_ORDER = (
    "training.curriculum.stages: the first stage has start_step 0 and start steps increase strictly"
)


class CurriculumConfig(Section):
    """Strategy ``curriculum``: training that grows harder in stages. The stage of a
    step is a function of the step, so a resumed run is in the stage it left."""

    stages: list[CurriculumStage] = Field(min_length=1, max_length=64)
    """Stages in order, e.g. [{start_step: 0, seq_len: 64}, {start_step: 200}]."""

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                "self.stages[0].start_step == 0"
                " && self.stages.map(s, s.start_step).isSorted()"
                " && self.stages.all(s, self.stages.exists_one(t, t.start_step == s.start_step))",
                _STAGES_ORDER,
                fieldPath=".stages",
            )
        )
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        starts = [s.start_step for s in self.stages]
        if starts[0] != 0 or any(a >= b for a, b in pairwise(starts)):
            raise ValueError(f"{_STAGES_ORDER} (got {starts})")
        return self


_FSDP_FP16 = (
    "training.precision fp16 needs loss scaling that agrees across shards, which fsdp"
    " does not do: use bf16 (same memory, no scaling) or parallelism: ddp"
)
# The built-in strategies' option sections: which strategies read each one, and the
# strategies that cannot run without theirs.
SECTION_STRATEGIES = {
    "finetune": ("finetune",),
    "mlm": ("pretrain_mlm", "progressive", "end_to_end"),
    "curriculum": ("curriculum",),
    "progressive": ("progressive",),
    "end_to_end": ("end_to_end",),
}
REQUIRED_SECTIONS = {
    "finetune": "finetune",
    "curriculum": "curriculum",
    "progressive": "progressive",
}
_FSDP_PROGRESSIVE = (
    "training.strategy progressive changes which parameters train at each stage, which"
    " fsdp's shards cannot follow: use parallelism: ddp"
)


def _misplaced(section: str) -> str:
    strategies = SECTION_STRATEGIES[section]
    named = " or ".join(filter(None, (", ".join(strategies[:-1]), strategies[-1])))
    return (
        f"training.{section} configures the {named} strategy: set"
        f" training.strategy: {strategies[0]}, or remove training.{section}"
    )


def _missing(strategy: str, section: str) -> str:
    return f"training.strategy {strategy} needs its options in training.{section}"


def _section_rules() -> list[dict[str, str]]:
    """Each built-in strategy's section only with it; the required ones always with it."""
    rules = [
        cel.rule(
            f"!has(self.{section}) || (has(self.strategy) && self.strategy in {list(strategies)})",
            _misplaced(section),
            fieldPath=f".{section}",
        )
        for section, strategies in SECTION_STRATEGIES.items()
    ]
    return rules + [
        cel.rule(
            f"!has(self.strategy) || self.strategy != '{strategy}' || has(self.{section})",
            _missing(strategy, section),
            fieldPath=f".{section}",
        )
        for strategy, section in REQUIRED_SECTIONS.items()
    ]


class TrainingLoopConfig(Section):
    """How long to train and how each step runs."""

    strategy: Annotated[Name, registered(registry.STRATEGIES)] = "standard"
    """Training strategy (registry ``training strategy``): standard, finetune (options
    in training.finetune), pretrain_mlm (training.mlm), curriculum (training.curriculum),
    progressive and end_to_end (seed 003's stack-wise training: training.progressive,
    training.end_to_end; with training.mlm for a masked objective), or a plugin's."""
    max_steps: int | None = Field(None, ge=1, le=1_000_000_000)
    """Optimizer steps to run; if null, computed from num_epochs."""
    num_epochs: float | None = Field(None, gt=0.0, le=1_000_000)
    """Passes over the training split; used when max_steps is null."""
    eval_steps: int = Field(100, ge=1, le=1_000_000_000)
    """Validate every this many steps (and at the end)."""
    eval_batches: int = Field(8, ge=1, le=100_000)
    """Validation micro-batches per evaluation on each process."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast dtype: bf16, or fp16 with a GradScaler; fp32 disables AMP."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto picks CUDA (one GPU per local rank, NCCL) when present, else CPU (gloo)."""
    seed: int = Field(1234, ge=0, le=2**31 - 1)
    """Seeds weights, data order and dropout; batch content is a pure function of seed and step."""
    loss_ema_decay: float = Field(0.9, ge=0.0, lt=1.0)
    """Smoothing of the reported loss EMA."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    """How processes share the work: ``ddp`` keeps a whole replica per process; ``fsdp``
    (FSDP2, fully_shard per block) splits parameters, gradients and optimizer state
    across them, for models that do not fit one device. Checkpoints reshard: a run
    saved by N processes resumes with any number. One process trains unwrapped."""
    process_group_timeout_seconds: int | None = Field(None, ge=10, le=86_400)
    """How long a collective (and the process group's start) may wait for the other ranks
    before it fails, so a lost peer ends the attempt instead of hanging it; unset:
    torch's default (10 min with NCCL, 30 with gloo)."""
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    finetune: FinetuneConfig | None = None
    mlm: MlmConfig | None = None
    curriculum: CurriculumConfig | None = None
    progressive: ProgressiveConfig | None = None
    end_to_end: EndToEndConfig | None = None

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                "has(self.max_steps) || has(self.num_epochs)",
                "set training.max_steps or training.num_epochs",
            ),
            cel.rule(
                "!has(self.parallelism) || self.parallelism != 'fsdp'"
                " || !has(self.precision) || self.precision != 'fp16'",
                _FSDP_FP16,
                fieldPath=".precision",
            ),
            cel.rule(
                "!has(self.parallelism) || self.parallelism != 'fsdp'"
                " || !has(self.strategy) || self.strategy != 'progressive'",
                _FSDP_PROGRESSIVE,
                fieldPath=".parallelism",
            ),
            *_section_rules(),
        )
    )

    @model_validator(mode="after")
    def _has_length(self) -> Self:
        if self.max_steps is None and self.num_epochs is None:
            raise ValueError("set training.max_steps or training.num_epochs")
        return self

    @model_validator(mode="after")
    def _fsdp_precision(self) -> Self:
        if self.parallelism == "fsdp" and self.precision == "fp16":
            raise ValueError(_FSDP_FP16)
        if self.parallelism == "fsdp" and self.strategy == "progressive":
            raise ValueError(_FSDP_PROGRESSIVE)
        return self

    @model_validator(mode="after")
    def _strategy_sections(self) -> Self:
        for section, strategies in SECTION_STRATEGIES.items():
            if getattr(self, section) is not None and self.strategy not in strategies:
                raise ValueError(_misplaced(section))
        required = REQUIRED_SECTIONS.get(self.strategy)
        if required is not None and getattr(self, required) is None:
            raise ValueError(_missing(self.strategy, required))
        return self

    @property
    def masks(self) -> bool:
        """Whether the objective is masked language modelling (it needs an encoder)."""
        return self.strategy == "pretrain_mlm" or self.mlm is not None

    @property
    def freezes(self) -> bool:
        """Whether the strategy freezes weights, which then come from model.pretrained."""
        return self.finetune is not None and self.finetune.freezes
