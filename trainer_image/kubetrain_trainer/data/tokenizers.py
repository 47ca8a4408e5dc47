"""Tokenizers: text <-> token ids, trained on the corpus and saved next to checkpoints.

A tokenizer is saved as one JSON file whose ``kind`` names its registry entry,
so ``Tokenizer.load`` restores the right class and a resumed run encodes the
corpus exactly as the first run did.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from kubetrain_core import registry
from kubetrain_core.config.data import TokenizerConfig

_FORMAT_VERSION = 1


class Tokenizer(ABC):
    """Maps text to ids in ``[0, vocab_size)`` and back."""

    kind: ClassVar[str]
    """Registry name, written into the saved file."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int | None:
        """The end-of-text id placed between packed documents, if the tokenizer has one."""
        return None

    @property
    def mask_id(self) -> int | None:
        """The mask token of masked language modelling ([MASK]), if it has one."""
        return None

    @property
    def special_ids(self) -> list[int]:
        """Ids of control tokens (never masked, never a target of masked LM)."""
        return []

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    def decode_text(self, ids: list[int]) -> str:
        """Generated or reference ids as plain text: no special tokens, no outer space."""
        return self.decode(ids).strip()

    @classmethod
    @abstractmethod
    def train(cls, text: str, cfg: TokenizerConfig) -> Self:
        """Build a tokenizer from the corpus (deterministic: every rank gets the same one)."""

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """JSON-serialisable state that ``_from_state`` turns back into this tokenizer."""

    @classmethod
    @abstractmethod
    def _from_state(cls, state: dict[str, Any]) -> Self: ...

    def save(self, path: Path) -> None:
        doc = {"kind": self.kind, "version": _FORMAT_VERSION, "state": self._state()}
        path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        """Restore a saved tokenizer; called on the base class it picks the saved kind."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            kind, state = doc["kind"], doc["state"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a saved tokenizer ({err})") from err
        target: type[Tokenizer] = registry.TOKENIZERS.get(kind)
        if not issubclass(target, cls):
            raise ValueError(f"{path}: holds a {kind!r} tokenizer, not a {cls.__name__}")
        return target._from_state(state)


class CharacterTokenizer(Tokenizer):
    """One id per distinct character of the corpus; unseen characters map to ``UNK_ID``."""

    kind = "char"
    UNK_ID: ClassVar[int] = 0
    UNK_TEXT: ClassVar[str] = "\ufffd"

    def __init__(self, chars: list[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("chars must be distinct single characters")
        self.chars = list(chars)
        # Id 0 is reserved for unknown characters; the corpus alphabet starts at 1.
        self._ids = {c: i + 1 for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        get = self._ids.get
        return [get(c, self.UNK_ID) for c in text]

    def decode(self, ids: list[int]) -> str:
        chars = self.chars
        return "".join(chars[i - 1] if 0 < i <= len(chars) else self.UNK_TEXT for i in ids)

    @classmethod
    def train(cls, text: str, cfg: TokenizerConfig) -> Self:
        return cls(sorted(set(text)))

    def _state(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars)}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Self:
        return cls(list(state["chars"]))


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 style) from Hugging Face ``tokenizers``: never an unknown token.

    The vocabulary always holds the 256 byte symbols, so the trained size is at
    least 256 even when ``vocab_size`` asks for less.
    """

    kind = "bpe"

    def __init__(self, hf: HFTokenizer) -> None:
        self._hf = hf

    @property
    def hf(self) -> HFTokenizer:
        """The Hugging Face ``tokenizers`` object (an export wraps it for transformers)."""
        return self._hf

    @property
    def vocab_size(self) -> int:
        return int(self._hf.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return list(self._hf.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._hf.decode(list(ids)))

    @classmethod
    def train(cls, text: str, cfg: TokenizerConfig) -> Self:
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
        return cls(hf)

    def _state(self) -> dict[str, Any]:
        return {"hf": json.loads(self._hf.to_str())}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Self:
        return cls(HFTokenizer.from_str(json.dumps(state["hf"])))


def build_tokenizer(text: str, cfg: TokenizerConfig) -> Tokenizer:
    """Train (or load) the tokenizer that ``cfg`` names on ``text``."""
    cls: type[Tokenizer] = registry.TOKENIZERS.get(cfg.resolved_kind)
    return cls.train(text, cfg)
