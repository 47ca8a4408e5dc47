"""Which samples a (step, micro-batch, rank) holds: addressed, never iterated.

Each epoch visits every training sample once, in an order drawn from (seed, epoch);
the samples of one optimizer step are numbered globally, so the batch of any
(step, micro, rank) is computed directly. Resume and skipping bad batches after a
rollback are exact, and no data-loader state is checkpointed. Every dataset adapter
shares this, whatever a sample is (a text window, a packed block, a conversation).
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Iterator
from typing import Literal

import torch

from kubetrain_trainer.data.base import Batch, DatasetAdapter, Split

_CACHED_PERMUTATIONS = 4  # a step spans at most two epochs unless one epoch is under one step


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit generator seed that is stable across processes and Python versions."""
    digest = hashlib.sha256(f"kubetrain-data:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class SampleOrder:
    """The training order of `samples` samples, `batch_size` per rank and micro-batch."""

    def __init__(self, samples: int, *, seed: int, batch_size: int) -> None:
        if samples < 1:
            raise ValueError("the training split holds no samples")
        self.samples, self.seed, self.batch_size = samples, seed, batch_size
        self._perms: dict[int, torch.Tensor] = {}

    def global_batch(self, world_size: int, accumulation_steps: int) -> int:
        return self.batch_size * world_size * accumulation_steps

    def steps_per_epoch(self, world_size: int, accumulation_steps: int) -> int:
        return max(1, self.samples // self.global_batch(world_size, accumulation_steps))

    def epoch_at(self, step: int, *, world_size: int, accumulation_steps: int) -> float:
        return step * self.global_batch(world_size, accumulation_steps) / self.samples

    def _permutation(self, epoch: int) -> torch.Tensor:
        perm = self._perms.get(epoch)
        if perm is None:
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            perm = torch.randperm(self.samples, generator=generator)
            if len(self._perms) >= _CACHED_PERMUTATIONS:
                del self._perms[min(self._perms)]
            self._perms[epoch] = perm
        return perm

    def train_indices(
        self, step: int, micro: int, *, rank: int, world_size: int, accumulation_steps: int
    ) -> torch.Tensor:
        """Sample indices of micro-batch `micro` of step `step` on `rank`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if not 0 <= micro < accumulation_steps:
            raise ValueError(f"micro must be in [0, {accumulation_steps}), got {micro}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        # Rank r, micro m holds samples [(m*W + r)*B, +B) of the step, so one process with
        # batch B*k holds exactly the samples of k micro-batches of B (accumulation k).
        first = (
            step * self.global_batch(world_size, accumulation_steps)
            + (micro * world_size + rank) * self.batch_size
        )
        numbers = torch.arange(first, first + self.batch_size)
        epochs = numbers // self.samples
        positions = numbers % self.samples
        indices = torch.empty_like(numbers)
        # Usually one epoch; two when the micro-batch straddles an epoch boundary.
        for epoch in range(first // self.samples, int(epochs[-1]) + 1):
            mask = epochs == epoch
            indices[mask] = self._permutation(epoch)[positions[mask]]
        return indices


def eval_indices(
    total: int, batch: int, *, batch_size: int, rank: int, world_size: int
) -> torch.Tensor | None:
    """Sample indices of eval batch `batch` of `rank`, in corpus order (batch k goes to
    rank k % world_size), or None past the end; the last batch may be short."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    start = (batch * world_size + rank) * batch_size
    if start >= total:
        return None
    return torch.arange(start, min(start + batch_size, total))


class AddressedDataset(DatasetAdapter):
    """The batch addressing every built-in adapter shares. A subclass sets `order` (its
    training samples), `batch_size`, and says how many samples a split has and how
    indices become a batch."""

    order: SampleOrder
    batch_size: int

    @abstractmethod
    def _size(self, split: Split) -> int:
        """Samples in `split`."""

    @abstractmethod
    def _gather(self, split: Split, indices: torch.Tensor, device: torch.device) -> Batch:
        """The batch of samples `indices` of `split`, on `device`."""

    def steps_per_epoch(self, world_size: int, accumulation_steps: int) -> int:
        return self.order.steps_per_epoch(world_size, accumulation_steps)

    def epoch_at(self, step: int, *, world_size: int, accumulation_steps: int) -> float:
        return self.order.epoch_at(
            step, world_size=world_size, accumulation_steps=accumulation_steps
        )

    def train_batch(
        self,
        step: int,
        micro: int,
        *,
        rank: int,
        world_size: int,
        accumulation_steps: int,
        device: torch.device,
    ) -> Batch:
        indices = self.order.train_indices(
            step, micro, rank=rank, world_size=world_size, accumulation_steps=accumulation_steps
        )
        return self._gather("train", indices, device)

    def subset_batch(
        self,
        fraction: float,
        step: int,
        micro: int,
        *,
        rank: int,
        world_size: int,
        accumulation_steps: int,
        device: torch.device,
    ) -> Batch:
        """`train_batch` over the first `fraction` of the training samples (corpus
        order), visited in an order of their own from `step` 0 (a curriculum stage)."""
        samples = max(1, int(self.order.samples * fraction))
        # Subclasses do not call a base __init__: the orders are cached on first use.
        orders: dict[int, SampleOrder] = self.__dict__.setdefault("_subset_orders", {})
        if samples not in orders:
            orders[samples] = SampleOrder(samples, seed=self.order.seed, batch_size=self.batch_size)
        indices = orders[samples].train_indices(
            step, micro, rank=rank, world_size=world_size, accumulation_steps=accumulation_steps
        )
        return self._gather("train", indices, device)

    def eval_batches(
        self,
        split: Literal["val", "test"],
        max_batches: int,
        *,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> Iterator[Batch]:
        """Samples in corpus order, batch k going to rank ``k % world_size``; the last
        batch of the split may be smaller than ``batch_size``, and a rank may get none."""
        total = self._size(split)
        for j in range(max_batches):
            indices = eval_indices(
                total, j, batch_size=self.batch_size, rank=rank, world_size=world_size
            )
            if indices is None:
                return
            yield self._gather(split, indices, device)
