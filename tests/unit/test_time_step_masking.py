"""Seed 003's time-step masking (training.mlm.time_steps): the share of each sequence's
tokens selected for prediction follows the time step it draws."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from kubetrain_core.config import MlmConfig, TimeStepMasking
from kubetrain_trainer.strategies.mlm import mask_tokens, time_step_fractions

SEED_EXAMPLE = {"num_time_steps": 10, "mask_fractions": {0: 0.15, 5: 0.5, 9: 0.9}}


def test_fractions_are_interpolated_between_the_named_time_steps() -> None:
    cfg = TimeStepMasking.model_validate(SEED_EXAMPLE)
    assert cfg.fraction(0) == pytest.approx(0.15)
    assert cfg.fraction(2) == pytest.approx(0.15 + 0.35 * 2 / 5)
    assert cfg.fraction(5) == pytest.approx(0.5)
    assert cfg.fraction(7) == pytest.approx(0.5 + 0.4 * 2 / 4)
    assert cfg.fraction(9) == pytest.approx(0.9)
    late = TimeStepMasking(num_time_steps=10, mask_fractions={3: 0.2, 6: 0.4})
    assert (late.fraction(0), late.fraction(9)) == (0.2, 0.4)  # constant outside
    assert cfg.time_steps() == list(range(10))
    assert TimeStepMasking(mask_fractions={0: 0.3}, bins=[2, 4]).time_steps() == [2, 4]


@pytest.mark.parametrize(
    "bad",
    [
        {"mask_fractions": {10: 0.5}},  # past num_time_steps (10)
        {"mask_fractions": {0: 0.5}, "bins": [0, 12]},
        {"mask_fractions": {0: 1.0}},  # a share below 1
        {"mask_fractions": {}},
    ],
)
def test_time_steps_outside_the_range_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TimeStepMasking.model_validate(bad)


def test_masking_fractions_per_time_step_match_the_config() -> None:
    cfg = MlmConfig(time_steps=TimeStepMasking.model_validate(SEED_EXAMPLE))
    assert cfg.time_steps is not None
    rows, length = 4000, 256
    ids = torch.randint(3, 1000, (rows, length), generator=torch.Generator().manual_seed(0))

    def targets_of_seed(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return mask_tokens(
            ids, cfg, generator=generator, mask_id=1000, vocab_size=1000, ignore_index=-100
        )[1]

    targets = targets_of_seed(11)
    # The same generator state draws the same time steps as mask_tokens did first.
    steps, fractions = time_step_fractions(cfg.time_steps, rows, torch.Generator().manual_seed(11))
    share = (targets != -100).float().mean(dim=1)
    for t in range(10):
        mine = steps == t
        assert int(mine.sum()) > 300  # uniform over ten time steps
        assert float(share[mine].mean()) == pytest.approx(cfg.time_steps.fraction(t), abs=0.01)
    assert torch.equal(
        fractions.squeeze(1)[steps == 9], torch.full((int((steps == 9).sum()),), 0.9)
    )
    # A pure function of the seed: the same masks again.
    assert torch.equal(targets, targets_of_seed(11))


def test_only_the_drawn_bins_are_used() -> None:
    cfg = TimeStepMasking(num_time_steps=10, mask_fractions={0: 0.1, 9: 0.9}, bins=[0, 9])
    steps, fractions = time_step_fractions(cfg, 500, torch.Generator().manual_seed(1))
    assert set(steps.tolist()) == {0, 9}
    assert sorted({round(f, 6) for f in fractions.squeeze(1).tolist()}) == [0.1, 0.9]
