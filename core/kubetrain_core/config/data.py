"""The `data` section: where records come from, how they become tokens and batches."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubetrain_core import cel, registry
from kubetrain_core.config.base import LOCATION, Name, Section, registered

FieldName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[^\x00-\x1f]+$")]
HF_TOKENIZER_ADAPTERS = frozenset({"chat_jsonl", "seq2seq_jsonl"})
"""Record adapters that need a Hugging Face tokenizer and mask targets with -100."""
RECORD_ADAPTERS = HF_TOKENIZER_ADAPTERS | {"jsonl_text"}
"""Adapters reading JSONL/Parquet/text records from a file, a directory or a glob."""
TEXT_ADAPTERS = frozenset({"text_file", "jsonl_text"})
"""Adapters of plain text cut into full windows (no padding, no roles)."""


_QUALITY_NEEDS_FIELD = (
    "data.min_quality_score needs data.quality_field, the record field holding each score"
)


class TokenizerConfig(Section):
    """How text becomes token ids."""

    kind: Annotated[Name, registered(registry.TOKENIZERS, also=("auto",))] = "auto"
    """``auto`` (the model's own tokenizer when model.pretrained is set, else ``char``),
    ``char`` (one id per character), ``bpe`` (byte-level BPE trained on the data) or
    ``pretrained`` (a Hugging Face tokenizer directory, ``path``)."""
    vocab_size: int = Field(512, ge=16, le=262144)
    """Target vocabulary size for trained tokenizers (``bpe``); ignored by the others."""
    path: LOCATION | None = None
    """``pretrained``: a directory AutoTokenizer loads (relative to the config file);
    default model.pretrained."""

    @property
    def resolved_kind(self) -> str:
        """The registry name ``auto`` stands for: ``pretrained`` given a path, else ``char``."""
        if self.kind != "auto":
            return self.kind
        return "pretrained" if self.path is not None else "char"


class SplitConfig(Section):
    """Split of the corpus into train, validation and test parts, in that order: by tokens
    for ``text_file``, by records for the JSONL/Parquet adapters."""

    train: float = Field(0.9, gt=0.0, le=1.0)
    """Fraction used for training (the first part of the corpus)."""
    val: float = Field(0.05, ge=0.0, lt=1.0)
    """Fraction used for validation (after the train part)."""
    test: float = Field(0.05, ge=0.0, lt=1.0)
    """Fraction held out for the final test evaluation."""

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                "!has(self.train) || !has(self.val) || !has(self.test)"
                " || (self.train + self.val + self.test > 0.999999"
                " && self.train + self.val + self.test < 1.000001)",
                "splits: train + val + test must be 1.0",
            )
        )
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> Self:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class DataConfig(Section):
    """Where the data comes from and how it is batched."""

    adapter: Annotated[Name, registered(registry.DATASET_ADAPTERS)] = "text_file"
    """Dataset adapter (registry ``dataset adapter``): ``text_file`` (one UTF-8 file),
    ``jsonl_text`` (a text field, packed into seq_len blocks), ``chat_jsonl``
    (conversations; loss on assistant tokens only) or ``seq2seq_jsonl`` (input and
    target fields, for hf_seq2seq models)."""
    path: LOCATION
    """Corpus location: a file, a directory or a glob (relative paths resolve against the
    config file), or the same under ``s3://bucket/prefix`` (fetched once per machine,
    again when an object changes; credentials and endpoint from the AWS_* environment).
    JSONL, Parquet and text files for the record adapters."""
    format: Literal["auto", "jsonl", "parquet", "text"] = "auto"
    """Record adapters: the file format; ``auto`` goes by extension (.jsonl/.json,
    .parquet, anything else is text with one record per line)."""
    text_field: FieldName = "text"
    """``jsonl_text``: the record field holding the text."""
    messages_field: FieldName = "messages"
    """``chat_jsonl``: the record field holding the list of {role, content} messages."""
    input_field: FieldName = "input"
    """``seq2seq_jsonl``: the record field the encoder reads."""
    target_field: FieldName = "target"
    """``seq2seq_jsonl``: the record field the decoder learns to write."""
    max_input_length: int | None = Field(None, ge=1, le=131072)
    """``seq2seq_jsonl``: tokens of input kept (longer ones are truncated); default seq_len."""
    max_target_length: int | None = Field(None, ge=1, le=131072)
    """``seq2seq_jsonl``: tokens of target kept (longer ones are truncated); default seq_len."""
    chat_template: str | None = Field(None, min_length=1, max_length=65536)
    """``chat_jsonl``: a Jinja chat template; default the tokenizer's own, else a
    ChatML-style one (``<|im_start|>role\\ncontent<|im_end|>``)."""
    bad_records: Literal["error", "skip"] = "error"
    """Record adapters: a malformed record stops the run naming file, line and field
    (``error``), or is skipped and counted (``skip``)."""
    quality_field: FieldName | None = None
    """Record adapters: a numeric field scoring each record's quality (from a filter model
    or a heuristic), read with min_quality_score."""
    min_quality_score: float | None = Field(None, ge=-1e12, le=1e12)
    """Record adapters: records whose quality_field is below this are skipped and counted
    (the run log's "below quality"); a record without a number there is a bad record."""
    cache_dir: LOCATION | None = None
    """Record adapters: where tokenised corpora are cached (memory-mapped, keyed by the
    files, the tokenizer and these settings, so runs and ranks share one); default
    ``$KUBETRAIN_DATA_CACHE`` or ``~/.cache/kubetrain/data``."""
    tokenizer: TokenizerConfig = TokenizerConfig()
    seq_len: int = Field(128, ge=2, le=131072)
    """Tokens per training sequence (longer records are truncated)."""
    batch_size: int = Field(16, ge=1, le=65536)
    """Sequences per micro-batch on each process."""
    splits: SplitConfig = SplitConfig()

    model_config = ConfigDict(
        json_schema_extra=cel.rules(
            cel.rule(
                "!has(self.adapter) || !(self.adapter in ['chat_jsonl', 'seq2seq_jsonl'])"
                " || !has(self.tokenizer)"
                " || !has(self.tokenizer.kind)"
                " || self.tokenizer.kind in ['auto', 'pretrained']",
                "this data.adapter (chat_jsonl, seq2seq_jsonl) needs a Hugging Face"
                " tokenizer: tokenizer.kind auto or pretrained",
                fieldPath=".tokenizer.kind",
            ),
            cel.rule(
                "!has(self.min_quality_score) || has(self.quality_field)",
                _QUALITY_NEEDS_FIELD,
                fieldPath=".min_quality_score",
            ),
        )
    )

    @model_validator(mode="after")
    def _quality_has_a_field(self) -> Self:
        if self.min_quality_score is not None and self.quality_field is None:
            raise ValueError(_QUALITY_NEEDS_FIELD)
        return self

    @model_validator(mode="after")
    def _chat_needs_hf_tokenizer(self) -> Self:
        hf_kinds = ("auto", "pretrained")
        if self.adapter in HF_TOKENIZER_ADAPTERS and self.tokenizer.kind not in hf_kinds:
            raise ValueError(
                f"data.adapter {self.adapter!r} needs a Hugging Face tokenizer (chat "
                "templates, special tokens): set data.tokenizer.kind: pretrained (with "
                "data.tokenizer.path) or use an hf_* model with model.pretrained"
            )
        return self
