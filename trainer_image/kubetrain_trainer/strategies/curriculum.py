"""Strategy ``curriculum`` (training.curriculum): training in stages that grow harder,
seed 001's example done for real.

A stage starts at a given step and may shorten the sequences (the first ``seq_len``
tokens of each sample) and train on a subset (the first ``data_fraction`` of the
training samples, in corpus order, visited in an order of its own from the stage's
first step). The stage is a function of the step alone, so a run resumed, rolled
back or skipping batches is in the same stage reading the same batches. Validation
always reads whole sequences, so its losses compare across stages.
"""

from __future__ import annotations

from kubetrain_core.config import ConfigError, CurriculumStage
from kubetrain_trainer.data.base import Batch
from kubetrain_trainer.data.sampling import AddressedDataset
from kubetrain_trainer.strategies.base import StandardStrategy


def truncate(batch: Batch, seq_len: int | None) -> Batch:
    """The first `seq_len` positions of every per-position tensor of `batch` (those as
    long as its input_ids; a seq2seq target has a length of its own)."""
    width = batch["input_ids"].shape[1]
    if seq_len is None or seq_len >= width:
        return batch
    return {
        name: t[:, :seq_len] if t.dim() >= 2 and t.shape[1] == width else t
        for name, t in batch.items()
    }


class CurriculumStrategy(StandardStrategy):
    """The standard step on the batches of the step's stage."""

    @property
    def stages(self) -> list[CurriculumStage]:
        if self.loop.curriculum is None:  # the config refuses this; a subclass may not
            raise ConfigError("training.curriculum", ["the curriculum strategy needs stages"])
        return self.loop.curriculum.stages

    def stage_at(self, step: int) -> CurriculumStage:
        return [s for s in self.stages if s.start_step <= step][-1]

    def read_batch(self, step: int, micro: int) -> Batch:
        stage = self.stage_at(step)
        if stage.data_fraction >= 1.0:
            return truncate(super().read_batch(step, micro), stage.seq_len)
        if not isinstance(self.dataset, AddressedDataset):
            raise ConfigError(
                "training.curriculum.stages",
                [f"data_fraction needs a built-in dataset adapter, not {type(self.dataset)}"],
            )
        batch = self.dataset.subset_batch(
            stage.data_fraction,
            step - stage.start_step,
            micro,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            accumulation_steps=self.cfg.accumulation_steps,
            device=self.dist.device,
        )
        return truncate(batch, stage.seq_len)
