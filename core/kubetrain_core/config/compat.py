"""Which config changes a checkpoint survives: its shape, recorded with every save.

A checkpoint holds tensors whose shapes follow from a few config fields (the model's
sizes, the tokenizer, the optimizer's kind). Resuming under other values would fail
deep inside the loader on every rank, and be retried as if it were an outage; the
trainer compares the recorded shape before loading and refuses with the fields named.
Everything else (learning rate, batch size, sequence length, steps) may change.
"""

from __future__ import annotations

from typing import Any

from kubetrain_core.config.schema import TrainingConfig

__all__ = ["SHAPE_FIELDS", "changed_fields", "shape_of"]

SHAPE_FIELDS = (
    "model.adapter",
    "model.architecture",
    "model.d_model",
    "model.n_layers",
    "model.n_heads",
    "model.d_ff",
    "model.max_seq_len",
    "model.tie_embeddings",
    "model.pretrained",
    "model.hf_config",
    "model.lora",
    "data.tokenizer.kind",
    "data.tokenizer.vocab_size",
    "data.tokenizer.path",
    "optimization.optimizer.name",
)


def shape_of(cfg: TrainingConfig) -> dict[str, Any]:
    """The shape-relevant fields of `cfg`, by dotted path (JSON-ready)."""
    dumped = cfg.model_dump(mode="json")
    shape: dict[str, Any] = {}
    for path in SHAPE_FIELDS:
        node: Any = dumped
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        shape[path] = node
    return shape


def changed_fields(saved: Any, current: dict[str, Any]) -> list[str]:
    """ "field: saved -> current" for each shape field that differs. A checkpoint that
    recorded no shape (or one from another trainer version) is not compared."""
    if not isinstance(saved, dict):
        return []
    return [
        f"{path}: {saved[path]!r} -> {current.get(path)!r}"
        for path in SHAPE_FIELDS
        if path in saved and saved[path] != current.get(path)
    ]
