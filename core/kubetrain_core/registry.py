"""Name -> component registries.

Every pluggable piece of the trainer (model adapter, dataset adapter, strategy,
optimizer, scheduler, loss, callback) is chosen by name in the config. A
registry maps names to classes; built-ins are listed as lazy import paths so
that this module (and the config package that validates names against it)
never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class UnknownComponentError(KeyError):
    """A config names a component that no registry entry provides."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry:
    """Named classes of one kind, e.g. every optimizer the trainer can build."""

    def __init__(self, kind: str, builtins: dict[str, str]) -> None:
        self.kind = kind
        self._lazy = dict(builtins)  # name -> "module:attr", imported on first use
        self._classes: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Class decorator: ``@OPTIMIZERS.register("lion")``."""

        def add(cls: Any) -> Any:
            self._classes[name] = cls
            self._lazy.pop(name, None)
            return cls

        return add

    def names(self) -> list[str]:
        return sorted({*self._lazy, *self._classes})

    def __contains__(self, name: object) -> bool:
        return name in self._classes or name in self._lazy

    def get(self, name: str) -> Any:
        if name not in self:
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}"
            )
        if name not in self._classes:
            module, attr = self._lazy.pop(name).split(":")
            self._classes[name] = getattr(importlib.import_module(module), attr)
        return self._classes[name]


_P = "kubetrain_trainer"

MODEL_ADAPTERS = Registry(
    "model adapter",
    {
        "standard": f"{_P}.models.adapters:StandardModelAdapter",
        "hf_causal_lm": f"{_P}.models.hf:CausalLMAdapter",
    },
)
MODELS = Registry("model architecture", {"transformer": f"{_P}.models.transformer:Transformer"})
TOKENIZERS = Registry(
    "tokenizer",
    {
        "char": f"{_P}.data.tokenizers:CharacterTokenizer",
        "bpe": f"{_P}.data.tokenizers:BPETokenizer",
        "pretrained": f"{_P}.data.hf_tokenizer:PretrainedTokenizer",
    },
)
DATASET_ADAPTERS = Registry(
    "dataset adapter",
    {
        "text_file": f"{_P}.data.text:TextFileDataset",
        "jsonl_text": f"{_P}.data.records:PackedTextDataset",
        "chat_jsonl": f"{_P}.data.records:ChatDataset",
    },
)
STRATEGIES = Registry("training strategy", {"standard": f"{_P}.strategies:StandardStrategy"})
OPTIMIZERS = Registry(
    "optimizer",
    {name: f"{_P}.optimization.optimizers:{name}" for name in ("adamw", "adam", "sgd", "rmsprop")},
)
SCHEDULERS = Registry(
    "scheduler",
    {
        name: f"{_P}.optimization.schedulers:{name}"
        for name in ("constant", "linear_warmup", "cosine", "exponential")
    },
)
LOSSES = Registry("loss", {"cross_entropy": f"{_P}.optimization.losses:LanguageModelingLoss"})
CALLBACKS = Registry(
    "callback",
    {
        "early_stopping": f"{_P}.callbacks:EarlyStopping",
    },
)
