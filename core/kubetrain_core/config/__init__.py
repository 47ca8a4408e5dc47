"""Trainer configuration: pydantic models, loading and overrides. Imports no torch."""

from kubetrain_core.config.data import DataConfig, SplitConfig, TokenizerConfig
from kubetrain_core.config.evaluation import EvaluationConfig
from kubetrain_core.config.loading import (
    ConfigError,
    apply_overrides,
    format_validation_error,
    load_config,
    parse_config,
    to_yaml,
)
from kubetrain_core.config.model import LoraConfig, ModelConfig, QuantizationConfig
from kubetrain_core.config.schema import (
    CallbackConfig,
    CheckpointConfig,
    ExtensionsConfig,
    LossConfig,
    MetricsConfig,
    OptimizationConfig,
    OptimizerConfig,
    RecoveryConfig,
    S3Config,
    SchedulerConfig,
    TrainingConfig,
)
from kubetrain_core.config.stackwise import (
    EndToEndConfig,
    ProgressiveConfig,
    RackConfig,
    TrunkAdaptersConfig,
)
from kubetrain_core.config.tracking import WandbConfig, WebhookConfig
from kubetrain_core.config.training import (
    CurriculumConfig,
    CurriculumStage,
    EarlyStoppingConfig,
    FinetuneConfig,
    LrScale,
    MlmConfig,
    TimeStepMasking,
    TrainingLoopConfig,
)

__all__ = [
    "CallbackConfig",
    "CheckpointConfig",
    "ConfigError",
    "CurriculumConfig",
    "CurriculumStage",
    "DataConfig",
    "EarlyStoppingConfig",
    "EndToEndConfig",
    "EvaluationConfig",
    "ExtensionsConfig",
    "FinetuneConfig",
    "LoraConfig",
    "LossConfig",
    "LrScale",
    "MetricsConfig",
    "MlmConfig",
    "ModelConfig",
    "OptimizationConfig",
    "OptimizerConfig",
    "ProgressiveConfig",
    "QuantizationConfig",
    "RackConfig",
    "RecoveryConfig",
    "S3Config",
    "SchedulerConfig",
    "SplitConfig",
    "TimeStepMasking",
    "TokenizerConfig",
    "TrainingConfig",
    "TrainingLoopConfig",
    "TrunkAdaptersConfig",
    "WandbConfig",
    "WebhookConfig",
    "apply_overrides",
    "format_validation_error",
    "load_config",
    "parse_config",
    "to_yaml",
]
