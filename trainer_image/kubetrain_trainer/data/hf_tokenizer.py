"""A Hugging Face tokenizer directory (AutoTokenizer) as a kubetrain Tokenizer.

It is saved with the checkpoints like the trained ones: the `save_pretrained` files
travel inside the tokenizer JSON, so a resumed run and `export` use exactly the
tokenizer that trained the model, whatever happened to the directory since.
"""

from __future__ import annotations

import tempfile
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from kubetrain_core.config import ConfigError
from kubetrain_core.config.data import TokenizerConfig
from kubetrain_trainer.data.tokenizers import Tokenizer
from kubetrain_trainer.pretrained import local_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class PretrainedTokenizer(Tokenizer):
    """Registry name ``pretrained``: `data.tokenizer.path` (default model.pretrained)."""

    kind = "pretrained"

    def __init__(self, hf: PreTrainedTokenizerBase) -> None:
        if not hf.is_fast:
            raise ValueError("data.tokenizer.path: only fast (tokenizer.json) tokenizers work")
        self.hf = hf

    @property
    def vocab_size(self) -> int:
        return len(self.hf)  # the base vocabulary plus added (special) tokens

    @property
    def eos_id(self) -> int | None:
        eos = self.hf.eos_token_id
        return int(eos) if isinstance(eos, int) else None

    @property
    def mask_id(self) -> int | None:
        mask = self.hf.mask_token_id
        return int(mask) if isinstance(mask, int) else None

    @property
    def special_ids(self) -> list[int]:
        return [int(i) for i in self.hf.all_special_ids]

    def encode(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        out = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(out["input_ids"]), [tuple(span) for span in out["offset_mapping"]]

    def decode(self, ids: list[int]) -> str:
        return str(self.hf.decode(ids))

    def decode_text(self, ids: list[int]) -> str:
        return str(self.hf.decode(ids, skip_special_tokens=True)).strip()

    @classmethod
    def train(cls, text: str, cfg: TokenizerConfig) -> Self:
        """Nothing is trained: the directory's tokenizer is loaded."""
        if cfg.path is None:
            raise ConfigError("data.tokenizer.path", ["a pretrained tokenizer needs a path"])
        return cls.from_directory(local_dir(cfg.path, "data.tokenizer.path"))

    @classmethod
    def from_directory(cls, directory: Path) -> Self:
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as err:
            raise ConfigError(
                "data.tokenizer.path", [f"{directory} holds no loadable tokenizer: {err}"]
            ) from None
        return cls(hf)

    def _state(self) -> dict[str, Any]:
        return self._files

    @cached_property
    def _files(self) -> dict[str, str]:
        """The save_pretrained files, written once: every checkpoint and the token cache's
        key need them, and the tokenizer never changes."""
        with tempfile.TemporaryDirectory(prefix="kubetrain-tokenizer-") as tmp:
            self.hf.save_pretrained(tmp)
            return {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(tmp).iterdir())}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Self:
        with tempfile.TemporaryDirectory(prefix="kubetrain-tokenizer-") as tmp:
            for name, text in state.items():
                (Path(tmp) / Path(name).name).write_text(text, encoding="utf-8")
            return cls.from_directory(Path(tmp))

    def save_pretrained(self, directory: Path) -> None:
        self.hf.save_pretrained(str(directory))
