"""Learning-rate schedules by name (registry ``scheduler``), stepped once per optimizer step.

Every schedule is a ``torch.optim.lr_scheduler.LambdaLR`` whose multiplier is
a small picklable object computed in closed form from the step. Closed form
(rather than chaining LinearLR/CosineAnnealingLR/ExponentialLR in a
SequentialLR) matters here for two reasons:

* resume is exact at any step: LambdaLR saves ``last_epoch``, ``base_lrs``
  and the multiplier's fields, and the next LR is recomputed, not replayed;
* ``scale_lr`` (the LR cut after a rollback) is one multiplication of
  ``base_lrs``, which the state dict carries, so the cut survives a resume.
  Chained schedulers derive each LR from the previous one and keep absolute
  floors (``eta_min``), which a later scale would not reach.

Step ``s`` means "after ``s`` calls to ``scheduler.step()``": the LR used by
update ``s`` (0-based) is ``peak * multiplier(s)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from kubetrain_core import registry
from kubetrain_core.config import ConfigError
from kubetrain_core.config.schema import SchedulerConfig


@dataclass
class Multiplier:
    """Linear warmup over ``warmup_steps`` (from 1/warmup_steps to 1), then ``decay``.

    The first update already moves (a zero LR would waste a step); the peak is
    reached on the last warmup update.
    """

    warmup_steps: int
    # Restart every this many steps (a staged strategy's stages: each new stack gets
    # its own warmup and decay); None: one schedule over the run.
    period: int | None = field(default=None, kw_only=True)

    def __call__(self, step: int) -> float:
        if self.period:
            step %= self.period
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.decay(step - self.warmup_steps)

    def decay(self, steps_after_warmup: int) -> float:
        """Multiplier ``steps_after_warmup`` steps after the warmup ended."""
        return 1.0


@dataclass
class CosineMultiplier(Multiplier):
    """Half a cosine from 1 down to ``min_lr_ratio`` at ``total_steps``, flat after."""

    total_steps: int
    min_lr_ratio: float

    def decay(self, steps_after_warmup: int) -> float:
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, steps_after_warmup / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


@dataclass
class ExponentialMultiplier(Multiplier):
    """``decay_rate ** n`` after ``n`` post-warmup steps."""

    decay_rate: float

    def decay(self, steps_after_warmup: int) -> float:
        return float(self.decay_rate**steps_after_warmup)


def _lambda(optimizer: torch.optim.Optimizer, multiplier: Multiplier) -> LRScheduler:
    return LambdaLR(optimizer, lr_lambda=multiplier)


def constant(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int
) -> LRScheduler:
    """The peak LR throughout (after the optional warmup)."""
    return _lambda(optimizer, Multiplier(cfg.warmup_steps))


def linear_warmup(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int
) -> LRScheduler:
    """Ramp from ~0 to the peak over ``warmup_steps``, then constant.

    The same shape as ``constant`` with warmup; kept as its own name because
    configs say what they mean with it.
    """
    return _lambda(optimizer, Multiplier(cfg.warmup_steps))


def cosine(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> LRScheduler:
    """Warmup, then cosine decay to ``min_lr_ratio * peak`` at ``total_steps``."""
    return _lambda(
        optimizer,
        CosineMultiplier(cfg.warmup_steps, total_steps=total_steps, min_lr_ratio=cfg.min_lr_ratio),
    )


def exponential(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int
) -> LRScheduler:
    """Warmup, then multiply the LR by ``decay_rate`` every step."""
    return _lambda(optimizer, ExponentialMultiplier(cfg.warmup_steps, decay_rate=cfg.decay_rate))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: SchedulerConfig,
    total_steps: int,
    period: int | None = None,
) -> LRScheduler:
    """Build the schedule ``cfg.name`` names over ``total_steps`` optimizer steps or,
    with `period`, over `period` steps, restarted every `period` steps."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    builder = registry.SCHEDULERS.get(cfg.name)
    scheduler: LRScheduler = builder(optimizer, cfg, period or total_steps)
    if period is not None:
        multipliers = getattr(scheduler, "lr_lambdas", [])
        if not multipliers or not all(isinstance(m, Multiplier) for m in multipliers):
            raise ConfigError(
                "optimization.scheduler.name",
                [f"{cfg.name!r} cannot restart at each stage: use a built-in schedule"],
            )
        for multiplier in multipliers:
            multiplier.period = period  # step 0's LR, already set, is the same
    return scheduler


def scale_lr(scheduler: LRScheduler, factor: float) -> None:
    """Make every LR from now on ``factor`` times what the schedule would give.

    Scales the schedule's ``base_lrs`` (saved in its state dict, so the cut
    survives checkpoint and resume) and the optimizer's current LR (so the very
    next update already uses it). Scales compound: call it once per rollback,
    and not again after loading a state dict that was saved after the call.
    """
    if not factor > 0.0:
        raise ValueError(f"LR scale must be > 0, got {factor}")
    scheduler.base_lrs = [base * factor for base in scheduler.base_lrs]
    for group in scheduler.optimizer.param_groups:
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            lr.mul_(factor)  # tensor LRs (capturable/fused) must keep their identity
        else:
            group["lr"] = lr * factor
        if "initial_lr" in group:
            group["initial_lr"] = group["initial_lr"] * factor
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def current_lr(scheduler: LRScheduler) -> float:
    """The scheduled LR as the next update will use it: the first parameter group's,
    less its multiplier when the finetune strategy gave the groups their own."""
    group = scheduler.optimizer.param_groups[0]
    lr = group["lr"]
    scale = float(group.get("lr_scale", 1.0))
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr) / scale
