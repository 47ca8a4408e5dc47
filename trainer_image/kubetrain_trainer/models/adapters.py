"""Model adapters: how a model is built, fed a batch and scored.

The training loop only talks to an adapter, so a model with other inputs (a
dialogue model with role masks, a multimodal one with images) plugs in as a new
adapter without touching the loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from kubetrain_core import registry
from kubetrain_core.config import ConfigError
from kubetrain_core.config.model import ModelConfig
from kubetrain_trainer.data.base import Batch


@dataclass(frozen=True)
class Generation:
    """How answers are generated (evaluation section), and where."""

    max_new_tokens: int
    num_beams: int
    eos_id: int | None
    pad_id: int
    device: torch.device
    synced: bool  # every process runs every forward (fsdp): none may stop early

    def until_end(self, ids: list[int]) -> list[int]:
        """`ids` up to (not including) the first end token."""
        return ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids


class ModelAdapter(ABC):
    """Builds the network and turns a batch into a scalar loss."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        self.cfg = cfg
        self.vocab_size = vocab_size

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model on the CPU (the loop moves and wraps it)."""

    def compute_loss(self, model: nn.Module, batch: Batch, loss_fn: nn.Module) -> torch.Tensor:
        """Mean loss over the batch's non-ignored targets; a batch carrying `hidden` (a
        cached frozen trunk's output, strategy progressive) starts the forward there."""
        hidden = batch.get("hidden")
        logits = model(batch["input_ids"]) if hidden is None else model(batch["input_ids"], hidden)
        loss: torch.Tensor = loss_fn(logits, batch["targets"])
        return loss

    def set_depth(self, model: nn.Module, blocks: int, cached: int = 0) -> None:
        """Make the forward run only the first `blocks` blocks (strategy progressive),
        starting after the first `cached` when a batch carries their output."""
        del model, blocks, cached
        raise self._not_stackable("run part of its blocks")

    def trunk(self, model: nn.Module, input_ids: torch.Tensor, blocks: int) -> torch.Tensor:
        """The stream after the embeddings and the first `blocks` blocks."""
        del model, input_ids, blocks
        raise self._not_stackable("run its trunk alone")

    def read_out_stacks(self, model: nn.Module, blocks: int) -> None:
        """Make the training forward return the logits read out every `blocks` blocks,
        ``[stacks, B, T, V]``, each stack cut from the gradient of those above
        (strategy end_to_end stackwise)."""
        del model, blocks
        raise self._not_stackable("read out each stack")

    def _not_stackable(self, what: str) -> ConfigError:
        return ConfigError(
            "training.strategy",
            [
                f"stack-wise training needs a model that can {what}; model.adapter"
                f" {self.cfg.adapter!r} cannot (use the native transformer: model.adapter"
                " standard)"
            ],
        )

    def count_tokens(self, batch: Batch) -> int:
        """Tokens processed, for throughput; read from the shape so it never syncs a GPU."""
        return batch["input_ids"].numel()

    @torch.no_grad()
    def generate(
        self, model: nn.Module, prompts: list[list[int]], settings: Generation
    ) -> list[list[int]]:
        """Greedy continuations of `prompts` (token ids), each cut after its end token.
        Always `max_new_tokens` forwards per prompt, so that processes whose forwards
        are collectives (fsdp) stay in step; the context is the last max_seq_len ids."""
        window = self.cfg.max_seq_len
        answers = []
        for prompt in prompts:
            ids = torch.tensor([prompt], device=settings.device)
            for _ in range(settings.max_new_tokens):
                logits = model(ids[:, -window:])
                ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            answers.append(settings.until_end(ids[0, len(prompt) :].tolist()))
        return answers


class StandardModelAdapter(ModelAdapter):
    """Any registered architecture taking ``(cfg, vocab_size)`` and mapping ids to logits."""

    def build_model(self) -> nn.Module:
        cls = registry.MODELS.get(self.cfg.architecture)
        model: nn.Module = cls(self.cfg, self.vocab_size)
        return model

    def set_depth(self, model: nn.Module, blocks: int, cached: int = 0) -> None:
        if not hasattr(model, "depth"):  # a registered architecture of a plugin's
            super().set_depth(model, blocks, cached)
        setattr(model, "depth", blocks)  # noqa: B010 - nn.Module's setattr types modules only
        setattr(model, "hidden_blocks", cached)  # noqa: B010

    def trunk(self, model: nn.Module, input_ids: torch.Tensor, blocks: int) -> torch.Tensor:
        run = getattr(model, "trunk", None)
        if run is None:
            return super().trunk(model, input_ids, blocks)
        out: torch.Tensor = run(input_ids, blocks)
        return out

    def read_out_stacks(self, model: nn.Module, blocks: int) -> None:
        if not hasattr(model, "read_out_every"):
            super().read_out_stacks(model, blocks)
        setattr(model, "read_out_every", blocks)  # noqa: B010
