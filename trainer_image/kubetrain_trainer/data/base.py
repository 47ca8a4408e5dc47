"""The dataset adapter interface the training loop consumes.

Batches are addressed, not iterated: ``train_batch(step, micro, ...)`` returns the
same tensors whenever it is called with the same arguments. Resuming from a
checkpoint and skipping bad batches after a rollback are therefore exact, and no
data-loader state has to be checkpointed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from kubetrain_core.config.data import DataConfig
from kubetrain_trainer.data.tokenizers import Tokenizer

Batch = dict[str, torch.Tensor]
"""At least ``input_ids`` and ``targets``, both long ``[B, T]``."""

Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class Example:
    """A record as a question and its answer, for generation metrics (evaluation.py)."""

    prompt_ids: list[int]  # what the model continues: ends where the answer starts
    prompt: str
    reference: str  # the record's own answer, without special tokens


class DatasetAdapter(ABC):
    """Turns a corpus into deterministic training batches and sequential eval batches."""

    tokenizer: Tokenizer

    @abstractmethod
    def __init__(self, cfg: DataConfig, *, seed: int, tokenizer: Tokenizer | None = None) -> None:
        """Load the corpus; train ``cfg.tokenizer`` unless a (saved) ``tokenizer`` is given."""

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @abstractmethod
    def split_tokens(self, split: Split) -> int:
        """Number of tokens in ``split``."""

    @abstractmethod
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
        """Micro-batch ``micro`` of optimizer step ``step`` for ``rank``: a pure function
        of the arguments, the seed and the batch shape."""

    @abstractmethod
    def steps_per_epoch(self, world_size: int, accumulation_steps: int) -> int:
        """Optimizer steps in one pass over the training split (at least 1)."""

    @abstractmethod
    def epoch_at(self, step: int, *, world_size: int, accumulation_steps: int) -> float:
        """Fractional epochs completed before optimizer step ``step``."""

    @abstractmethod
    def eval_batches(
        self,
        split: Literal["val", "test"],
        max_batches: int,
        *,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> Iterator[Batch]:
        """At most ``max_batches`` deterministic batches of ``split`` for ``rank``."""

    def examples(self, split: Split, count: int) -> list[Example]:
        """The first ``count`` records of ``split`` as prompts with reference answers (all
        of them when the split is smaller); only adapters whose records have answers."""
        raise NotImplementedError(
            f"data.adapter {type(self).__name__} has no reference answers to generate for"
        )
