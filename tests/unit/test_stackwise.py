"""Seed 003's stack-wise strategies on a 4-block native Transformer. progressive: what
each stage runs, trains and freezes, the trunk's lower LR, the stack files of the
export; end_to_end: stackwise keeps each stack on its own loss, rackwise is the
standard step."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from kubetrain_core.config import (
    ConfigError,
    MlmConfig,
    OptimizationConfig,
    ProgressiveConfig,
    TrainingLoopConfig,
)
from kubetrain_core.config.model import ModelConfig
from kubetrain_trainer.distributed import DistInfo
from kubetrain_trainer.metrics.console import summary_table
from kubetrain_trainer.metrics.records import EvalRecord, StepRecord
from kubetrain_trainer.metrics.stages import StageTally
from kubetrain_trainer.models.adapters import ModelAdapter, StandardModelAdapter
from kubetrain_trainer.optimization.losses import LanguageModelingLoss
from kubetrain_trainer.optimization.optimizers import build_optimizer
from kubetrain_trainer.optimization.schedulers import build_scheduler
from kubetrain_trainer.strategies import StandardStrategy
from kubetrain_trainer.strategies.activation_cache import ActivationCache
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


def _built(
    cls: type[StrategyT],
    loop: TrainingLoopConfig,
    dropout: float = 0.0,
    adapter: ModelAdapter | None = None,
) -> StrategyT:
    torch.manual_seed(0)
    adapter = adapter or StandardModelAdapter(
        ModelConfig(
            d_model=32, n_layers=4, n_heads=4, max_seq_len=16, dropout=dropout, tie_embeddings=False
        ),
        V,
    )
    model = adapter.build_model()
    cls.configure_model(model, loop)
    cfg = OptimizationConfig()
    optimizer = build_optimizer(
        model, cfg.optimizer, cls.lr_scales(model, loop), cls.group_tags(model, loop)
    )
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


class CycledBatches(FixedBatches):
    """Two batches in turn: every row comes back, as in a stage of several epochs."""

    def train_batch(self, step: int, micro: int, **kw: Any) -> dict[str, torch.Tensor]:
        return super().train_batch(step % 2, micro, **kw)

    def eval_batches(self, split: str, n: int, **_: Any) -> list[dict[str, torch.Tensor]]:
        return [super(CycledBatches, self).train_batch(1000 + i, 0) for i in range(n)]


def _cached(cache: bool, precision: str = "fp32") -> ProgressiveStrategy:
    options: dict[str, Any] = {"trunk_precision": precision}
    options |= {"cache": {"max_mib": 1}} if cache else {}
    strategy = _built(ProgressiveStrategy, _loop(**options), dropout=0.3)
    strategy.dataset = CycledBatches()  # type: ignore[assignment]
    return strategy


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_activation_cache_runs_the_trunk_once_per_row_with_the_same_losses(
    precision: str,
) -> None:
    cached, plain = _cached(True, precision), _cached(False, precision)
    # From stage 1 on, block 0 is in the trunk: it runs only when the trunk does.
    trunk_rows: list[int] = []
    cached.rack.blocks[0].register_forward_hook(
        lambda _m, args, _o: trunk_rows.append(args[0].shape[0]) if cached.stage else None
    )
    for step in range(4 * STAGE):
        torch.manual_seed(step)  # the same dropout masks for both (stage 0 has no trunk)
        a = cached.forward_backward(step)
        torch.manual_seed(step)
        b = plain.forward_backward(step)
        assert a.loss == pytest.approx(b.loss, rel=1e-5), step
        cached.apply_update()
        plain.apply_update()
    assert cached.cache is not None
    # Stages 1-3 each see the same 2 batches of 2 rows: 4 rows through the trunk each,
    # the stage's other step served from the cache (its trunk is another each stage).
    assert sum(trunk_rows) == 3 * 4
    assert (cached.cache.misses, cached.cache.hits) == (12, 3 * 2)
    val_a, val_b = cached.evaluate("val", 2), plain.evaluate("val", 2)
    assert val_a == pytest.approx(val_b, rel=1e-5) and sum(trunk_rows) == 3 * 4 + 4
    assert cached.evaluate("val", 2) == val_a and sum(trunk_rows) == 3 * 4 + 4  # all hits


def test_the_activation_cache_keeps_to_its_size_dropping_the_oldest_rows() -> None:
    cache = ActivationCache(max_bytes=3 * 8 * 4)  # three rows of 8 floats
    calls: list[int] = []

    def trunk(ids: torch.Tensor) -> torch.Tensor:
        calls.append(len(ids))
        return ids.float().repeat_interleave(2, dim=1)

    first = torch.arange(12).view(3, 4)
    out = cache.hidden(first, trunk)
    assert torch.equal(out, trunk(first)) and calls == [3, 3]
    cache.hidden(first[:1], trunk)  # a hit: row 0 becomes the most recent
    cache.hidden(torch.arange(100, 104).view(1, 4), trunk)  # evicts row 1, the oldest
    assert calls == [3, 3, 1] and cache.bytes == 3 * 8 * 4
    cache.hidden(first, trunk)
    assert calls == [3, 3, 1, 1]  # only row 1 ran again


@pytest.mark.parametrize("per_sequence", [True, False])
def test_per_sequence_masks_depend_on_the_sequence_and_time_step_alone(per_sequence: bool) -> None:
    """What lets the cache hit in training: the same row at the same time step (one
    bin here) is masked the same at any step, where per-step masks differ."""
    time_steps = {"mask_fractions": {0: 0.5}, "bins": [3], "per_sequence": per_sequence}
    loop = _loop().model_copy(update={"mlm": MlmConfig(time_steps=time_steps)})  # type: ignore[arg-type]
    strategy = _built(ProgressiveStrategy, loop)
    strategy.dataset.tokenizer = SimpleNamespace(mask_id=None, vocab_size=V - 1, special_ids=())  # type: ignore[attr-defined]
    batch = FixedBatches().train_batch(0, 0)
    one, other = (strategy.prepare(batch, ("train", step, 0, 0)) for step in (0, 7))
    same = torch.equal(one["input_ids"], other["input_ids"])
    assert same is per_sequence
    assert torch.equal(one["targets"] != -100, other["targets"] != -100) is per_sequence


def test_the_run_summary_shows_each_stages_steps_throughput_and_validation() -> None:
    tally = StageTally()
    for step in range(1, 7):  # stage 0: steps 1-3, stage 1: steps 4-6
        stage = (step - 1) // 3
        tally.step(StepRecord(step, 0.0, 2.0, None, 0.1, 1.0, 100.0 * step, 1.0, stage, stage + 1))
        if step in (2, 3, 5, 6):
            tally.evaluation(EvalRecord("val", step, 3.0 - step / 10))
    tally.evaluation(EvalRecord("test", 6, 0.5))  # not a validation
    rows = tally.rows()
    assert [(r["stage"], r["first_step"], r["last_step"]) for r in rows] == [(0, 1, 3), (1, 4, 6)]
    assert rows[1]["tokens_per_second"] == pytest.approx(500.0)
    assert (rows[1]["first_val_loss"], rows[1]["last_val_loss"]) == pytest.approx((2.5, 2.4))
    console = Console(record=True, width=140)
    console.print(summary_table({"steps": 6, "stages": rows}))
    text = console.export_text()
    assert "stage 1 (2 stacks)" in text and "steps 4-6 | val loss 2.5000 -> 2.4000" in text
