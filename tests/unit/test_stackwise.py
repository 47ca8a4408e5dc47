"""Seed 003's stack-wise strategies on a 4-block native Transformer. progressive: what
each stage runs, trains and freezes, the trunk's lower LR, the stack files of the
export; end_to_end: stackwise keeps each stack on its own loss, rackwise is the
standard step."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from safetensors.torch import load_file

from kubetrain_core.config import (
    ConfigError,
    OptimizationConfig,
    ProgressiveConfig,
    TrainingLoopConfig,
)
from kubetrain_core.config.model import ModelConfig
from kubetrain_trainer.distributed import DistInfo
from kubetrain_trainer.metrics.records import StepRecord
from kubetrain_trainer.models.adapters import StandardModelAdapter
from kubetrain_trainer.optimization.losses import LanguageModelingLoss
from kubetrain_trainer.optimization.optimizers import build_optimizer
from kubetrain_trainer.optimization.schedulers import build_scheduler
from kubetrain_trainer.strategies import StandardStrategy
from kubetrain_trainer.strategies.progressive import ProgressiveStrategy
from kubetrain_trainer.strategies.rack import EndToEndStrategy

StrategyT = TypeVar("StrategyT", bound=StandardStrategy)

V = 37
STAGE = 3  # steps per stage


class FixedBatches:
    """Just the dataset methods the strategy calls: one fixed batch per step."""

    def train_batch(self, step: int, micro: int, **_: Any) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(step))
        return {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}

    def eval_batches(self, split: str, n: int, **_: Any) -> list[dict[str, torch.Tensor]]:
        return [self.train_batch(1000 + i, 0) for i in range(n)]


def _loop(**progressive: Any) -> TrainingLoopConfig:
    options = {"blocks_per_stack": 1, "stage_steps": STAGE, **progressive}
    return TrainingLoopConfig(max_steps=4 * STAGE, strategy="progressive", progressive=options)  # type: ignore[arg-type]


def _built(cls: type[StrategyT], loop: TrainingLoopConfig, dropout: float = 0.0) -> StrategyT:
    torch.manual_seed(0)
    adapter = StandardModelAdapter(
        ModelConfig(
            d_model=32, n_layers=4, n_heads=4, max_seq_len=16, dropout=dropout, tie_embeddings=False
        ),
        V,
    )
    model = adapter.build_model()
    cls.configure_model(model, loop)
    cfg = OptimizationConfig()
    optimizer = build_optimizer(model, cfg.optimizer, tags=cls.group_tags(model, loop))
    return cls(
        model=model,
        adapter=adapter,
        dataset=FixedBatches(),  # type: ignore[arg-type]
        loss_fn=LanguageModelingLoss(cfg.loss),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.scheduler, 4 * STAGE),
        cfg=cfg,
        loop=loop,
        dist_info=DistInfo(0, 1, 0, torch.device("cpu")),
    )


def _strategy(dropout: float = 0.0, **progressive: Any) -> ProgressiveStrategy:
    return _built(ProgressiveStrategy, _loop(**progressive), dropout)


def _train(strategy: StandardStrategy, steps: range) -> None:
    for step in steps:
        strategy.forward_backward(step)
        strategy.apply_update()


def _weights(strategy: ProgressiveStrategy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in strategy.raw.named_parameters()}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def _prefixes(names: set[str]) -> set[str]:
    return {n.split(".")[0] if not n.startswith("blocks.") else ".".join(n.split(".")[:2])
            for n in names}  # fmt: skip


def test_the_stage_is_a_function_of_the_step_and_the_last_runs_to_the_end() -> None:
    options = ProgressiveConfig(stage_steps=10)
    assert [options.stage_at(s, 3) for s in (0, 9, 10, 19, 20, 29, 30, 500)] == [
        0, 0, 1, 1, 2, 2, 2, 2
    ]  # fmt: skip
    strategy = _strategy()
    assert strategy.position(STAGE) == {"stage": 1, "active_stacks": 2}


def test_each_stage_runs_one_stack_more() -> None:
    strategy = _strategy()
    ran: list[int] = []
    for i, block in enumerate(strategy.rack.blocks):
        block.register_forward_hook(lambda *_, i=i: ran.append(i))
    for stage in range(4):
        ran.clear()
        strategy.forward_backward(stage * STAGE)
        strategy.discard_update()
        assert ran == list(range(stage + 1))


def test_a_frozen_trunk_stays_bit_identical_and_only_the_new_stack_learns() -> None:
    strategy = _strategy()
    start = _weights(strategy)
    _train(strategy, range(STAGE))  # stage 0: embeddings, stack 0 and the head
    after_first = _weights(strategy)
    assert _prefixes(_changed(start, after_first)) == {"tok_emb", "pos_emb", "blocks.0", "ln_f",
                                                        "head"}  # fmt: skip
    _train(strategy, range(STAGE, 2 * STAGE))  # stage 1: stack 1 on a frozen trunk
    after_second = _weights(strategy)
    assert _prefixes(_changed(after_first, after_second)) == {"blocks.1", "ln_f", "head"}
    trunk = strategy.rack.trunk(1)
    assert trunk and all(torch.equal(after_first[n], after_second[n]) for n in trunk)
    assert not any(p.requires_grad for n, p in strategy.raw.named_parameters() if n in trunk)


def test_a_frozen_trunk_runs_without_dropout_even_after_an_evaluation() -> None:
    strategy = _strategy(dropout=0.5)
    strategy.forward_backward(2 * STAGE)
    strategy.discard_update()
    modes = [block.training for block in strategy.rack.blocks[:3]]
    assert modes == [False, False, True]
    strategy.evaluate("val", 1)  # leaves every module in train mode
    strategy.forward_backward(2 * STAGE + 1)
    strategy.discard_update()
    assert [block.training for block in strategy.rack.blocks[:3]] == modes
    assert strategy.raw.training  # the root's flag: gradient checkpointing still applies


def test_a_scaled_lr_trunk_moves_by_its_share_of_the_update() -> None:
    """From the same state, a trunk at LR scale 0.25 moves a quarter as far as at 1."""
    moves = {}
    for scale in (1.0, 0.25):
        strategy = _strategy(trunk_strategy="scaled_lr", trunk_lr_scale=scale)
        _train(strategy, range(STAGE))
        before = _weights(strategy)
        _train(strategy, range(STAGE, STAGE + 1))
        # The trunk's groups are back at the schedule's LR, like every other group.
        assert len({g["lr"] for g in strategy.optimizer.param_groups}) == 1
        after = _weights(strategy)
        moves[scale] = {n: after[n] - before[n] for n in before}
    for name in ("blocks.0.attn.qkv.weight", "tok_emb.weight"):
        torch.testing.assert_close(moves[0.25][name], 0.25 * moves[1.0][name])
    new = "blocks.1.attn.qkv.weight"
    torch.testing.assert_close(moves[0.25][new], moves[1.0][new])


def test_the_export_holds_each_stack_and_the_rack_on_its_own(tmp_path: Path) -> None:
    strategy = _strategy(save_rack=True)
    weights = strategy.raw.state_dict()
    strategy.export_parts(weights, tmp_path)
    stacks = sorted(p.name for p in (tmp_path / "stacks").iterdir())
    assert stacks == [f"stack-{k}.safetensors" for k in range(4)]
    stack2 = load_file(str(tmp_path / "stacks" / "stack-2.safetensors"))
    assert stack2 and {n.split(".")[1] for n in stack2} == {"2"}
    assert all(torch.equal(t, weights[n]) for n, t in stack2.items())
    rack = load_file(str(tmp_path / "rack.safetensors"))
    assert set(rack) == {n for n in weights if n.startswith("blocks.")}


def test_a_split_that_does_not_fit_the_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="blocks_per_stack") as err:
        _strategy(blocks_per_stack=3)
    assert "4 blocks" in str(err.value)
    model = StandardModelAdapter(ModelConfig(n_layers=4), V).build_model()
    loop = _loop().model_copy(update={"max_steps": 3 * STAGE})
    with pytest.raises(ConfigError, match="stage_steps"):
        ProgressiveStrategy.configure_model(model, loop)


def test_a_step_record_carries_the_stage_only_when_there_is_one() -> None:
    plain = StepRecord(1, 0.0, 2.0, None, 0.1, 1.0, 10.0, 1.0)
    assert "stage" not in plain.fields() and "active_stacks" not in plain.fields()
    staged = StepRecord(1, 0.0, 2.0, None, 0.1, 1.0, 10.0, 1.0, stage=2, active_stacks=3)
    assert staged.fields()["stage"] == 2 and staged.fields()["active_stacks"] == 3


def _end_to_end(scope: str) -> EndToEndStrategy:
    loop = TrainingLoopConfig(
        max_steps=10,
        strategy="end_to_end",
        end_to_end={"scope": scope, "blocks_per_stack": 2},  # type: ignore[arg-type]
    )
    return _built(EndToEndStrategy, loop)


def test_stackwise_trains_each_stack_on_its_own_loss_alone() -> None:
    strategy = _end_to_end("stackwise")
    batch = strategy.train_batch(0, 0)
    logits = strategy.model(batch["input_ids"])
    assert logits.shape == (2, *batch["targets"].shape, V)  # one read-out per stack
    inner = strategy.loss_fn.loss
    losses = [inner(stack, batch["targets"]) for stack in logits]
    stack0 = [p for n, p in strategy.raw.named_parameters() if n.startswith("blocks.1.")]
    # No gradient crosses a stack boundary: the upper stack's loss does not reach stack 0.
    upper = torch.autograd.grad(losses[1], stack0, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in upper)
    own = torch.autograd.grad(losses[0] / 2, stack0)
    strategy.optimizer.zero_grad()
    strategy.cfg = strategy.cfg.model_copy(update={"max_grad_norm": None})  # unclipped
    out = strategy.forward_backward(0)
    assert out.loss == pytest.approx(
        float(sum(loss.detach() for loss in losses)) / 2, rel=1e-5
    )  # the stacks' mean
    for param, grad in zip(stack0, own, strict=True):
        torch.testing.assert_close(param.grad, grad)
    strategy.model.eval()  # evaluation reads the last stack out only, like the export
    assert strategy.model(batch["input_ids"]).shape == (*batch["targets"].shape, V)


def test_rackwise_is_the_standard_step() -> None:
    rackwise = _end_to_end("rackwise")
    standard = _built(StandardStrategy, TrainingLoopConfig(max_steps=10))
    for step in range(4):
        a, b = rackwise.forward_backward(step), standard.forward_backward(step)
        assert a.loss == b.loss and a.grad_norm == b.grad_norm
        rackwise.apply_update()
        standard.apply_update()
