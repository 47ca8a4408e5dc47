"""Name -> component registries.

Every pluggable piece of the trainer (model adapter, dataset adapter, strategy,
optimizer, scheduler, loss, callback, metric) is chosen by name in the config. A
registry maps names to classes; built-ins are listed as lazy import paths so
that this module (and the config package that validates names against it)
never imports torch.

User code plugs in two ways, both without a line of kubetrain changed: any name may
be an import path, ``package.module:Name``, found on the image's Python path; and an
installed package may add names through the ``kubetrain.plugins`` entry-point group,
``"<kind key>.<name>" = "package.module:Name"`` (e.g. ``"optimizer.lion"``). Both are
known from metadata alone: nothing is imported until the trainer builds the component.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "kubetrain.plugins"
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
"""``package.module:Name``: a plugin named by where it lives."""


class UnknownComponentError(KeyError):
    """A config names a component that no registry entry provides."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry:
    """Named classes of one kind, e.g. every optimizer the trainer can build."""

    def __init__(self, kind: str, builtins: dict[str, str]) -> None:
        self.kind = kind
        self.key = kind.replace(" ", "_")  # the entry-point name prefix
        self._lazy = dict(builtins)  # name -> "module:attr", imported on first use
        self._classes: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Class decorator: ``@OPTIMIZERS.register("lion")``."""

        def add(cls: Any) -> Any:
            self._classes[name] = cls
            self._lazy.pop(name, None)
            return cls

        return add

    def _plugins(self) -> dict[str, str]:
        """Names installed packages add through the entry-point group (metadata only)."""
        prefix = f"{self.key}."
        return {
            ep.name.removeprefix(prefix): ep.value
            for ep in entry_points(group=ENTRY_POINT_GROUP)
            if ep.name.startswith(prefix)
        }

    def names(self) -> list[str]:
        return sorted({*self._lazy, *self._classes, *self._plugins()})

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        known = name in self._classes or name in self._lazy
        return known or bool(IMPORT_PATH.match(name)) or name in self._plugins()

    def is_plugin(self, name: str) -> bool:
        """Whether `name` is user code (an import path or an entry point), not built in."""
        return name not in self._lazy and (bool(IMPORT_PATH.match(name)) or name in self._plugins())

    def get(self, name: str) -> Any:
        """The class `name` stands for, importing it (and any plugin) on first use."""
        if name in self._classes:
            return self._classes[name]
        target = self._lazy.get(name) or self._plugins().get(name)
        if target is None and IMPORT_PATH.match(name):
            target = name
        if target is None:
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}, "
                "or a plugin as package.module:Name"
            )
        module, _, attr = target.partition(":")
        try:
            found = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise UnknownComponentError(
                f"{self.kind} {name!r}: cannot import {target} ({err}); is its package "
                "installed in the image?"
            ) from None
        self._lazy.pop(name, None)
        self._classes[name] = found
        return found


_P = "kubetrain_trainer"

MODEL_ADAPTERS = Registry(
    "model adapter",
    {
        "standard": f"{_P}.models.adapters:StandardModelAdapter",
        "hf_causal_lm": f"{_P}.models.hf:CausalLMAdapter",
        "hf_seq2seq": f"{_P}.models.hf:Seq2SeqLMAdapter",
        "hf_masked_lm": f"{_P}.models.hf:MaskedLMAdapter",
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
        "seq2seq_jsonl": f"{_P}.data.records:Seq2SeqDataset",
    },
)
STRATEGIES = Registry(
    "training strategy",
    {
        "standard": f"{_P}.strategies.base:StandardStrategy",
        "finetune": f"{_P}.strategies.finetune:FinetuneStrategy",
        "pretrain_mlm": f"{_P}.strategies.mlm:MaskedLMStrategy",
        "curriculum": f"{_P}.strategies.curriculum:CurriculumStrategy",
        "progressive": f"{_P}.strategies.progressive:ProgressiveStrategy",
        "end_to_end": f"{_P}.strategies.rack:EndToEndStrategy",
    },
)
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
# Scores of generated text (``evaluation.metrics``), each a TextMetric; plugins as "metric.<name>".
METRICS = Registry(
    "metric",
    {
        "bleu": f"{_P}.evaluation.metrics:Bleu",
        "rouge": f"{_P}.evaluation.metrics:Rouge",
        "accuracy": f"{_P}.evaluation.metrics:TokenAccuracy",
        "exact_match": f"{_P}.evaluation.metrics:ExactMatch",
        "recipe": f"{_P}.evaluation.recipe:RecipeMetric",
    },
)
