"""The decoder-only Transformer and the standard model adapter."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from kubetrain_core import registry
from kubetrain_core.config.model import ModelConfig
from kubetrain_trainer.models.adapters import StandardModelAdapter
from kubetrain_trainer.models.transformer import Block, Transformer
from kubetrain_trainer.optimization.losses import LanguageModelingLoss

V = 37


def _cfg(**overrides: object) -> ModelConfig:
    base: dict[str, object] = {"d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 16}
    return ModelConfig.model_validate(base | overrides)


def _ids(b: int = 2, t: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def test_registry_names_point_at_the_model_classes() -> None:
    assert registry.MODELS.get("transformer") is Transformer
    assert registry.MODEL_ADAPTERS.get("standard") is StandardModelAdapter


def test_logits_have_batch_time_vocab_shape() -> None:
    torch.manual_seed(0)
    model = Transformer(_cfg(), V)
    logits = model(_ids(3, 7))
    assert logits.shape == (3, 7, V)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_initial_loss_is_near_log_vocab() -> None:
    # Small init: the untrained model predicts nearly uniformly.
    torch.manual_seed(0)
    model = Transformer(_cfg(), V)
    ids, targets = _ids(4, 16, seed=1), _ids(4, 16, seed=2)
    loss = F.cross_entropy(model(ids).reshape(-1, V), targets.reshape(-1))
    assert abs(loss.item() - math.log(V)) < 0.2


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = Transformer(_cfg(), V).eval()
    ids = _ids(2, 12)
    changed = ids.clone()
    k = 6
    changed[:, k] = (changed[:, k] + 1) % V
    with torch.no_grad():
        before, after = model(ids), model(changed)
    torch.testing.assert_close(before[:, :k], after[:, :k])
    assert not torch.allclose(before[:, k:], after[:, k:])


def test_tied_head_shares_the_embedding() -> None:
    tied = Transformer(_cfg(tie_embeddings=True), V)
    untied = Transformer(_cfg(tie_embeddings=False), V)
    assert tied.head.weight is tied.tok_emb.weight
    assert untied.head.weight is not untied.tok_emb.weight
    # The tied head's weights are counted once.
    assert untied.num_parameters() - tied.num_parameters() == V * 32
    assert tied.num_parameters() == sum(p.numel() for p in tied.parameters())
    pos = tied.pos_emb.weight.numel()
    assert tied.num_parameters(exclude_position_embedding=True) == tied.num_parameters() - pos


def test_residual_projections_get_the_scaled_init() -> None:
    torch.manual_seed(0)
    layers = 4
    model = Transformer(_cfg(d_model=128, n_layers=layers, max_seq_len=8), V)
    block = model.blocks[0]
    assert isinstance(block, Block)
    proj_std = block.attn.proj.weight.std().item()
    qkv_std = block.attn.qkv.weight.std().item()
    assert qkv_std == pytest.approx(0.02, rel=0.05)
    assert proj_std == pytest.approx(0.02 / math.sqrt(2 * layers), rel=0.05)


def test_sequence_longer_than_max_seq_len_is_rejected() -> None:
    model = Transformer(_cfg(max_seq_len=8), V)
    with pytest.raises(ValueError, match=r"max_seq_len"):
        model(_ids(1, 9))


def _loss_and_grads(model: Transformer, ids: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(123)  # same dropout masks in both models
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))
    torch.autograd.backward(loss)
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return loss.item(), grads


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    plain = Transformer(_cfg(dropout=0.1), V).train()
    ckpt = Transformer(_cfg(dropout=0.1, gradient_checkpointing=True), V).train()
    ckpt.load_state_dict(plain.state_dict())
    ids = _ids(2, 13)
    loss_plain, grads_plain = _loss_and_grads(plain, ids)
    loss_ckpt, grads_ckpt = _loss_and_grads(ckpt, ids)
    assert loss_plain == pytest.approx(loss_ckpt, rel=1e-6)
    assert len(grads_plain) == len(grads_ckpt) == len(list(plain.parameters()))
    for a, b in zip(grads_plain, grads_ckpt, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_dropout_only_acts_in_training_mode() -> None:
    model = Transformer(_cfg(dropout=0.5), V)
    ids = _ids()
    model.train()
    assert not torch.equal(model(ids), model(ids))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(ids))


def test_a_few_steps_fit_one_batch() -> None:
    torch.manual_seed(0)
    adapter = StandardModelAdapter(_cfg(), V)
    model = adapter.build_model()
    loss_fn = LanguageModelingLoss()
    ids = _ids(4, 13)
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = adapter.compute_loss(model, batch, loss_fn)
    for _ in range(30):
        optimizer.zero_grad()
        torch.autograd.backward(adapter.compute_loss(model, batch, loss_fn))
        optimizer.step()
    last = adapter.compute_loss(model, batch, loss_fn)
    assert last.item() < 0.5 * first.item()


def test_adapter_builds_the_configured_model_and_scores_batches() -> None:
    adapter = StandardModelAdapter(_cfg(), V)
    model = adapter.build_model()
    assert isinstance(model, Transformer)
    assert model.vocab_size == V
    ids = _ids(2, 9)
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:].clone()}
    batch["targets"][0, :3] = -100
    loss = adapter.compute_loss(model, batch, LanguageModelingLoss())
    logits = model(batch["input_ids"])
    keep = batch["targets"] != -100
    expected = F.cross_entropy(logits[keep], batch["targets"][keep])
    torch.testing.assert_close(loss, expected)
    assert adapter.count_tokens(batch) == 2 * 8
