"""Strategy ``pretrain_mlm`` (training.mlm): BERT's masked language modelling.

Each batch of plain text becomes a masked one: ``mask_probability`` of the tokens are
selected as targets (with ``time_steps``, seed 003's time-step masking, each sequence's
share is that of a time step it draws); of those ``mask_fraction`` are replaced by the
mask token, ``random_fraction`` by a random token and the rest kept; the loss is on the
selected positions only (every other target is the loss's ignore index). The draw is
seeded by (seed, split, step, micro-batch, rank), so resume, rollback and evaluation
see the same masks every time; with ``time_steps.per_sequence`` a row's mask is seeded
by the row and its time step instead, so the same sequence at the same time step is
the same input wherever it comes (what an activation cache can reuse).
transformers' DataCollatorForLanguageModeling draws from the global RNG and needs a
Hugging Face tokenizer, hence this small function.

The mask token is the tokenizer's own (a BERT tokenizer's [MASK]); tokenizers without
one (char, bpe) get an extra id after their vocabulary, which the model embeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from kubetrain_core.config import MlmConfig, TimeStepMasking, TrainingLoopConfig
from kubetrain_trainer.data.base import Batch
from kubetrain_trainer.data.tokenizers import Tokenizer
from kubetrain_trainer.strategies.base import StandardStrategy


def mask_tokens(
    ids: torch.Tensor,
    cfg: MlmConfig,
    *,
    generator: torch.Generator,
    mask_id: int,
    vocab_size: int,
    ignore_index: int,
    special_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of masked LM for token ids `ids`; special tokens are never
    selected, and at least one token is, so the loss is never a mean over nothing."""
    device = ids.device
    probability = torch.full(ids.shape, cfg.mask_probability, device=device)
    if cfg.time_steps is not None:  # each row's share from the time step it draws
        probability[:] = time_step_fractions(cfg.time_steps, ids.shape[0], generator)[1].to(device)
    if special_ids:
        probability[torch.isin(ids, torch.tensor(list(special_ids), device=device))] = 0.0
    selected = torch.bernoulli(probability, generator=generator).bool()
    if not selected.any():
        candidates = (probability > 0).flatten().nonzero().flatten()
        if len(candidates):
            pick = torch.randint(len(candidates), (1,), generator=generator, device=device)
            selected.view(-1)[candidates[pick]] = True
    roll = torch.rand(ids.shape, generator=generator, device=device)
    masked = selected & (roll < cfg.mask_fraction)
    randomized = selected & ~masked & (roll < cfg.mask_fraction + cfg.random_fraction)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, device=device)
    inputs = torch.where(masked, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(randomized, random_ids, inputs)
    targets = torch.where(selected, ids, torch.full_like(ids, ignore_index))
    return inputs, targets


def time_step_fractions(
    cfg: TimeStepMasking, rows: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The time step each of `rows` sequences draws and its selected share, (rows, 1)."""
    choices = torch.tensor(cfg.time_steps())
    picks = torch.randint(len(choices), (rows,), generator=generator, device=generator.device)
    steps = choices[picks.cpu()]
    fractions = torch.tensor([cfg.fraction(int(t)) for t in steps], dtype=torch.float32)
    return steps, fractions.unsqueeze(1)


def _seed(seed: int, key: tuple[str | int, ...]) -> int:
    """A 64-bit seed from the run's seed and a batch's name, stable across processes."""
    text = ":".join(str(part) for part in (seed, *key))
    return int.from_bytes(hashlib.sha256(f"kubetrain-mlm:{text}".encode()).digest()[:8], "little")


class MaskedLMStrategy(StandardStrategy):
    """The standard step on masked batches (needs an encoder: hf_masked_lm or the
    native transformer with model.causal: false; the config checks)."""

    @classmethod
    def extra_tokens(cls, loop: TrainingLoopConfig, tokenizer: Tokenizer) -> int:
        return 0 if tokenizer.mask_id is not None else 1

    def prepare(self, batch: Batch, key: tuple[str | int, ...]) -> Batch:
        ids = batch["input_ids"]
        generator = _generator(ids.device, self.loop.seed, key)
        cfg = self.loop.mlm or MlmConfig()
        steps = cfg.time_steps
        if steps is None or not steps.per_sequence:
            inputs, targets = self._mask(ids, cfg, generator)
        else:  # the step draws each row's time step, the row and its time step its mask
            drawn = time_step_fractions(steps, ids.shape[0], generator)[0].tolist()
            masked = [
                self._mask(
                    row[None],
                    cfg.model_copy(
                        update={"time_steps": None, "mask_probability": steps.fraction(t)}
                    ),
                    _generator(ids.device, self.loop.seed, ("sequence", _digest(row), t)),
                )
                for row, t in zip(ids, drawn, strict=True)
            ]
            inputs = torch.cat([m[0] for m in masked])
            targets = torch.cat([m[1] for m in masked])
        return {**batch, "input_ids": inputs, "targets": targets}

    def _mask(
        self, ids: torch.Tensor, cfg: MlmConfig, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer = self.dataset.tokenizer
        own_mask = tokenizer.mask_id
        return mask_tokens(
            ids,
            cfg,
            generator=generator,
            mask_id=own_mask if own_mask is not None else tokenizer.vocab_size,
            vocab_size=tokenizer.vocab_size,  # random replacements: real tokens only
            ignore_index=self.cfg.loss.ignore_index,
            special_ids=tokenizer.special_ids,
        )


def _generator(device: torch.device, seed: int, key: tuple[str | int, ...]) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(_seed(seed, key))
    return generator


def _digest(row: torch.Tensor) -> str:
    """A row's token ids as a short stable name."""
    return hashlib.sha256(row.cpu().numpy().tobytes()).hexdigest()[:16]
