"""Strategy ``finetune`` (training.finetune): the standard step on a pretrained model
with part of it frozen and its parts at their own learning rates.

Freezing happens before the model is wrapped, so DDP and FSDP see only what trains,
and the frozen weights stay out of checkpoints (reloaded from model.pretrained,
checked by sha256). Learning rates become optimizer parameter groups, which the
schedule scales together and checkpoints carry.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from kubetrain_core.config import ConfigError, FinetuneConfig, TrainingLoopConfig
from kubetrain_trainer.parallel import shard_units
from kubetrain_trainer.strategies.base import StandardStrategy


def _options(loop: TrainingLoopConfig) -> FinetuneConfig:
    if loop.finetune is None:  # the config refuses this; a plugin subclass may not
        raise ConfigError("training.finetune", ["the finetune strategy needs its options"])
    return loop.finetune


def layers(model: nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter's layer, numbered as layer-wise LR decay counts them: 0 for what
    comes before the first block (embeddings), i for block i (1..N), N+1 after the
    last (final norm, head); and N. Blocks are the model's _no_split_modules."""
    blocks = shard_units(model)
    owner = {id(p): i + 1 for i, block in enumerate(blocks) for p in block.parameters()}
    found: dict[str, int] = {}
    seen_block = False
    for name, param in model.named_parameters():
        layer = owner.get(id(param))
        if layer is not None:
            seen_block = True
        found[name] = layer if layer is not None else (len(blocks) + 1 if seen_block else 0)
    return found, len(blocks)


class FinetuneStrategy(StandardStrategy):
    """Freeze by name patterns or the first N blocks; LR scales per pattern and
    layer-wise LR decay."""

    @classmethod
    def configure_model(cls, model: nn.Module, loop: TrainingLoopConfig) -> None:
        options = _options(loop)
        names = [name for name, _ in model.named_parameters()]
        frozen: set[str] = set()
        for pattern in options.freeze:
            matched = fnmatch.filter(names, pattern)
            if not matched:
                raise ConfigError(
                    "training.finetune.freeze",
                    [f"{pattern!r} matches no parameter; names look like {names[:3]}"],
                )
            frozen.update(matched)
        if options.freeze_blocks:
            layer, blocks = layers(model)
            if options.freeze_blocks > blocks:
                raise ConfigError(
                    "training.finetune.freeze_blocks",
                    [f"{options.freeze_blocks} blocks asked, the model has {blocks}"],
                )
            frozen.update(n for n in names if layer[n] <= options.freeze_blocks)
        for name, param in model.named_parameters():
            if name in frozen:
                param.requires_grad_(False)

    @classmethod
    def lr_scales(cls, model: nn.Module, loop: TrainingLoopConfig) -> dict[str, float]:
        options = _options(loop)
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        scales = dict.fromkeys(names, 1.0)
        unassigned = list(names)
        for rule in options.lr_scales:
            if not fnmatch.filter(names, rule.pattern):
                raise ConfigError(
                    "training.finetune.lr_scales",
                    [
                        f"{rule.pattern!r} matches no trainable parameter; names look like "
                        f"{names[:3]}"
                    ],
                )
            for name in fnmatch.filter(unassigned, rule.pattern):  # the first match wins
                scales[name] = rule.scale
                unassigned.remove(name)
        if options.layer_lr_decay is not None:
            layer, blocks = layers(model)
            if not blocks:
                raise ConfigError(
                    "training.finetune.layer_lr_decay",
                    ["the model names no blocks (_no_split_modules) to decay the LR over"],
                )
            for name in scales:
                scales[name] *= options.layer_lr_decay ** (blocks + 1 - layer[name])
        return scales
