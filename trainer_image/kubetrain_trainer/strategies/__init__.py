"""Training strategies, chosen by name (``training.strategy``): standard, finetune,
pretrain_mlm and curriculum, each importable on its own (the registry imports lazily)."""

from kubetrain_trainer.strategies.base import StandardStrategy, StepOutput, TrainingStrategy

__all__ = ["StandardStrategy", "StepOutput", "TrainingStrategy"]
