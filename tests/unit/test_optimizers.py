"""Optimizer builders: parameter groups and one real step of each optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kubetrain_core import registry
from kubetrain_core.config.schema import OptimizerConfig
from kubetrain_trainer.optimization.optimizers import build_optimizer, param_groups


class Tiny(nn.Module):
    """Embedding, linear layers with bias, LayerNorm, and an output tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.norm = nn.LayerNorm(8)
        self.hidden = nn.Linear(8, 8)
        self.head = nn.Linear(8, 11, bias=False)
        self.head.weight = self.embed.weight
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor = self.head(torch.relu(self.hidden(self.norm(self.embed(ids)))))
        return x


def _ids(group: dict[str, object]) -> set[int]:
    params = group["params"]
    assert isinstance(params, list)
    return {id(p) for p in params}


def test_weight_decay_only_on_matrices() -> None:
    model = Tiny()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0
    assert _ids(decay) == {id(model.embed.weight), id(model.hidden.weight)}
    assert _ids(no_decay) == {id(model.norm.weight), id(model.norm.bias), id(model.hidden.bias)}


def test_tied_and_frozen_parameters() -> None:
    model = Tiny()
    groups = param_groups(model, 0.1)
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)), "a tied parameter must appear once"
    assert id(model.frozen.weight) not in all_ids
    assert id(model.frozen.bias) not in all_ids


def test_empty_groups_left_out_and_no_params_rejected() -> None:
    only_bias = nn.LayerNorm(4)
    groups = param_groups(only_bias, 0.1)
    assert len(groups) == 1
    assert groups[0]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(nn.ReLU(), 0.1)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adamw", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("sgd", torch.optim.SGD),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_each_optimizer_steps_and_lowers_loss(name: str, cls: type) -> None:
    torch.manual_seed(0)
    model = Tiny()
    cfg = OptimizerConfig(name=name, lr=0.01, weight_decay=0.05)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, cls)
    assert all(g["lr"] == 0.01 for g in opt.param_groups)

    ids = torch.randint(0, 11, (4, 6))
    targets = torch.randint(0, 11, (4, 6))

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(ids).flatten(0, 1), targets.flatten())

    before_weights = model.hidden.weight.detach().clone()
    first = loss().item()
    for _ in range(20):
        opt.zero_grad()
        torch.autograd.backward(loss())
        opt.step()
    assert not torch.equal(model.hidden.weight, before_weights)
    assert loss().item() < first


def test_adam_has_no_weight_decay_and_others_do() -> None:
    cfg = {"lr": 1e-3, "weight_decay": 0.2}
    adam = build_optimizer(Tiny(), OptimizerConfig(name="adam", **cfg))
    assert all(g["weight_decay"] == 0.0 for g in adam.param_groups)
    for name in ("adamw", "sgd", "rmsprop"):
        opt = build_optimizer(Tiny(), OptimizerConfig(name=name, **cfg))
        assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.2]


def test_config_options_reach_the_optimizer() -> None:
    opt = build_optimizer(
        Tiny(), OptimizerConfig(name="adamw", betas=(0.8, 0.95), eps=1e-6, lr=2e-3)
    )
    group = opt.param_groups[0]
    assert group["betas"] == (0.8, 0.95)
    assert group["eps"] == 1e-6
    sgd = build_optimizer(Tiny(), OptimizerConfig(name="sgd", momentum=0.5))
    assert sgd.param_groups[0]["momentum"] == 0.5
    rms = build_optimizer(Tiny(), OptimizerConfig(name="rmsprop", alpha=0.9, momentum=0.3))
    assert rms.param_groups[0]["alpha"] == 0.9
    assert rms.param_groups[0]["momentum"] == 0.3


def test_unknown_name_lists_registered() -> None:
    cfg = OptimizerConfig.model_construct(name="lion")
    with pytest.raises(registry.UnknownComponentError, match="adamw"):
        build_optimizer(Tiny(), cfg)
