"""LR schedules: warmup, cosine, exponential, resume through state dicts, and scale_lr."""

from __future__ import annotations

import io
import itertools
import math
from typing import Any

import pytest
import torch
from torch.optim.lr_scheduler import LRScheduler

from kubetrain_core.config.schema import SchedulerConfig
from kubetrain_trainer.optimization.schedulers import build_scheduler, current_lr, scale_lr

PEAK = 0.1


def _optimizer() -> torch.optim.Optimizer:
    # Two groups, as the optimizer builders make (decayed and not).
    groups: list[dict[str, Any]] = [
        {"params": [torch.nn.Parameter(torch.zeros(2, 2))]},
        {"params": [torch.nn.Parameter(torch.zeros(2))]},
    ]
    return torch.optim.SGD(groups, lr=PEAK)


def _lrs(scheduler: LRScheduler, steps: int) -> list[float]:
    """LR used by updates 0..steps-1, stepping the optimizer as a loop would."""
    out = []
    for _ in range(steps):
        out.append(current_lr(scheduler))
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _build(name: str, total: int = 100, **cfg: float) -> LRScheduler:
    return build_scheduler(_optimizer(), SchedulerConfig(name=name, **cfg), total)


@pytest.mark.parametrize("name", ["constant", "linear_warmup", "cosine", "exponential"])
def test_warmup_ramps_linearly_from_near_zero_to_peak(name: str) -> None:
    lrs = _lrs(_build(name, warmup_steps=10), 10)
    assert lrs[0] == pytest.approx(PEAK / 10)
    assert lrs[-1] == pytest.approx(PEAK)
    steps = [b - a for a, b in itertools.pairwise(lrs)]
    assert all(s == pytest.approx(PEAK / 10) for s in steps)


@pytest.mark.parametrize("name", ["constant", "linear_warmup"])
def test_constant_after_warmup(name: str) -> None:
    lrs = _lrs(_build(name, warmup_steps=5), 50)
    assert lrs[5:] == [pytest.approx(PEAK)] * 45
    without = _lrs(_build(name), 10)
    assert without == [pytest.approx(PEAK)] * 10


def test_cosine_reaches_min_at_total_steps_and_stays() -> None:
    sched = _build("cosine", total=100, warmup_steps=10, min_lr_ratio=0.1)
    lrs = _lrs(sched, 100)
    assert lrs[10] == pytest.approx(PEAK)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:])), "monotone decay"
    # Halfway through the decay the cosine is at the midpoint of peak and floor.
    assert lrs[55] == pytest.approx(PEAK * (0.1 + 0.9 * 0.5))
    assert current_lr(sched) == pytest.approx(PEAK * 0.1)  # after total_steps steps
    assert _lrs(sched, 5) == [pytest.approx(PEAK * 0.1)] * 5
    assert all(g["lr"] == pytest.approx(PEAK * 0.1) for g in sched.optimizer.param_groups)


def test_exponential_multiplies_by_decay_rate_per_step() -> None:
    lrs = _lrs(_build("exponential", warmup_steps=3, decay_rate=0.9), 10)
    assert lrs[3] == pytest.approx(PEAK)
    for n in range(4, 10):
        assert lrs[n] == pytest.approx(PEAK * 0.9 ** (n - 3))


def test_total_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        _build("cosine", total=0)


@pytest.mark.parametrize("name", ["constant", "cosine", "exponential"])
def test_state_dict_round_trip_resumes_the_same_schedule(name: str) -> None:
    cfg = {"warmup_steps": 5, "min_lr_ratio": 0.2, "decay_rate": 0.95}
    reference = _lrs(_build(name, total=40, **cfg), 40)

    first = _build(name, total=40, **cfg)
    _lrs(first, 17)
    # Through torch.save/torch.load(weights_only=True), as a checkpoint stores them.
    buffer = io.BytesIO()
    torch.save({"sched": first.state_dict(), "opt": first.optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    saved_sched, saved_opt = saved["sched"], saved["opt"]

    # A fresh process builds everything anew (even with a different total) and loads the state.
    resumed = _build(name, total=999, **cfg)
    resumed.optimizer.load_state_dict(saved_opt)
    resumed.load_state_dict(saved_sched)
    assert _lrs(resumed, 23) == pytest.approx(reference[17:])


def test_scale_lr_scales_now_and_later_and_survives_resume() -> None:
    cfg = {"warmup_steps": 4, "min_lr_ratio": 0.1}
    reference = _lrs(_build("cosine", total=30, **cfg), 30)

    sched = _build("cosine", total=30, **cfg)
    _lrs(sched, 10)
    scale_lr(sched, 0.5)
    assert current_lr(sched) == pytest.approx(reference[10] * 0.5)
    assert sched.get_last_lr() == [pytest.approx(reference[10] * 0.5)] * 2
    _lrs(sched, 5)

    resumed = _build("cosine", total=30, **cfg)
    resumed.optimizer.load_state_dict(sched.optimizer.state_dict())
    resumed.load_state_dict(sched.state_dict())
    assert _lrs(resumed, 15) == pytest.approx([lr * 0.5 for lr in reference[15:]])


def test_scale_lr_compounds_and_rejects_non_positive() -> None:
    sched = _build("constant")
    scale_lr(sched, 0.5)
    scale_lr(sched, 0.5)
    assert _lrs(sched, 3) == [pytest.approx(PEAK / 4)] * 3
    with pytest.raises(ValueError, match="> 0"):
        scale_lr(sched, 0.0)


def test_cosine_without_warmup_starts_at_peak() -> None:
    lrs = _lrs(_build("cosine", total=10, min_lr_ratio=0.0), 10)
    assert lrs[0] == pytest.approx(PEAK)
    assert lrs[-1] == pytest.approx(PEAK * 0.5 * (1 + math.cos(math.pi * 0.9)))


def test_a_periodic_schedule_restarts_every_period_and_resumes() -> None:
    """A staged strategy's stages: warmup and cosine over each 10 steps, then again."""
    cfg = SchedulerConfig(name="cosine", warmup_steps=3, min_lr_ratio=0.1)
    lrs = _lrs(build_scheduler(_optimizer(), cfg, 40, period=10), 40)
    one = _lrs(build_scheduler(_optimizer(), cfg, 10), 10)
    assert lrs == pytest.approx(one * 4)
    assert lrs[0] < lrs[2] == pytest.approx(PEAK) and lrs[9] < lrs[3]
    first = build_scheduler(_optimizer(), cfg, 40, period=10)
    _lrs(first, 13)
    resumed = build_scheduler(_optimizer(), cfg, 40, period=10)
    resumed.optimizer.load_state_dict(first.optimizer.state_dict())
    resumed.load_state_dict(first.state_dict())
    assert _lrs(resumed, 27) == pytest.approx(lrs[13:])


def test_only_a_built_in_schedule_restarts() -> None:
    from kubetrain_core.config import ConfigError

    class Plain(torch.optim.lr_scheduler.StepLR):
        def __init__(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
            super().__init__(optimizer, step_size=5)

    with pytest.MonkeyPatch.context() as patch:
        from kubetrain_core import registry

        patch.setattr(registry.SCHEDULERS, "get", lambda name: Plain)
        with pytest.raises(ConfigError, match="cannot restart"):
            build_scheduler(_optimizer(), SchedulerConfig(name="cosine"), 40, period=10)
