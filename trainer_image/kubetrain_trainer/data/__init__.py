"""Data side of the trainer: tokenizers and dataset adapters."""

from kubetrain_trainer.data.base import Batch, DatasetAdapter
from kubetrain_trainer.data.text import TextFileDataset
from kubetrain_trainer.data.tokenizers import (
    BPETokenizer,
    CharacterTokenizer,
    Tokenizer,
    build_tokenizer,
)

__all__ = [
    "BPETokenizer",
    "Batch",
    "CharacterTokenizer",
    "DatasetAdapter",
    "TextFileDataset",
    "Tokenizer",
    "build_tokenizer",
]
