"""The strategy interface and the standard strategy: how one optimizer step is
computed from the data.

A strategy owns the gradient path (micro-batches, autocast, loss scaling,
clipping) and leaves the decision to apply an update to the loop, so that the
NaN guard can veto a step after seeing its loss and gradient norm. Other strategies
change one piece of it: what the model trains (`configure_model`, `lr_scales`: before
it is wrapped and its optimizer built), which batch a step reads (`train_batch`) and
what a batch becomes before the loss (`prepare`), each a pure function of the step so
that resume stays exact.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubetrain_core.config import OptimizationConfig, TrainingLoopConfig
from kubetrain_core.registry import STRATEGIES
from kubetrain_trainer.data.base import Batch, DatasetAdapter
from kubetrain_trainer.data.tokenizers import Tokenizer
from kubetrain_trainer.distributed import DistInfo, mean_across_ranks
from kubetrain_trainer.models.adapters import ModelAdapter
from kubetrain_trainer.parallel import full_norm, gradient_sync, is_sharded

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepOutput:
    loss: float  # mean over micro-batches and ranks
    # Global norm before clipping (identical on every rank after all-reduce); None when
    # fp16 gradients overflowed: GradScaler skips that update and lowers its scale.
    grad_norm: float | None
    tokens: int  # tokens processed by all ranks
    samples: int  # sequences processed by all ranks
    stop: bool = False  # some rank was asked to stop (SIGTERM): every rank stops here


class TrainingStrategy(ABC):
    """The training algorithm for one step; see StandardStrategy."""

    def __init__(
        self,
        *,
        model: nn.Module,
        adapter: ModelAdapter,
        dataset: DatasetAdapter,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        cfg: OptimizationConfig,
        loop: TrainingLoopConfig,
        dist_info: DistInfo,
    ) -> None:
        self.model = model
        self.adapter = adapter
        self.dataset = dataset
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.cfg = cfg
        self.loop = loop
        self.dist = dist_info
        self.amp_dtype = AMP_DTYPES.get(loop.precision)
        device_type = dist_info.device.type
        # fp16 needs loss scaling; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(device_type, enabled=loop.precision == "fp16")

    # ---- before the strategy exists: the model it trains ------------------------

    @classmethod
    def extra_tokens(cls, loop: TrainingLoopConfig, tokenizer: Tokenizer) -> int:
        """Ids the strategy adds after the tokenizer's vocabulary (a mask token)."""
        return 0

    @classmethod
    def configure_model(cls, model: nn.Module, loop: TrainingLoopConfig) -> None:
        """Change the raw model before it is wrapped (freeze parameters); default: none."""
        del model, loop  # nothing to change

    @classmethod
    def lr_scales(cls, model: nn.Module, loop: TrainingLoopConfig) -> dict[str, float]:
        """LR multipliers by parameter name (missing: 1), for the optimizer's groups."""
        return {}

    @classmethod
    def group_tags(cls, model: nn.Module, loop: TrainingLoopConfig) -> dict[str, int]:
        """Optimizer groups split by a tag per parameter name (the groups carry it), for
        a strategy that changes some groups' LR as it goes; default: no split."""
        return {}

    @classmethod
    def schedule_period(cls, loop: TrainingLoopConfig) -> int | None:
        """Steps after which the LR schedule restarts (a staged strategy's stage);
        None: one schedule over the run."""
        return None

    @classmethod
    def leaves_parameters_unused(cls, loop: TrainingLoopConfig) -> bool:
        """Whether some steps give some trainable parameters no gradient (DDP must
        then look for them: find_unused_parameters)."""
        return False

    @classmethod
    def export_weights(
        cls, model: nn.Module, loop: TrainingLoopConfig, weights: dict[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor] | None:
        """The weights an export writes, from the model's (`weights`: the whole state
        dict of a sharded model, else None: the model's own); default: those."""
        del model, loop
        return weights

    # ---- what the loop reports and exports ----------------------------------------

    def position(self, step: int) -> dict[str, int]:
        """Where step index `step` is in the strategy's own schedule (stage, ...), for
        the metrics; default: nothing to say."""
        return {}

    def before_restore(self) -> None:
        """A rollback is about to load a checkpoint into the model: undo what the
        strategy changed in it since (a stage's set-up); default: nothing."""
        return

    def export_parts(self, weights: dict[str, torch.Tensor], directory: Path) -> None:
        """Write what the strategy adds to the exported model directory (`weights`: the
        whole state dict); default: nothing."""
        del weights, directory  # nothing to add

    # ---- the data of a step -------------------------------------------------------

    def train_batch(self, step: int, micro: int) -> Batch:
        """Micro-batch `micro` of step `step` on this rank, ready for the loss."""
        return self.prepare(self.read_batch(step, micro), ("train", step, micro, self.dist.rank))

    def read_batch(self, step: int, micro: int) -> Batch:
        """The data of micro-batch `micro` of step `step` on this rank."""
        return self.dataset.train_batch(
            step,
            micro,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            accumulation_steps=self.cfg.accumulation_steps,
            device=self.dist.device,
        )

    def prepare(self, batch: Batch, key: tuple[str | int, ...]) -> Batch:
        """What a batch becomes before the loss; `key` names it for any randomness."""
        return batch

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.amp_dtype)

    @abstractmethod
    def forward_backward(self, step: int, poison: bool = False, stop: bool = False) -> StepOutput:
        """Compute gradients for `step` (poison=True turns the loss into NaN: fault
        injection); `stop`: this rank was asked to stop, told to all in `StepOutput.stop`."""

    def apply_update(self) -> None:
        self.step_optimizer()
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def step_optimizer(self) -> None:
        """The optimizer's step on this step's gradients (the scaler skips an overflow)."""
        self.scaler.step(self.optimizer)

    def discard_update(self) -> None:
        """Drop this step's gradients; the schedule still advances (LR is a function of step)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.update(self.scaler.get_scale() / 2)
        self.scheduler.step()

    @torch.no_grad()
    def evaluate(self, split: str, max_batches: int) -> float:
        """Mean loss over `max_batches` micro-batches of a split, averaged over ranks."""
        self.model.eval()
        total = torch.zeros(2, device=self.dist.device)
        batches = list(self._eval_batches(split, max_batches, self.dist.rank, self.dist.world_size))
        counted = len(batches)
        if is_sharded(self.model):
            batches += self._padding(split, counted)
        for i, raw in enumerate(batches):
            batch = self.prepare(raw, (split, i, self.dist.rank))
            with self.autocast():
                loss = self.adapter.compute_loss(self.model, batch, self.loss_fn)
            if i < counted:
                total += torch.stack([loss.detach().float(), torch.ones_like(total[0])])
        self.model.train()
        total = mean_across_ranks(total)
        return float(total[0] / total[1]) if total[1] > 0 else math.nan

    def _eval_batches(self, split: str, max_batches: int, rank: int, world_size: int) -> Any:
        return self.dataset.eval_batches(
            split,  # type: ignore[arg-type]
            max_batches,
            rank=rank,
            world_size=world_size,
            device=self.dist.device,
        )

    def _padding(self, split: str, own: int) -> list[Any]:
        """A sharded forward is a collective, so every rank must run as many as the
        busiest one: a rank with fewer eval batches (the split's tail) adds copies of
        the split's first batch, whose losses do not count."""
        rounds = torch.tensor([own], device=self.dist.device)
        torch.distributed.all_reduce(rounds, op=torch.distributed.ReduceOp.MAX)
        missing = int(rounds) - own
        return list(self._eval_batches(split, 1, 0, 1)) * missing if missing else []


@STRATEGIES.register("standard")
class StandardStrategy(TrainingStrategy):
    """Gradient accumulation over micro-batches, AMP, loss scaling and global-norm clipping."""

    def forward_backward(self, step: int, poison: bool = False, stop: bool = False) -> StepOutput:
        k = self.cfg.accumulation_steps
        loss_sum = torch.zeros((), device=self.dist.device)
        tokens = samples = 0
        for micro in range(k):
            batch = self.train_batch(step, micro)
            # Only the last micro-batch all-reduces (DDP) or reduce-scatters (FSDP).
            with gradient_sync(self.model, micro == k - 1), self.autocast():
                loss = self.adapter.compute_loss(self.model, batch, self.loss_fn) / k
                if poison:
                    loss = loss * float("nan")
            self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            loss_sum += loss.detach().float()
            tokens += self.adapter.count_tokens(batch)
            samples += batch["input_ids"].shape[0]
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm is not None else math.inf
        grad_norm = full_norm(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        # One small all-reduce gives every rank the same loss, so all make the same guard
        # decision, and the same stop: a SIGTERM reaches one pod of a gang (an eviction),
        # and a checkpoint save is a collective that every rank must enter together.
        flag = torch.tensor(float(stop), device=loss_sum.device)
        stats = mean_across_ranks(
            torch.stack([loss_sum, grad_norm.float().to(loss_sum.device), flag])
        )
        loss_value, norm_value, stop_value = stats.tolist()
        if self.scaler.is_enabled() and math.isfinite(loss_value) and not math.isfinite(norm_value):
            norm_value = None  # loss scaling overflow: the scaler's business, not a NaN
        w = self.dist.world_size
        return StepOutput(
            loss=loss_value,
            grad_norm=norm_value,
            tokens=tokens * w,
            samples=samples * w,
            stop=stop_value > 0,
        )
