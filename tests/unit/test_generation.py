"""Generation for evaluation.metrics: records as prompts and references, answers from a
real transformers model and from the native Transformer, and the evaluator's output."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetrain_core.config import EvaluationConfig, ModelConfig
from kubetrain_core.config.data import DataConfig
from kubetrain_trainer.data.records import ChatDataset, Seq2SeqDataset
from kubetrain_trainer.distributed import DistInfo
from kubetrain_trainer.evaluation.generation import GENERATIONS_FILE, GenerationEvaluator
from kubetrain_trainer.models.adapters import Generation, StandardModelAdapter
from kubetrain_trainer.models.hf import CausalLMAdapter

CPU = torch.device("cpu")
ONE_PROCESS = DistInfo(rank=0, world_size=1, local_rank=0, device=CPU)


def _data(tmp_path: Path, base: Path, records: list[Any], **fields: Any) -> DataConfig:
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg: dict[str, Any] = {
        "adapter": "chat_jsonl", "path": str(path), "seq_len": 64, "batch_size": 2,
        "tokenizer": {"kind": "pretrained", "path": str(base)},
        "cache_dir": str(tmp_path / "cache"), "splits": {"train": 0.5, "val": 0.5, "test": 0.0},
    }  # fmt: skip
    return DataConfig.model_validate(cfg | fields)


def _chat(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}  # fmt: skip


def test_a_conversation_becomes_its_prompt_and_last_reply(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    records = [_chat(f"Count to {i}?", " ".join(["one"] * (1 + i % 3))) for i in range(8)]
    records[5] = _chat("Long?", "word " * 80)  # cut by seq_len: no reliable reference
    data = ChatDataset(_data(tmp_path, hf_base_model("llama"), records), seed=0)
    examples = data.examples("val", 10)
    # val is records 4..7; record 5 is cut short, so 4, 6 and 7 remain
    assert [e.reference for e in examples] == ["one one", "one", "one one"]
    for example in examples:
        assert example.prompt.endswith("<|im_start|>assistant\n")  # the generation prompt
        assert data.tokenizer.decode(example.prompt_ids) == example.prompt


def test_a_seq2seq_record_becomes_its_input_and_target(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    records = [{"input": f"in {i}", "target": f"out {i}"} for i in range(6)]
    cfg = _data(tmp_path, hf_base_model("llama"), records, adapter="seq2seq_jsonl")
    examples = Seq2SeqDataset(cfg, seed=0).examples("val", 2)
    assert [(e.prompt, e.reference) for e in examples] == [("in 3", "out 3"), ("in 4", "out 4")]


def test_until_end_cuts_at_the_first_end_token() -> None:
    settings = Generation(4, 1, eos_id=2, pad_id=2, device=CPU, synced=False)
    assert settings.until_end([5, 6, 2, 7, 2]) == [5, 6]
    assert settings.until_end([5, 6]) == [5, 6]


def test_the_native_sampler_is_greedy() -> None:
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, max_seq_len=16)
    adapter = StandardModelAdapter(cfg, 20)
    torch.manual_seed(0)
    model = adapter.build_model().eval()
    settings = Generation(5, 1, eos_id=None, pad_id=0, device=CPU, synced=False)
    (answer,) = adapter.generate(model, [[1, 2, 3]], settings)
    ids = [1, 2, 3]
    with torch.no_grad():
        for _ in range(5):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert answer == ids[3:]


def test_the_evaluator_scores_and_records_a_transformers_models_answers(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    base = hf_base_model("llama")
    records = [_chat(f"Say {w}.", w) for w in ["red", "blue", "green", "pink"] * 2]
    data = ChatDataset(_data(tmp_path, base, records), seed=0)
    adapter = CausalLMAdapter(ModelConfig(adapter="hf_causal_lm", pretrained=str(base)), 512)
    model = adapter.build_model().train()
    evaluator = GenerationEvaluator(
        EvaluationConfig(metrics=["exact_match", "bleu"], num_samples=3, max_new_tokens=4),
        dataset=data, adapter=adapter, dist_info=ONE_PROCESS, synced=False, batch_size=2, run_dir=tmp_path,
    )  # fmt: skip
    scores = evaluator.evaluate(model, 7, contextlib.nullcontext)
    assert set(scores) == {"exact_match", "bleu"} and 0.0 <= scores["exact_match"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / GENERATIONS_FILE).read_text().splitlines()]
    assert [(r["step"], r["index"]) for r in rows] == [(7, 0), (7, 1), (7, 2)]
    assert [r["reference"] for r in rows] == ["red", "blue", "green"]
    # The answers are the model's own greedy continuations, at most 4 tokens long.
    for row, example in zip(rows, evaluator.examples, strict=True):
        ids = torch.tensor([example.prompt_ids])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        expected = evaluator.settings.until_end(out[0, ids.shape[1] :].tolist())
        assert row["prediction"] == data.tokenizer.decode_text(expected)
    assert model.training  # put back as it was


def test_an_empty_validation_split_is_a_config_error(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    from kubetrain_core.config import ConfigError

    base = hf_base_model("llama")
    records = [_chat("Q?", "A.")] * 4
    data = ChatDataset(
        _data(tmp_path, base, records, splits={"train": 1.0, "val": 0.0, "test": 0.0}), seed=0
    )
    adapter = CausalLMAdapter(ModelConfig(adapter="hf_causal_lm", pretrained=str(base)), 512)
    with pytest.raises(ConfigError, match="val split is empty"):
        GenerationEvaluator(
            EvaluationConfig(metrics=["bleu"]), dataset=data, adapter=adapter,
            dist_info=ONE_PROCESS, synced=False, batch_size=2, run_dir=tmp_path,
        )  # fmt: skip


def test_a_watched_metric_that_no_evaluation_logs_is_refused_at_start() -> None:
    from kubetrain_core import registry
    from kubetrain_core.config import ConfigError, TrainingConfig
    from kubetrain_trainer.evaluation.generation import check_watched

    def config(**sections: Any) -> TrainingConfig:
        return TrainingConfig.model_validate(
            {"data": {"path": "x.txt"}, "training": {"max_steps": 1}, **sections}
        )

    rouge = [registry.METRICS.get("rouge")()]
    check_watched(config(checkpoint={"keep_best": 1, "best_metric": "val_rougeL"}), rouge)
    check_watched(config(checkpoint={"best_metric": "val_bleu"}), [])  # keep_best 0: unused
    with pytest.raises(ConfigError, match=r"checkpoint\.best_metric") as refused:
        check_watched(config(checkpoint={"keep_best": 1, "best_metric": "val_bleu"}), rouge)
    assert "val_rouge1, val_rouge2, val_rougeL" in str(refused.value)
    stopping = {"early_stopping": {"patience": 2, "metric": "val_accuracy"}, "max_steps": 1}
    with pytest.raises(ConfigError, match=r"training\.early_stopping\.metric"):
        check_watched(config(training=stopping), [])

    class Plugin(registry.METRICS.get("bleu")):  # type: ignore[misc]
        names = None  # a plugin that does not say: nothing to check against

    check_watched(config(training=stopping), [Plugin()])
