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


def build_optimizer(
    model: nn.Module,
    cfg: OptimizerConfig,
    lr_scales: dict[str, float] | None = None,
    tags: dict[str, int] | None = None,
) -> torch.optim.Optimizer:
    """Build the optimizer ``cfg.name`` names (built-in or registered by an extension);
    ``lr_scales`` (parameter name -> LR multiplier, the finetune strategy's) and ``tags``
    (parameter name -> a group's "tag", for a strategy that changes a group's LR as it
    goes: the progressive one's stacks) split its groups further."""
    builder = registry.OPTIMIZERS.get(cfg.name)
    optimizer: torch.optim.Optimizer = builder(model, cfg)
    scaled = bool(lr_scales) and any(scale != 1.0 for scale in (lr_scales or {}).values())
    if scaled or tags:
        _split(optimizer, model, lr_scales or {}, tags or {})
    return optimizer


def _split(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    lr_scales: dict[str, float],
    tags: dict[str, int],
) -> None:
    """Each group of the freshly built `optimizer` becomes one group per LR multiplier
    and tag (its other settings kept), in that order, before any state exists. Done on
    the optimizer, not in each builder, so a plugin optimizer gets it too."""
    names = {id(p): name for name, p in model.named_parameters()}
    groups = optimizer.param_groups
    optimizer.param_groups = []
    for group in groups:
        by_key: dict[tuple[float, int], list[nn.Parameter]] = {}
        for param in group["params"]:
            name = names[id(param)]
            by_key.setdefault((lr_scales.get(name, 1.0), tags.get(name, 0)), []).append(param)
        for (scale, tag), params in sorted(by_key.items()):
            settings = {k: v for k, v in group.items() if k != "params"}
            extra = {"tag": tag} if tags else {}
            optimizer.add_param_group(
                {**settings, "params": params, "lr": group["lr"] * scale, "lr_scale": scale} | extra
            )
