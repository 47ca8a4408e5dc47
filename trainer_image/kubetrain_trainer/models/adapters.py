"""Model adapters: how a model is built, fed a batch and scored.

The training loop only talks to an adapter, so a model with other inputs (a
dialogue model with role masks, a multimodal one with images) plugs in as a new
adapter without touching the loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from kubetrain_core import registry
from kubetrain_core.config.model import ModelConfig
from kubetrain_trainer.data.base import Batch


class ModelAdapter(ABC):
    """Builds the network and turns a batch into a scalar loss."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        self.cfg = cfg
        self.vocab_size = vocab_size

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model on the CPU (the loop moves and wraps it)."""

    def compute_loss(self, model: nn.Module, batch: Batch, loss_fn: nn.Module) -> torch.Tensor:
        """Mean loss over the batch's non-ignored targets."""
        logits = model(batch["input_ids"])
        loss: torch.Tensor = loss_fn(logits, batch["targets"])
        return loss

    def count_tokens(self, batch: Batch) -> int:
        """Tokens processed, for throughput; read from the shape so it never syncs a GPU."""
        return batch["input_ids"].numel()


class StandardModelAdapter(ModelAdapter):
    """Any registered architecture taking ``(cfg, vocab_size)`` and mapping ids to logits."""

    def build_model(self) -> nn.Module:
        cls = registry.MODELS.get(self.cfg.architecture)
        model: nn.Module = cls(self.cfg, self.vocab_size)
        return model
