"""Dataset adapters over records (JSONL, Parquet, text): packed text, chat, seq2seq.

Records become fixed-length rows once (token_cache.py), and batches are rows picked
by sampling.py, so a batch stays a pure function of (seed, step, micro, rank).
Splits are contiguous row ranges in file order: train, then validation, then test.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from kubetrain_core.config.data import DataConfig
from kubetrain_trainer.data.base import Batch, Example, Split
from kubetrain_trainer.data.chat import ChatRenderer, messages_of
from kubetrain_trainer.data.hf_tokenizer import PretrainedTokenizer
from kubetrain_trainer.data.readers import (
    BadRecord,
    Record,
    data_files,
    field,
    local_data,
    read_records,
)
from kubetrain_trainer.data.sampling import AddressedDataset, SampleOrder
from kubetrain_trainer.data.token_cache import RowStats, cache_key, default_cache_dir, rows_dataset
from kubetrain_trainer.data.tokenizers import Tokenizer, build_tokenizer

IGNORE = -100  # the loss's default ignore_index: no loss on this target


class RecordDataset(AddressedDataset):
    """Rows of one shape built from records; subclasses say how records become rows."""

    columns: tuple[str, ...]

    def __init__(self, cfg: DataConfig, *, seed: int, tokenizer: Tokenizer | None = None) -> None:
        self.cfg, self.seq_len, self.batch_size = cfg, cfg.seq_len, cfg.batch_size
        self.files = data_files(local_data(cfg))
        self.tokenizer = tokenizer if tokenizer is not None else self._tokenizer()
        self._check_tokenizer()
        quality = cfg.model_dump(include={"quality_field", "min_quality_score"})
        settings = {"adapter": type(self).__name__, **self._settings(), **quality}
        key = cache_key(self.files, self.tokenizer._state(), settings)
        root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        rows, self.stats = rows_dataset(root, key, self._build_rows, self._features())
        if self.stats["rows"] == 0:
            problem = self.stats["first_problem"] or "no records long enough"
            raise ValueError(f"data.path: {cfg.path} gave no usable records ({problem})")
        self.cache_path = root / key
        self._rows = rows.with_format("torch", columns=list(self.columns))
        self._bounds = self._split(len(rows))
        self.order = SampleOrder(self._size("train"), seed=seed, batch_size=self.batch_size)

    # ---- what a subclass provides ---------------------------------------------

    @abstractmethod
    def _row(self, record: Record) -> dict[str, list[int]] | None:
        """The row of one record (None: nothing to learn in it), or BadRecord."""

    @abstractmethod
    def _batch(self, rows: dict[str, torch.Tensor]) -> Batch:
        """Model inputs and shifted targets from stacked rows."""

    def _settings(self) -> dict[str, Any]:
        return self.cfg.model_dump(include={"format", "seq_len", "bad_records", "text_field"})

    def _check_tokenizer(self) -> None:
        return None

    def _tokenizer(self) -> Tokenizer:
        """The configured tokenizer; trained ones learn from the text of every record."""
        kind = self.cfg.tokenizer.resolved_kind
        if kind == "pretrained":
            return build_tokenizer("", self.cfg.tokenizer)
        return build_tokenizer("\n".join(self._texts()), self.cfg.tokenizer)

    def _texts(self) -> Iterator[str]:
        for record in read_records(self.files, self.cfg.format, self.cfg.text_field):
            try:
                yield field(record, self.cfg.text_field, str)
            except BadRecord:
                if self.cfg.bad_records == "error":
                    raise  # it names file, line and field

    def _features(self) -> Any:
        import datasets

        ids = datasets.List(datasets.Value("int32"))
        return datasets.Features(dict.fromkeys(self.columns, ids))

    # ---- building the rows ----------------------------------------------------

    def _build_rows(self, stats: RowStats) -> Iterator[dict[str, list[int]]]:
        for record in read_records(self.files, self.cfg.format, self.cfg.text_field):
            stats.records += 1
            try:
                if self._below_quality(record):
                    stats.low_quality += 1
                    continue
                row = self._row(record)
            except BadRecord as bad:
                if self.cfg.bad_records == "error":
                    raise ValueError(f"{bad} (data.bad_records: skip skips such records)") from None
                stats.skipped += 1
                stats.first_problem = stats.first_problem or str(bad)
                continue
            if row is not None:
                stats.rows += 1
                yield row
        yield from self._flush(stats)

    def _below_quality(self, record: Record) -> bool:
        threshold, name = self.cfg.min_quality_score, self.cfg.quality_field
        if threshold is None or name is None:
            return False
        score = field(record, name, object)
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise BadRecord(f"{record.where}: field {name!r} is not a number")
        return score < threshold

    def _flush(self, stats: RowStats) -> Iterator[dict[str, list[int]]]:
        """Rows held back until the last record (packing); none by default."""
        return iter(())

    def _split(self, n: int) -> dict[Split, tuple[int, int]]:
        fractions = self.cfg.splits
        end_train = round(n * fractions.train)
        end_val = min(n, round(n * (fractions.train + fractions.val)))
        bounds: dict[Split, tuple[int, int]] = {
            "train": (0, end_train),
            "val": (end_train, end_val),
            "test": (end_val, n),
        }
        for split, (start, end) in bounds.items():
            if getattr(fractions, split) > 0 and end <= start:
                raise ValueError(
                    f"data.splits.{split} ({getattr(fractions, split):g}) of {n} rows is "
                    f"empty: enlarge that split, lower data.seq_len, or add data"
                )
        return bounds

    def _size(self, split: Split) -> int:
        start, end = self._bounds[split]
        return end - start

    # ---- the DatasetAdapter interface -----------------------------------------

    def split_tokens(self, split: Split) -> int:
        return self._size(split) * self.seq_len

    def _rows_of(self, split: Split, count: int) -> list[dict[str, list[int]]]:
        """The first `count` rows of `split` as plain lists."""
        start, end = self._bounds[split]
        chunk = self._rows.with_format(None)[start : min(end, start + count)]
        return [
            dict(zip(chunk, values, strict=True)) for values in zip(*chunk.values(), strict=True)
        ]

    def _example(self, prompt_ids: list[int], answer: list[int]) -> Example:
        # The prompt keeps its special tokens (a chat's role markers); the answer is text.
        tokenizer = self.tokenizer
        return Example(prompt_ids, tokenizer.decode(prompt_ids), tokenizer.decode_text(answer))

    def _gather(self, split: Split, indices: torch.Tensor, device: torch.device) -> Batch:
        rows = self._rows[(indices + self._bounds[split][0]).tolist()]
        batch = self._batch({name: rows[name].long() for name in self.columns})
        return {name: t.to(device, non_blocking=True) for name, t in batch.items()}


class PackedTextDataset(RecordDataset):
    """Registry name ``jsonl_text``: each record's text field, joined by the tokenizer's
    end-of-text token (a newline for tokenizers without one) and cut into blocks of
    seq_len + 1 (a short tail is dropped)."""

    columns = ("tokens",)

    def __init__(self, cfg: DataConfig, *, seed: int, tokenizer: Tokenizer | None = None) -> None:
        self._buffer: list[int] = []
        super().__init__(cfg, seed=seed, tokenizer=tokenizer)

    def _check_tokenizer(self) -> None:
        eos = self.tokenizer.eos_id
        self.separator = [eos] if eos is not None else self.tokenizer.encode("\n")

    def _row(self, record: Record) -> dict[str, list[int]] | None:
        self._buffer += self.tokenizer.encode(field(record, self.cfg.text_field, str))
        self._buffer += self.separator
        block = self.seq_len + 1
        if len(self._buffer) < block:
            return None
        row, self._buffer = self._buffer[:block], self._buffer[block:]
        return {"tokens": row}

    def _flush(self, stats: RowStats) -> Iterator[dict[str, list[int]]]:
        block = self.seq_len + 1
        while len(self._buffer) >= block:
            stats.rows += 1
            yield {"tokens": self._buffer[:block]}
            self._buffer = self._buffer[block:]
        self._buffer = []

    def _batch(self, rows: dict[str, torch.Tensor]) -> Batch:
        tokens = rows["tokens"]
        return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}


class ChatDataset(RecordDataset):
    """Registry name ``chat_jsonl``: one conversation per row, truncated to seq_len + 1
    tokens; loss only where the next token is the assistant's."""

    columns = ("input_ids", "targets")

    def _check_tokenizer(self) -> None:
        if not isinstance(self.tokenizer, PretrainedTokenizer):
            raise ValueError("data.tokenizer: chat_jsonl needs a Hugging Face tokenizer")
        self.renderer = ChatRenderer(self.tokenizer, self.cfg.chat_template)
        eos = self.tokenizer.eos_id
        self.pad_id = eos if eos is not None else 0

    def _settings(self) -> dict[str, Any]:
        return {
            **self.cfg.model_dump(include={"format", "seq_len", "bad_records", "messages_field"}),
            "template": self.renderer.template,
        }

    def _row(self, record: Record) -> dict[str, list[int]] | None:
        messages = messages_of(record, self.cfg.messages_field)
        ids, assistant = self.renderer.encode(messages, record.where)
        ids, assistant = ids[: self.seq_len + 1], assistant[: self.seq_len + 1]
        targets = [t if learn else IGNORE for t, learn in zip(ids[1:], assistant[1:], strict=True)]
        if all(t == IGNORE for t in targets):
            return None  # the assistant's reply starts past seq_len: nothing to learn
        pad = self.seq_len - len(targets)
        return {"input_ids": ids[:-1] + [self.pad_id] * pad, "targets": targets + [IGNORE] * pad}

    def examples(self, split: Split, count: int) -> list[Example]:
        """Each conversation up to its last assistant reply (the reply's header included,
        as the generation prompt renders it), and that reply as the reference; a reply
        that reaches the end of its row may be cut short by seq_len and is left out."""
        found = []
        for row in self._rows_of(split, count):
            ids, targets = row["input_ids"], row["targets"]
            learned = [i for i, t in enumerate(targets) if t != IGNORE]
            if learned[-1] == len(targets) - 1:
                continue
            start = learned[-1]
            while start - 1 in learned:  # back to the first token of the last reply
                start -= 1
            prompt_ids = ids[: start + 1]
            reply = targets[start : learned[-1] + 1]
            found.append(self._example(prompt_ids, reply))
        return found

    def _batch(self, rows: dict[str, torch.Tensor]) -> Batch:
        # Padding only ever follows the conversation, and its targets are ignored, so a
        # causal model needs no attention mask: no real token attends to a later pad.
        return {"input_ids": rows["input_ids"], "targets": rows["targets"]}


class Seq2SeqDataset(RecordDataset):
    """Registry name ``seq2seq_jsonl``: `input_field` for the encoder (at most
    max_input_length tokens) and `target_field` for the decoder to learn (at most
    max_target_length, its end-of-text token included), as the tokenizer adds its
    special tokens; padding is masked out of attention and loss."""

    columns = ("input_ids", "attention_mask", "targets")

    def _check_tokenizer(self) -> None:
        if not isinstance(self.tokenizer, PretrainedTokenizer):
            raise ValueError("data.tokenizer: seq2seq_jsonl needs a Hugging Face tokenizer")
        self.hf = hf = self.tokenizer.hf
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else 0
        self.max_input = self.cfg.max_input_length or self.seq_len
        self.max_target = self.cfg.max_target_length or self.seq_len

    def _settings(self) -> dict[str, Any]:
        return self.cfg.model_dump(
            include={"format", "bad_records", "input_field", "target_field", "seq_len"}
        ) | {"max_input": self.max_input, "max_target": self.max_target}

    def _row(self, record: Record) -> dict[str, list[int]] | None:
        source = field(record, self.cfg.input_field, str)
        target = field(record, self.cfg.target_field, str)
        ids = list(self.hf(source, max_length=self.max_input, truncation=True)["input_ids"])
        labels = list(
            self.hf(text_target=target, max_length=self.max_target, truncation=True)["input_ids"]
        )
        if not labels:
            raise BadRecord(f"{record.where}: field {self.cfg.target_field!r} is empty")
        pad_in, pad_out = self.max_input - len(ids), self.max_target - len(labels)
        return {
            "input_ids": ids + [self.pad_id] * pad_in,
            "attention_mask": [1] * len(ids) + [0] * pad_in,
            "targets": labels + [IGNORE] * pad_out,
        }

    def examples(self, split: Split, count: int) -> list[Example]:
        """The input as the prompt, the target as the reference."""
        found = []
        for row in self._rows_of(split, count):
            length = sum(row["attention_mask"])
            target = [t for t in row["targets"] if t != IGNORE]
            found.append(self._example(row["input_ids"][:length], target))
        return found

    def _batch(self, rows: dict[str, torch.Tensor]) -> Batch:
        return dict(rows)
