"""`build_components(cfg)`: every object the loop uses, built by name from the config.

The config tree mirrors this: `data` names the dataset adapter, `model` the model
adapter, `optimization` the optimizer, scheduler and loss, `training.strategy` how
a step is computed, `extensions.callbacks` the user's hooks. Nothing here trains,
saves or reports: that is the Trainer's and the Checkpointer's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from kubetrain_core import registry
from kubetrain_core.config import ConfigError, TrainingConfig
from kubetrain_trainer.callbacks import CallbackList, EarlyStopping, build_callbacks
from kubetrain_trainer.data.base import DatasetAdapter
from kubetrain_trainer.data.tokenizers import Tokenizer
from kubetrain_trainer.distributed import DistInfo
from kubetrain_trainer.models.adapters import ModelAdapter
from kubetrain_trainer.optimization import build_optimizer, build_scheduler
from kubetrain_trainer.parallel import parallelize
from kubetrain_trainer.strategies import TrainingStrategy


@dataclass
class Components:
    dataset: DatasetAdapter
    adapter: ModelAdapter
    raw_model: torch.nn.Module  # what is saved: never wrapped (sharded in place by fsdp)
    model: torch.nn.Module  # what is trained: raw_model compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    strategy: TrainingStrategy
    callbacks: CallbackList
    total_steps: int

    def stateful(self) -> dict[str, Any]:
        """What a checkpoint holds of them besides the model and optimizer (DCP's)."""
        return {
            "scheduler": self.scheduler,
            "scaler": self.strategy.scaler,
            "callbacks": self.callbacks,
        }


def build_components(
    cfg: TrainingConfig, dist_info: DistInfo, tokenizer: Tokenizer | None = None
) -> Components:
    """Build everything; `tokenizer` is the resumed checkpoint's (else trained or loaded
    as the config says), so a resumed run keeps its vocabulary."""
    torch.manual_seed(cfg.training.seed)  # identical initial weights on every rank
    try:
        dataset = registry.DATASET_ADAPTERS.get(cfg.data.adapter)(
            cfg.data, seed=cfg.training.seed, tokenizer=tokenizer
        )
    except ConfigError:  # already names its field (a tokenizer directory, ...)
        raise
    except (OSError, ValueError) as err:  # unreadable corpus, splits too small, ...
        raise ConfigError(cfg.data.path, [str(err)]) from None
    strategy_cls: type[TrainingStrategy] = registry.STRATEGIES.get(cfg.training.strategy)
    vocab_size = dataset.vocab_size + strategy_cls.extra_tokens(cfg.training, dataset.tokenizer)
    adapter: ModelAdapter = registry.MODEL_ADAPTERS.get(cfg.model.adapter)(cfg.model, vocab_size)
    raw_model = adapter.build_model()
    strategy_cls.configure_model(raw_model, cfg.training)  # what trains, before wrapping
    if not getattr(raw_model, "is_quantized", False):  # a 4/8-bit base is placed as loaded
        raw_model = raw_model.to(dist_info.device)
    model = parallelize(
        raw_model,
        cfg.training,
        dist_info,
        find_unused=strategy_cls.leaves_parameters_unused(cfg.training),
    )
    loss_fn = registry.LOSSES.get(cfg.optimization.loss.name)(cfg.optimization.loss)
    optimizer = build_optimizer(
        raw_model,
        cfg.optimization.optimizer,
        strategy_cls.lr_scales(raw_model, cfg.training),
        strategy_cls.group_tags(raw_model, cfg.training),
    )
    total_steps = _total_steps(cfg, dataset, dist_info.world_size)
    scheduler = build_scheduler(
        optimizer,
        cfg.optimization.scheduler,
        total_steps,
        strategy_cls.schedule_period(cfg.training),
    )
    strategy = strategy_cls(
        model=model,
        adapter=adapter,
        dataset=dataset,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        cfg=cfg.optimization,
        loop=cfg.training,
        dist_info=dist_info,
    )
    callbacks = build_callbacks(cfg.extensions.callbacks)
    early = cfg.training.early_stopping
    if early.patience is not None:
        callbacks.append(EarlyStopping(early.patience, early.metric, early.min_delta, early.mode))
    return Components(
        dataset=dataset,
        adapter=adapter,
        raw_model=raw_model,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        strategy=strategy,
        callbacks=CallbackList(callbacks),
        total_steps=total_steps,
    )


def _total_steps(cfg: TrainingConfig, dataset: DatasetAdapter, world_size: int) -> int:
    loop = cfg.training
    if loop.max_steps is not None:
        return loop.max_steps
    per_epoch = dataset.steps_per_epoch(world_size, cfg.optimization.accumulation_steps)
    return max(1, math.ceil((loop.num_epochs or 1.0) * per_epoch))
