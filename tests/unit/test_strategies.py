"""The standard strategy's fp16 path: loss-scale overflows are GradScaler's to handle."""

from __future__ import annotations

import math
from typing import Any

import torch

from kubetrain_core.config import OptimizationConfig, RecoveryConfig, TrainingLoopConfig
from kubetrain_core.config.model import ModelConfig
from kubetrain_trainer.distributed import DistInfo
from kubetrain_trainer.models.adapters import StandardModelAdapter
from kubetrain_trainer.optimization.losses import LanguageModelingLoss
from kubetrain_trainer.optimization.optimizers import build_optimizer
from kubetrain_trainer.optimization.schedulers import build_scheduler
from kubetrain_trainer.recovery import NanGuard, Verdict
from kubetrain_trainer.strategies import StandardStrategy

V = 37


class FixedBatches:
    """Just the dataset method the strategy calls: one fixed batch per step."""

    def train_batch(self, step: int, micro: int, **_: Any) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(step))
        return {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}


def _strategy(precision: str) -> StandardStrategy:
    torch.manual_seed(0)
    model_cfg = ModelConfig(d_model=32, n_layers=1, n_heads=4, max_seq_len=16)
    adapter = StandardModelAdapter(model_cfg, V)
    model = adapter.build_model()
    cfg = OptimizationConfig()
    optimizer = build_optimizer(model, cfg.optimizer)
    return StandardStrategy(
        model=model,
        adapter=adapter,
        dataset=FixedBatches(),  # type: ignore[arg-type]
        loss_fn=LanguageModelingLoss(cfg.loss),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.scheduler, 10),
        cfg=cfg,
        loop=TrainingLoopConfig(max_steps=10, precision=precision),  # type: ignore[arg-type]
        dist_info=DistInfo(0, 1, 0, torch.device("cpu")),
    )


def test_an_fp16_overflow_is_not_a_bad_step_and_lowers_the_scale() -> None:
    strategy = _strategy("fp16")
    strategy.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # overflows fp16
    out = strategy.forward_backward(0)
    assert math.isfinite(out.loss) and out.grad_norm is None
    assert NanGuard(RecoveryConfig()).check(0, out.loss, out.grad_norm) is Verdict.OK
    strategy.apply_update()  # GradScaler skips the optimizer step and backs off
    assert strategy.scaler.get_scale() < 2.0**60


def test_a_poisoned_loss_is_still_a_bad_step_under_fp16() -> None:
    strategy = _strategy("fp16")
    out = strategy.forward_backward(0, poison=True)
    assert not math.isfinite(out.loss)
    assert NanGuard(RecoveryConfig()).check(0, out.loss, out.grad_norm) is not Verdict.OK


def test_fp32_reports_the_gradient_norm() -> None:
    out = _strategy("fp32").forward_backward(0)
    assert out.grad_norm is not None and out.grad_norm > 0
