"""`kubetrain run` checks what it can before any process starts (preflight.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetrain_core.config import parse_config
from kubetrain_trainer.preflight import problems


@pytest.mark.parametrize("adapter", ["text_file", "jsonl_text", "chat_jsonl", "seq2seq_jsonl"])
def test_missing_data_is_named_for_every_built_in_adapter(adapter: str, tmp_path: Path) -> None:
    tokenizer = {"kind": "char"} if adapter in ("text_file", "jsonl_text") else {}
    model = {} if tokenizer else {"adapter": "hf_causal_lm", "pretrained": str(tmp_path)}
    cfg = parse_config(
        {
            "model": model,
            "data": {
                "adapter": adapter,
                "path": str(tmp_path / "none.jsonl"),
                "tokenizer": tokenizer,
            },
            "training": {"max_steps": 1},
        }
    )
    found = problems(cfg)
    assert len(found) == 1 and found[0].startswith("data.path: ") and "none.jsonl" in found[0]


def test_a_model_directory_that_is_not_there_is_named(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text('{"messages": []}\n')
    cfg = parse_config(
        {
            "model": {"adapter": "hf_causal_lm", "pretrained": str(tmp_path / "missing-model")},
            "data": {"adapter": "chat_jsonl", "path": str(tmp_path / "data.jsonl")},
            "training": {"max_steps": 1},
        }
    )
    found = problems(cfg)
    assert found and all(line.startswith("model.pretrained: ") for line in found)
    assert "never downloads" in " ".join(found)
