"""Optimizers by name (registry ``optimizer``).

Each builder takes the model and its ``OptimizerConfig`` and returns a torch
optimizer over two parameter groups: weight matrices and embeddings (decayed)
and biases and norm weights (never decayed: decaying a LayerNorm gain or a
bias only pulls it towards zero without regularizing anything). torch picks
its fused/foreach implementation itself, so nothing here assumes a device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kubetrain_core import registry
from kubetrain_core.config.schema import OptimizerConfig

ParamGroup = dict[str, Any]


def param_groups(model: nn.Module, weight_decay: float) -> list[ParamGroup]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Parameters with two or more dimensions (linear and embedding matrices) are
    decayed; 1-D ones (biases, norm weights) are not. Tied parameters appear
    once (``named_parameters`` removes duplicates). Empty groups are left out.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups: list[ParamGroup] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def adamw(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW: decoupled weight decay on weight matrices only."""
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps
    )


def adam(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam without weight decay (L2 inside Adam is what AdamW fixes; use adamw for decay)."""
    return torch.optim.Adam(
        param_groups(model, 0.0), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0
    )


def sgd(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD with momentum and L2 weight decay on weight matrices."""
    return torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)


def rmsprop(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """RMSprop with momentum and L2 weight decay on weight matrices."""
    return torch.optim.RMSprop(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        alpha=cfg.alpha,
        eps=cfg.eps,
        momentum=cfg.momentum,
    )


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Build the optimizer ``cfg.name`` names (built-in or registered by an extension)."""
    builder = registry.OPTIMIZERS.get(cfg.name)
    optimizer: torch.optim.Optimizer = builder(model, cfg)
    return optimizer
