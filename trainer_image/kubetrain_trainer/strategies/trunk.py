"""A progressive run's frozen trunk in lower precision, with LoRA adapters (seed 003's
quantised backbone with QLoRA adapters: training.progressive.trunk_precision and
trunk_adapters).

Precision: when a stack joins the frozen trunk its blocks' weights are cast to bf16 or
fp16 (half their memory) and the blocks compute in it: a block's input is cast down
and its output back, so the layers around it run as before. Adapters: peft's LoRA on
every linear layer of every stack that will join the trunk, added when the model is
built (B = 0: they change nothing until they train) so the optimizer, DDP and every
checkpoint hold them from the start. They stay in full precision over the stored
weights (the seed's adapters_full_precision). The export folds them in (W + (alpha/r)
B A, in fp32) under the model's own names: the exported model is the plain one.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from kubetrain_core.config import TrunkAdaptersConfig
from kubetrain_trainer.models.lora import peft_module

ADAPTER = ".lora_"  # in the names of the adapters' parameters (peft's)
_BASE = ".base_layer"  # peft's wrapped layer, in the names of its parameters

_DROPOUT = ".lora_dropout"  # peft's dropout on an adapter's input


def is_adapter(name: str) -> bool:
    return ADAPTER in name


def add_adapters(blocks: list[nn.Module], options: TrunkAdaptersConfig) -> None:
    """LoRA adapters on every linear layer of `blocks`; every parameter stays trainable
    (the strategy decides per stage what trains)."""
    peft = peft_module()
    linear = [(n, m) for b in blocks for n, m in b.named_modules() if _linear(m)]
    config = peft.LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=sorted({n.rsplit(".", 1)[-1] for n, _ in linear}),
        # GPT-2's Conv1D holds its weight transposed (in, out)
        fan_in_fan_out=any(type(m).__name__ == "Conv1D" for _, m in linear),
    )
    for block in blocks:  # per block: peft marks the module it injects into as a peft model
        peft.inject_adapter_in_model(config, block)
        block.requires_grad_(True)  # peft leaves only the adapters trainable


def train_adapter_dropout(model: nn.Module) -> None:
    """The adapters' dropout in train mode (in a trunk otherwise in eval mode)."""
    for name, module in model.named_modules():
        if name.endswith(_DROPOUT):
            module.train()


def _linear(module: nn.Module) -> bool:
    """A layer peft's LoRA adapts: nn.Linear, or transformers' Conv1D (GPT-2)."""
    return type(module) is nn.Linear or type(module).__name__ == "Conv1D"


class TrunkPrecision:
    """Stores blocks' weights (not their adapters) in `dtype` and runs them in it;
    float32: blocks stay as built."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        # per stored block: the dtype it was built in, and its two hooks
        self._stored: dict[nn.Module, tuple[torch.dtype, RemovableHandle, RemovableHandle]] = {}

    def store(self, blocks: list[nn.Module]) -> None:
        if self.dtype == torch.float32:
            return
        for block in blocks:
            if block in self._stored:
                continue
            # the dtype it was built in: what the layers around it compute in
            built = next(p.dtype for n, p in block.named_parameters() if not is_adapter(n))
            _cast(block, self.dtype)
            self._stored[block] = (
                built,
                block.register_forward_pre_hook(self._inputs_down, with_kwargs=True),
                block.register_forward_hook(partial(_outputs_up, built)),
            )

    def release(self) -> None:
        """Every stored block back in the dtype it was built in, with exactly the values
        it held."""
        for block, (built, *hooks) in self._stored.items():
            _cast(block, built)
            for hook in hooks:
                hook.remove()
        self._stored.clear()

    def _inputs_down(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return self._down(args), {k: self._down(v) for k, v in kwargs.items()}

    def _down(self, value: Any) -> Any:
        """Floating tensors in `value` in the stored dtype, also inside tuples and lists
        (a transformers block's rotary position_embeddings are a (cos, sin) pair)."""
        if isinstance(value, tuple | list):
            return type(value)(self._down(v) for v in value)
        return value.to(self.dtype) if _floating(value) else value


def _outputs_up(dtype: torch.dtype, module: nn.Module, args: Any, output: Any) -> Any:
    """The block's output in `dtype`, the precision of the stream between blocks."""
    return output.to(dtype) if _floating(output) else output


def _floating(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _cast(block: nn.Module, dtype: torch.dtype) -> None:
    """The block's own weights (not its adapters) to `dtype`, in place: the parameters
    stay the objects the optimizer and DDP hold."""
    for name, param in block.named_parameters():
        if not is_adapter(name):
            param.data = param.data.to(dtype)


def plain_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` (the model's state dict) as the model without adapters holds them: each
    adapted layer's weight with its adapter folded in, every float tensor in fp32."""
    deltas = {
        f"{name}{_BASE}.weight": module.get_delta_weight("default")
        for name, module in model.named_modules()
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")
    }
    plain: dict[str, torch.Tensor] = {}
    for name, value in weights.items():
        if is_adapter(name):
            continue
        plain_value = value.detach().float() if value.is_floating_point() else value.detach()
        if name in deltas:
            plain_value = plain_value + deltas[name].detach().float()
        plain[name.replace(_BASE, "")] = plain_value
    return plain
