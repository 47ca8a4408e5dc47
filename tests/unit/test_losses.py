"""Language-modelling loss: shapes, reductions, label smoothing, ignored targets, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from kubetrain_core import registry
from kubetrain_core.config.schema import LossConfig
from kubetrain_trainer.optimization.losses import LanguageModelingLoss, compute_loss

B, T, V = 3, 5, 11


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(B, T, V, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def targets() -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


def _manual_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def test_registry_builds_the_loss() -> None:
    assert registry.LOSSES.get("cross_entropy") is LanguageModelingLoss


def test_mean_loss_matches_per_token_negative_log_likelihood(
    logits: torch.Tensor, targets: torch.Tensor
) -> None:
    loss = LanguageModelingLoss(LossConfig())(logits, targets)
    assert loss.shape == ()
    torch.testing.assert_close(loss, _manual_nll(logits, targets).mean())


def test_reductions_keep_the_target_shape(logits: torch.Tensor, targets: torch.Tensor) -> None:
    per_token = compute_loss(logits, targets, reduction="none")
    assert per_token.shape == (B, T)
    torch.testing.assert_close(per_token, _manual_nll(logits, targets))
    torch.testing.assert_close(compute_loss(logits, targets, reduction="sum"), per_token.sum())
    per_sample = LanguageModelingLoss(reduction="none")(logits, targets).mean(dim=1)
    assert per_sample.shape == (B,)


def test_uniform_logits_give_log_vocab(targets: torch.Tensor) -> None:
    loss = compute_loss(torch.zeros(B, T, V), targets)
    assert loss.item() == pytest.approx(math.log(V), rel=1e-6)


def test_label_smoothing_mixes_in_the_uniform_distribution(
    logits: torch.Tensor, targets: torch.Tensor
) -> None:
    eps = 0.1
    smoothed = LanguageModelingLoss(LossConfig(label_smoothing=eps))(logits, targets)
    logp = torch.log_softmax(logits, dim=-1)
    expected = (1 - eps) * _manual_nll(logits, targets).mean() + eps * (-logp.mean(dim=-1)).mean()
    torch.testing.assert_close(smoothed, expected)
    # A confident, correct prediction costs more once the targets are smoothed.
    confident = F.one_hot(targets, V).float() * 20.0
    assert compute_loss(confident, targets).item() < 1e-6
    assert compute_loss(confident, targets, label_smoothing=eps).item() > 0.1


def test_ignored_targets_do_not_count(logits: torch.Tensor, targets: torch.Tensor) -> None:
    masked = targets.clone()
    masked[0, 2:] = -100
    masked[2, 0] = -100
    keep = masked != -100
    loss = compute_loss(logits, masked)
    torch.testing.assert_close(loss, _manual_nll(logits, targets)[keep].mean())
    per_token = compute_loss(logits, masked, reduction="none")
    assert torch.all(per_token[~keep] == 0)
    # Changing logits at ignored positions changes nothing.
    other = logits.clone()
    other[0, 2:] += 100.0
    torch.testing.assert_close(compute_loss(other, masked), loss)


def test_configured_ignore_index_is_used(logits: torch.Tensor, targets: torch.Tensor) -> None:
    masked = targets.clone()
    masked[1] = -1
    loss = LanguageModelingLoss(LossConfig(ignore_index=-1))(logits, masked)
    keep = masked != -1
    torch.testing.assert_close(loss, _manual_nll(logits, targets)[keep].mean())


def test_gradients_flow_to_every_counted_logit(targets: torch.Tensor) -> None:
    logits = torch.randn(B, T, V, requires_grad=True)
    masked = targets.clone()
    masked[1, 3] = -100
    LanguageModelingLoss()(logits, masked).backward()
    assert logits.grad is not None
    grad = logits.grad
    assert torch.isfinite(grad).all()
    assert torch.all(grad[1, 3] == 0)
    counted = torch.ones(B, T, dtype=torch.bool)
    counted[1, 3] = False
    assert torch.all(grad[counted].abs().sum(dim=-1) > 0)
    # Softmax cross-entropy gradients sum to zero over the vocabulary.
    torch.testing.assert_close(grad.sum(dim=-1), torch.zeros(B, T), atol=1e-6, rtol=0)


def test_shape_mismatch_is_an_error(logits: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="do not match"):
        compute_loss(logits, torch.zeros(B, T + 1, dtype=torch.long))
