"""Model side of the trainer: architectures and the adapters that feed them."""

from kubetrain_trainer.models.adapters import ModelAdapter, StandardModelAdapter
from kubetrain_trainer.models.transformer import Transformer

__all__ = ["ModelAdapter", "StandardModelAdapter", "Transformer"]
