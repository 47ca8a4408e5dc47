"""Which modules FSDP shards on their own, and gradient sync outside any wrapper."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kubetrain_core.config import ModelConfig
from kubetrain_trainer.models.transformer import Block, Transformer
from kubetrain_trainer.parallel import (
    full_state_dict,
    gradient_sync,
    is_sharded,
    shard_units,
    unwrap,
)


def test_the_native_transformer_shards_per_block() -> None:
    model = Transformer(ModelConfig(d_model=32, n_layers=3, n_heads=2, max_seq_len=16), 40)
    units = shard_units(model)
    assert len(units) == 3 and all(isinstance(u, Block) for u in units)


def test_a_transformers_model_shards_per_decoder_layer() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    units = shard_units(LlamaForCausalLM(config))
    assert [type(u).__name__ for u in units] == ["LlamaDecoderLayer"] * 2


def test_only_the_outermost_of_nested_units_is_a_unit() -> None:
    class Inner(nn.Linear):
        pass

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner(2, 2)

    class Model(nn.Module):
        _no_split_modules = ("Outer", "Inner")

        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = Outer(), Inner(2, 2)

    model = Model()
    assert shard_units(model) == [model.a, model.b]


def test_a_model_that_names_no_blocks_is_one_unit() -> None:
    assert shard_units(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == []


def test_an_unwrapped_model_accumulates_and_keeps_its_own_state_dict() -> None:
    model = nn.Linear(3, 1)
    for sync in (False, True):
        with gradient_sync(model, sync):
            model(torch.ones(1, 3)).sum().backward()
    assert model.weight.grad is not None
    assert torch.equal(model.weight.grad, torch.full((1, 3), 2.0))  # two backwards summed
    assert not is_sharded(model) and full_state_dict(model) is None


def test_fsdp_with_fp16_is_refused_naming_the_fix() -> None:
    from pydantic import ValidationError

    from kubetrain_core.config import TrainingLoopConfig

    with pytest.raises(ValidationError, match="use bf16"):
        TrainingLoopConfig(max_steps=1, parallelism="fsdp", precision="fp16")
    assert TrainingLoopConfig(max_steps=1).parallelism == "ddp"


def test_unwrap_reaches_the_module_a_compile_wrapper_holds() -> None:
    model = nn.Linear(2, 2)
    assert unwrap(model) is model
    assert unwrap(torch.compile(model)) is model  # type: ignore[arg-type]
