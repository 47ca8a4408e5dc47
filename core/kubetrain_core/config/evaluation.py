"""The `evaluation` section: text generated for validation records and scored."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from kubetrain_core import registry
from kubetrain_core.config.base import Name, Section, registered

REFERENCE_ADAPTERS = frozenset({"chat_jsonl", "seq2seq_jsonl"})
"""Dataset adapters whose records carry a reference answer to score generations against:
the last assistant reply of a conversation, a seq2seq target."""


class EvaluationConfig(Section):
    """Every training.eval_steps, besides the validation loss: the model writes an answer
    for the first ``num_samples`` validation records (the prompt is the conversation up
    to its last assistant reply, or the seq2seq input), each metric scores the answers
    against the records' own, and every sample goes to <run_dir>/generations.jsonl."""

    metrics: list[Annotated[Name, registered(registry.METRICS)]] = Field(
        default_factory=list, max_length=16
    )
    """Metrics of generated text (registry ``metric``): bleu (sacrebleu corpus BLEU,
    0-100), rouge (ROUGE-1/2/L F1, 0-1), accuracy (token accuracy), exact_match, recipe
    (seed 002's four recipe scores), or a plugin's. Logged as val_<name>; empty: no
    generation."""
    num_samples: int = Field(16, ge=1, le=10_000)
    """Validation records generated for at each evaluation (fewer when the split is
    smaller), spread over the processes."""
    max_new_tokens: int = Field(64, ge=1, le=8192)
    """Longest answer generated."""
    num_beams: int = Field(1, ge=1, le=16)
    """1: greedy decoding; more: beam search (hf_* models)."""
