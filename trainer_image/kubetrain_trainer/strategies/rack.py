"""Seed 003's rack of stacks, and strategy ``end_to_end`` (training.end_to_end).

The model's blocks (its _no_split_modules, in order) form a rack of stacks of
``blocks_per_stack`` (`Rack`). `RackStrategy` is what the stack-wise strategies share:
the standard step, masked when training.mlm is set (time-step masking included, as in
pretrain_mlm), and an export that also writes each stack (and the rack) on its own.
``end_to_end`` trains every stack at every step: ``rackwise`` as one model (the
standard step), ``stackwise`` each stack on its own loss (`StackwiseLoss`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from kubetrain_core.config import ConfigError, EndToEndConfig, RackConfig, TrainingLoopConfig
from kubetrain_trainer.data.base import Batch
from kubetrain_trainer.data.tokenizers import Tokenizer
from kubetrain_trainer.parallel import shard_units, unwrap
from kubetrain_trainer.strategies.finetune import layers
from kubetrain_trainer.strategies.mlm import MaskedLMStrategy


class Rack:
    """The model's blocks as stacks, and where each parameter sits: -1 before the
    first block (the embeddings), s in stack s, `stacks` after the last (norm, head)."""

    def __init__(self, model: nn.Module, blocks_per_stack: int, section: str) -> None:
        layer, blocks = layers(model)
        if not blocks or blocks % blocks_per_stack:
            raise ConfigError(
                f"training.{section}.blocks_per_stack",
                [f"{blocks_per_stack} does not divide the model's {blocks} blocks into stacks"],
            )
        self.blocks = shard_units(model)
        self.blocks_per_stack = blocks_per_stack
        self.stacks = blocks // blocks_per_stack
        self.place = {
            name: -1 if i == 0 else self.stacks if i > blocks else (i - 1) // blocks_per_stack
            for name, i in layer.items()
        }

    def trunk(self, stage: int) -> set[str]:
        """The parameters under the stack that stage `stage` grows (none in stage 0)."""
        return {name for name, at in self.place.items() if at < stage} if stage else set()

    def stack_blocks(self, stack: int) -> list[nn.Module]:
        start = stack * self.blocks_per_stack
        return self.blocks[start : start + self.blocks_per_stack]

    def write_parts(
        self, weights: dict[str, torch.Tensor], directory: Path, options: RackConfig
    ) -> None:
        """stacks/stack-<k>.safetensors (save_stacks) and rack.safetensors (save_rack),
        under the model's own parameter names: `load_state_dict(part, strict=False)`."""

        def part(keep: Callable[[int | None], bool]) -> dict[str, torch.Tensor]:
            return {
                n: t.detach().cpu().contiguous()
                for n, t in weights.items()
                if keep(self.place.get(n))
            }

        if options.save_stacks:
            (directory / "stacks").mkdir(exist_ok=True)
            for stack in range(self.stacks):
                save_file(
                    part(lambda at, s=stack: at == s),  # type: ignore[misc]
                    str(directory / "stacks" / f"stack-{stack}.safetensors"),
                )
        if options.save_rack:
            save_file(
                part(lambda at: at is not None and 0 <= at < self.stacks),
                str(directory / "rack.safetensors"),
            )


class RackStrategy(MaskedLMStrategy):
    """The standard step on a rack of stacks, masked with training.mlm."""

    section = ""  # the strategy's section of training: its options

    @classmethod
    def rack_options(cls, loop: TrainingLoopConfig) -> RackConfig:
        options = getattr(loop, cls.section)
        if not isinstance(options, RackConfig):  # the config refuses this; a plugin may not
            raise ConfigError(f"training.{cls.section}", ["the strategy needs its options"])
        return options

    @classmethod
    def build_rack(cls, model: nn.Module, loop: TrainingLoopConfig) -> Rack:
        return Rack(model, cls.rack_options(loop).blocks_per_stack, cls.section)

    @classmethod
    def extra_tokens(cls, loop: TrainingLoopConfig, tokenizer: Tokenizer) -> int:
        return super().extra_tokens(loop, tokenizer) if loop.mlm else 0

    @classmethod
    def configure_model(cls, model: nn.Module, loop: TrainingLoopConfig) -> None:
        cls.build_rack(model, loop)  # refuses a split that cannot be

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.raw = unwrap(self.model)
        self.rack = self.build_rack(self.raw, self.loop)

    def prepare(self, batch: Batch, key: tuple[str | int, ...]) -> Batch:
        return super().prepare(batch, key) if self.loop.mlm else batch

    def export_parts(self, weights: dict[str, torch.Tensor], directory: Path) -> None:
        self.rack.write_parts(weights, directory, self.rack_options(self.loop))


class StackwiseLoss(nn.Module):
    """The mean of `loss` over the stacks' logits ``[stacks, B, T, V]`` (what a model
    reading out every stack returns while training); plain logits pass through."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() < 4:
            out: torch.Tensor = self.loss(logits, targets)
            return out
        return torch.stack([self.loss(stack, targets) for stack in logits]).mean()


class EndToEndStrategy(RackStrategy):
    """Every stack at every step: rackwise as one model, stackwise each on its own loss."""

    section = "end_to_end"

    @classmethod
    def rack_options(cls, loop: TrainingLoopConfig) -> EndToEndConfig:
        return loop.end_to_end or EndToEndConfig()  # default: rackwise

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.rack_options(self.loop).scope == "stackwise":
            self.adapter.read_out_stacks(self.raw, self.rack.blocks_per_stack)
            self.loss_fn = StackwiseLoss(self.loss_fn)
