"""Strategy ``progressive`` (training.progressive): seed 003's stack-wise growth.

The model's blocks form a rack of stacks (rack.py). Stage k runs the embeddings,
stacks 0..k and the head, and trains stack k on top of the others, the trunk:
``frozen`` (no gradients and no dropout, the embeddings with it: a fixed feature
extractor whose weights stay bit-identical) or ``scaled_lr`` (trained at
trunk_lr_scale times the LR). Stage 0 trains everything it runs. The stage is a
function of the step, so resume, rollback and batch skipping stay in the stage they
were in.

It is one more strategy of the ordinary loop: the model is wrapped once, with DDP
told that some parameters go without gradients (the stacks not grown yet, a frozen
trunk), and the optimizer holds every parameter from the start; a stack's optimizer
state starts fresh at its stage's first step. With training.mlm the objective is
masked language modelling (time-step masking included), as in strategy pretrain_mlm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

from kubetrain_core.config import ConfigError, ProgressiveConfig, TrainingLoopConfig
from kubetrain_trainer.data.base import Batch
from kubetrain_trainer.strategies.activation_cache import ActivationCache
from kubetrain_trainer.strategies.base import AMP_DTYPES, StepOutput
from kubetrain_trainer.strategies.rack import RackStrategy
from kubetrain_trainer.strategies.trunk import (
    TrunkPrecision,
    add_adapters,
    is_adapter,
    plain_weights,
    train_adapter_dropout,
)


class ProgressiveStrategy(RackStrategy):
    """The standard step (masked with training.mlm) on the stacks of the step's stage."""

    section = "progressive"

    @classmethod
    def rack_options(cls, loop: TrainingLoopConfig) -> ProgressiveConfig:
        options = super().rack_options(loop)
        assert isinstance(options, ProgressiveConfig)
        return options

    @classmethod
    def configure_model(cls, model: nn.Module, loop: TrainingLoopConfig) -> None:
        options = cls.rack_options(loop)
        rack = cls.build_rack(model, loop)
        stacks = rack.stacks
        last_start = (stacks - 1) * options.stage_steps
        if loop.max_steps is not None and loop.max_steps <= last_start:
            raise ConfigError(
                "training.progressive.stage_steps",
                [
                    f"{stacks} stacks of {options.stage_steps} steps need training.max_steps"
                    f" above {last_start} to reach the last stack (it is {loop.max_steps})"
                ],
            )
        if options.trunk_adapters is not None:  # the last stack never joins the trunk
            add_adapters(rack.blocks[: -rack.blocks_per_stack], options.trunk_adapters)

    @classmethod
    def lr_scales(cls, model: nn.Module, loop: TrainingLoopConfig) -> dict[str, float]:
        adapters = cls.rack_options(loop).trunk_adapters
        if adapters is None:
            return {}
        return {n: adapters.lr_scale for n, _ in model.named_parameters() if is_adapter(n)}

    @classmethod
    def export_weights(
        cls, model: nn.Module, loop: TrainingLoopConfig, weights: dict[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor] | None:
        options = cls.rack_options(loop)
        if options.trunk_adapters is None and options.trunk_precision == "fp32":
            return weights
        return plain_weights(model, weights if weights is not None else model.state_dict())

    @classmethod
    def group_tags(cls, model: nn.Module, loop: TrainingLoopConfig) -> dict[str, int]:
        if cls.rack_options(loop).trunk_strategy != "scaled_lr":
            return {}
        return cls.build_rack(model, loop).place  # a group per stack

    @classmethod
    def schedule_period(cls, loop: TrainingLoopConfig) -> int | None:
        options = cls.rack_options(loop)
        return options.stage_steps if options.restart_schedule else None

    @classmethod
    def leaves_parameters_unused(cls, loop: TrainingLoopConfig) -> bool:
        return True  # the stacks not grown yet, a frozen trunk

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options = self.rack_options(self.loop)
        self.stage: int | None = None  # the stage the model is set up for
        cache = self.options.cache
        self.cache = ActivationCache(cache.max_mib * 2**20) if cache else None
        self.precision = TrunkPrecision(AMP_DTYPES.get(self.options.trunk_precision, torch.float32))
        # A model that cannot run a stage fails now, not at that stage's first step.
        per_stack = self.rack.blocks_per_stack
        self.adapter.set_depth(self.raw, per_stack, per_stack if cache else 0)
        # Every parameter gets its optimizer state now, as DCP gives it at a resume, so
        # that every checkpoint holds all of it; a stage's first step makes its stack's
        # state fresh (_refresh), so a stack starts like a new optimizer either way.
        get_optimizer_state_dict(self.raw, self.optimizer)

    def stage_at(self, step: int) -> int:
        return self.options.stage_at(step, self.rack.stacks)

    def position(self, step: int) -> dict[str, int]:
        stage = self.stage_at(step)
        return {"stage": stage, "active_stacks": stage + 1}

    def enter(self, stage: int) -> None:
        """Set the model up for `stage`: its depth and, with a frozen trunk, which
        parameters take gradients and which modules run without dropout."""
        frozen = self.options.trunk_strategy == "frozen"
        changed = stage != self.stage
        if changed:
            per_stack = self.rack.blocks_per_stack
            cached = stage * per_stack if self.cache is not None else 0
            self.adapter.set_depth(self.raw, (stage + 1) * per_stack, cached)
            if self.cache is not None:
                self.cache.clear()  # another trunk
            if frozen:
                trunk = self.rack.trunk(stage)
                for name, param in self.raw.named_parameters():
                    # A stack's adapters train while it is in the trunk, its weights before.
                    param.requires_grad_((name in trunk) == is_adapter(name))
                self.precision.store(self.rack.blocks[: stage * per_stack])
            self.stage = stage
        # evaluate() leaves every module in train mode: the trunk goes back to eval.
        if frozen and stage and (changed or self.rack.blocks[0].training):
            self.raw.eval()
            self.raw.training = True  # the root's own flag: gradient checkpointing reads it
            for block in self.rack.stack_blocks(stage):
                block.train()
            train_adapter_dropout(self.raw)

    def prepare(self, batch: Batch, key: tuple[str | int, ...]) -> Batch:
        batch = super().prepare(batch, key)
        if self.cache is None or not self.stage:
            return batch
        return {**batch, "hidden": self.cache.hidden(batch["input_ids"], self._trunk)}

    def _trunk(self, ids: torch.Tensor) -> torch.Tensor:
        """The frozen trunk's output for `ids`, as the model's own forward computes it."""
        with torch.no_grad(), self.autocast():
            return self.adapter.trunk(self.raw, ids, (self.stage or 0) * self.rack.blocks_per_stack)

    def forward_backward(self, step: int, poison: bool = False, stop: bool = False) -> StepOutput:
        stage = self.stage_at(step)
        self.enter(stage)
        if step == stage * self.options.stage_steps:
            self._refresh(stage)
        return super().forward_backward(step, poison=poison, stop=stop)

    def _refresh(self, stage: int) -> None:
        """The optimizer state of what stage `stage` adds (stage 0: everything), zeroed:
        Adam's moments and step count as before its first step, SGD's momentum likewise."""
        new = {n for n, at in self.rack.place.items() if at == stage} if stage else None
        for name, param in self.raw.named_parameters():
            if new is None or name in new:
                for value in self.optimizer.state.get(param, {}).values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()

    def before_restore(self) -> None:
        # The checkpoint may be from an earlier stage, whose stacks were not stored yet.
        self.precision.release()
        self.stage = None

    def evaluate(self, split: str, max_batches: int) -> float:
        if self.stage is None:  # resumed at the end: the whole rack
            self.enter(self.rack.stacks - 1)
        return super().evaluate(split, max_batches)

    def step_optimizer(self) -> None:
        with self._trunk_lr():
            super().step_optimizer()

    @contextlib.contextmanager
    def _trunk_lr(self) -> Iterator[None]:
        """With scaled_lr, the trunk's groups (tagged by stack) step at a lower LR."""
        stage = self.stage or 0
        if self.options.trunk_strategy != "scaled_lr" or not stage:
            yield
            return
        groups = [g for g in self.optimizer.param_groups if g["tag"] < stage]
        saved = [g["lr"] for g in groups]
        for group in groups:
            group["lr"] *= self.options.trunk_lr_scale
        try:
            yield
        finally:
            for group, lr in zip(groups, saved, strict=True):
                group["lr"] = lr
