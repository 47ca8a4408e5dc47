"""Optimizers, learning-rate schedules and losses, each chosen by name from its registry.

Losses live in ``optimization.losses`` and are imported from there (not
re-exported here), so that importing the optimizer pieces never pulls them in.
"""

from kubetrain_trainer.optimization.optimizers import build_optimizer, param_groups
from kubetrain_trainer.optimization.schedulers import build_scheduler, current_lr, scale_lr

__all__ = ["build_optimizer", "build_scheduler", "current_lr", "param_groups", "scale_lr"]
