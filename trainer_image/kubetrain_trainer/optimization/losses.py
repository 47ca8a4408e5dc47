"""Next-token cross-entropy for language models."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from kubetrain_core.config.schema import LossConfig

Reduction = Literal["mean", "sum", "none"]

IGNORE_INDEX = -100


def compute_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    reduction: Reduction = "mean",
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Cross-entropy of ``logits [..., V]`` against ``targets [...]``.

    ``mean`` averages over the targets that are not ``ignore_index`` (NaN when
    there are none, as in PyTorch); ``none`` returns a loss per target in the shape
    of ``targets``, 0 where ignored; ``sum`` adds them.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}: "
            "expected logits [..., vocab] and targets [...]"
        )
    # cross_entropy wants [N, V] and [N]; flattening keeps it one kernel for any batch shape.
    losses = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    if reduction == "none":
        return losses.view(targets.shape)
    return losses


class LanguageModelingLoss(nn.Module):
    """``loss_fn(logits [B, T, V], targets [B, T])`` (registry name ``cross_entropy``)."""

    def __init__(self, cfg: LossConfig | None = None, *, reduction: Reduction = "mean") -> None:
        super().__init__()
        cfg = cfg if cfg is not None else LossConfig()
        self.label_smoothing = cfg.label_smoothing
        self.ignore_index = cfg.ignore_index
        self.reduction: Reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return compute_loss(
            logits,
            targets,
            self.reduction,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return (
            f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction}"
        )
