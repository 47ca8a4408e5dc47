"""Trainer configuration: pydantic models, loading and overrides. Imports no torch."""

from kubetrain_core.config.data import DataConfig, SplitConfig, TokenizerConfig
from kubetrain_core.config.loading import (
    ConfigError,
    apply_overrides,
    format_validation_error,
    load_config,
    parse_config,
    to_yaml,
)
from kubetrain_core.config.model import ModelConfig
from kubetrain_core.config.schema import (
    CallbackConfig,
    CheckpointConfig,
    EarlyStoppingConfig,
    ExtensionsConfig,
    LossConfig,
    MetricsConfig,
    OptimizationConfig,
    OptimizerConfig,
    RecoveryConfig,
    S3Config,
    SchedulerConfig,
    TrainingConfig,
    TrainingLoopConfig,
)

__all__ = [
    "CallbackConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "EarlyStoppingConfig",
    "ExtensionsConfig",
    "LossConfig",
    "MetricsConfig",
    "ModelConfig",
    "OptimizationConfig",
    "OptimizerConfig",
    "RecoveryConfig",
    "S3Config",
    "SchedulerConfig",
    "SplitConfig",
    "TokenizerConfig",
    "TrainingConfig",
    "TrainingLoopConfig",
    "apply_overrides",
    "format_validation_error",
    "load_config",
    "parse_config",
    "to_yaml",
]
