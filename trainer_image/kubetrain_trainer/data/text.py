"""A plain text file as a language-modelling dataset.

The corpus is tokenized once and split at token level into contiguous train,
validation and test parts (in that order). The train part is cut into
non-overlapping windows of ``seq_len + 1`` tokens (inputs plus the shifted
targets), visited in the order of sampling.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kubetrain_core.config.data import DataConfig
from kubetrain_trainer.data.base import Batch, Split
from kubetrain_trainer.data.readers import local_data
from kubetrain_trainer.data.sampling import AddressedDataset, SampleOrder
from kubetrain_trainer.data.tokenizers import Tokenizer, build_tokenizer


def read_corpus(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"data.path: {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"data.path: {path} is not UTF-8 text ({err})") from None
    except OSError as err:
        raise ValueError(f"data.path: cannot read {path}: {err}") from None
    if not text:
        raise ValueError(f"data.path: {path} is empty")
    return text


class TextFileDataset(AddressedDataset):
    """Batches from one UTF-8 text file (registry name ``text_file``)."""

    def __init__(self, cfg: DataConfig, *, seed: int, tokenizer: Tokenizer | None = None) -> None:
        self.cfg = cfg
        self.seed = seed
        self.seq_len = cfg.seq_len
        self.batch_size = cfg.batch_size
        text = read_corpus(Path(local_data(cfg)))
        self.tokenizer = (
            tokenizer if tokenizer is not None else build_tokenizer(text, cfg.tokenizer)
        )
        tokens = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        if len(tokens) == 0:
            raise ValueError(f"data.path: {cfg.path} encodes to no tokens")
        if int(tokens.max()) >= self.tokenizer.vocab_size:
            raise ValueError("data.tokenizer: produced ids outside its vocabulary")
        self._splits = self._split(tokens)
        self.order = SampleOrder(self._windows("train"), seed=seed, batch_size=cfg.batch_size)

    def _split(self, tokens: torch.Tensor) -> dict[Split, torch.Tensor]:
        n = len(tokens)
        fractions = self.cfg.splits
        end_train = round(n * fractions.train)
        end_val = min(n, round(n * (fractions.train + fractions.val)))
        parts: dict[Split, torch.Tensor] = {
            "train": tokens[:end_train],
            "val": tokens[end_train:end_val],
            "test": tokens[end_val:],
        }
        for split, part in parts.items():
            wanted = getattr(fractions, split) > 0
            if wanted and len(part) < self.seq_len + 1:
                raise ValueError(
                    f"data.seq_len ({self.seq_len}) needs at least {self.seq_len + 1} tokens in "
                    f"every split, but the {split} split (data.splits.{split}="
                    f"{getattr(fractions, split):g}) has {len(part)} of the corpus's {n}; "
                    "lower data.seq_len, enlarge that split or use a larger corpus"
                )
        return parts

    def _windows(self, split: Split) -> int:
        """Non-overlapping windows of ``seq_len`` inputs (+1 shifted target) in ``split``."""
        return max(0, (len(self._splits[split]) - 1) // self.seq_len)

    def split_tokens(self, split: Split) -> int:
        return len(self._splits[split])

    def _size(self, split: Split) -> int:
        return self._windows(split)

    def _gather(self, split: Split, windows: torch.Tensor, device: torch.device) -> Batch:
        offsets = windows[:, None] * self.seq_len + torch.arange(self.seq_len + 1)[None, :]
        chunk = self._splits[split][offsets]
        return {
            "input_ids": chunk[:, :-1].to(device, non_blocking=True),
            "targets": chunk[:, 1:].to(device, non_blocking=True),
        }
