"""A progressive run's frozen trunk stored in fp16/bf16 and adapted by LoRA (seed
003's quantised backbone with QLoRA adapters), on CPU: only the trunk's adapters train,
its stored weights stay bit-identical, a rollback gets the exact weights back, and the
export folds the adapters into a plain model's weights."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tests.unit.test_stackwise import (
    STAGE,
    V,
    _built,
    _changed,
    _loop,
    _strategy,
    _train,
    _weights,
)

from kubetrain_core.config import ConfigError
from kubetrain_core.config.model import ModelConfig
from kubetrain_trainer.models.adapters import StandardModelAdapter
from kubetrain_trainer.models.hf import CausalLMAdapter, MaskedLMAdapter
from kubetrain_trainer.strategies.progressive import ProgressiveStrategy
from kubetrain_trainer.strategies.trunk import is_adapter

ADAPTERS = {"r": 4, "alpha": 8.0}


def _base(names: set[str], block: int) -> set[str]:
    return {n for n in names if n.startswith(f"blocks.{block}.") and not is_adapter(n)}


def _adapters(names: set[str], block: int) -> set[str]:
    return {n for n in names if n.startswith(f"blocks.{block}.") and is_adapter(n)}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_qlora_on_a_half_precision_trunk_trains_only_the_adapters(precision: str) -> None:
    strategy = _strategy(trunk_precision=precision, trunk_adapters=ADAPTERS)
    start = _weights(strategy)
    names = set(start)
    assert _adapters(names, 0) and _adapters(names, 2) and not _adapters(names, 3)
    _train(strategy, range(STAGE))  # stage 0: no trunk, the adapters wait
    after_first = _weights(strategy)
    assert not any(is_adapter(n) for n in _changed(start, after_first))
    _train(strategy, range(STAGE, 2 * STAGE))  # stage 1: stack 0 is the trunk
    after_second = _weights(strategy)
    # Stack 0's stored weights are the trained ones, rounded once to `precision`.
    rounded = {n: w.to(after_second[n].dtype) for n, w in after_first.items()}
    changed = _changed(rounded, after_second)
    assert _adapters(names, 0) <= changed  # the trunk's adapters learn ...
    assert not changed & (_base(names, 0) | {"tok_emb.weight", "pos_emb.weight"})  # ... alone
    assert _base(names, 1) <= changed and not _adapters(names, 1) & changed  # the new stack
    dtype = getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[precision])
    params = dict(strategy.raw.named_parameters())
    assert {params[n].dtype for n in _base(names, 0)} == {dtype}  # stored in half precision
    assert {params[n].dtype for n in _adapters(names, 0)} == {torch.float32}
    assert {params[n].dtype for n in _base(names, 1)} == {torch.float32}
    stored = {n: params[n].detach().clone() for n in _base(names, 0)}
    _train(strategy, range(2 * STAGE, 2 * STAGE + 1))
    assert all(torch.equal(stored[n], params[n]) for n in stored)


def test_a_half_precision_trunk_takes_half_the_memory_and_trains_like_fp32() -> None:
    losses = {}
    for precision in ("fp32", "bf16"):
        strategy = _strategy(trunk_precision=precision)
        _train(strategy, range(2 * STAGE))
        trunk = strategy.rack.stack_blocks(0)[0]
        losses[precision] = strategy.evaluate("val", 2)
        size = sum(p.numel() * p.element_size() for p in trunk.parameters())
        losses[f"{precision}-bytes"] = size
    assert losses["bf16-bytes"] * 2 == losses["fp32-bytes"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


def test_a_rollback_gets_back_the_exact_weights_of_an_earlier_stage() -> None:
    """before_restore puts every stored block back in fp32 (what the checkpoint of an
    earlier stage loads into) with the values it held; the next step stores it again."""
    strategy = _strategy(trunk_precision="fp16")
    _train(strategy, range(STAGE + 1))
    stored = {n: p.detach().clone() for n, p in strategy.rack.blocks[0].named_parameters()}
    strategy.before_restore()
    back = dict(strategy.rack.blocks[0].named_parameters())
    assert {p.dtype for p in back.values()} == {torch.float32}
    assert all(torch.equal(stored[n].float(), back[n]) for n in stored)
    _train(strategy, range(STAGE + 1, STAGE + 2))
    assert {p.dtype for p in strategy.rack.blocks[0].parameters()} == {torch.float16}


def test_the_export_folds_the_adapters_into_a_plain_models_weights() -> None:
    strategy = _strategy(trunk_adapters=ADAPTERS)
    _train(strategy, range(2 * STAGE + 2))  # the adapters of stacks 0 and 1 trained
    plain_weights = ProgressiveStrategy.export_weights(strategy.raw, strategy.loop, None)
    assert plain_weights is not None
    plain = _plain_model()
    assert set(plain_weights) == set(plain.state_dict())
    plain.load_state_dict(plain_weights)
    strategy.enter(3)
    strategy.raw.eval()
    plain.eval()
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(plain(ids), strategy.raw(ids), rtol=1e-5, atol=1e-5)


def _plain_model() -> Any:
    cfg = ModelConfig(d_model=32, n_layers=4, n_heads=4, max_seq_len=16, tie_embeddings=False)
    return StandardModelAdapter(cfg, V).build_model()


HF = {
    "llama": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64, "tie_word_embeddings": False},
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 4, "n_head": 4, "n_positions": 64,
             "tie_word_embeddings": False},
}  # fmt: skip


def _hf_strategy(model_type: str, **progressive: Any) -> ProgressiveStrategy:
    cfg = ModelConfig(adapter="hf_causal_lm", hf_config=HF[model_type])
    return _built(ProgressiveStrategy, _loop(**progressive), adapter=CausalLMAdapter(cfg, V))


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_a_hugging_face_decoder_grows_a_stack_per_stage_on_a_frozen_bf16_trunk(
    model_type: str,
) -> None:
    strategy = _hf_strategy(model_type, trunk_precision="bf16", trunk_adapters=ADAPTERS)
    ran: list[int] = []
    for i, block in enumerate(strategy.rack.blocks):  # a pass-through calls no child
        next(block.children()).register_forward_hook(lambda *_, i=i: ran.append(i))
    place = strategy.rack.place
    for stage in range(4):
        before = _weights(strategy)
        ran.clear()
        _train(strategy, range(stage * STAGE, (stage + 1) * STAGE))
        assert sorted(set(ran)) == list(range(stage + 1))  # the blocks past it pass through
        after = _weights(strategy)
        changed = _changed({n: w.to(after[n].dtype) for n, w in before.items()}, after)
        trunk = {n for n in changed if place[n] < stage} if stage else set()
        assert {n for n in changed if place[n] == stage and not is_adapter(n)}  # the new stack
        assert all(is_adapter(n) for n in trunk) and bool(trunk) == bool(stage)  # adapters only
        stacks = strategy.rack.stacks
        assert not any(stage < place[n] < stacks for n in changed)  # nothing above it


def test_a_hugging_face_model_refuses_what_it_cannot_stage_before_training() -> None:
    with pytest.raises(ConfigError, match=r"training\.progressive\.cache"):
        _hf_strategy("llama", cache={"max_mib": 8})
    bert = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 4, "num_attention_heads": 4}  # fmt: skip
    encoder = MaskedLMAdapter(ModelConfig(adapter="hf_masked_lm", hf_config=bert), V)
    with pytest.raises(ConfigError, match="stack-wise training needs a model"):
        # (its embeddings make 5 "blocks": 5 stages need more steps than the others)
        _built(ProgressiveStrategy, _loop().model_copy(update={"max_steps": 99}), adapter=encoder)
