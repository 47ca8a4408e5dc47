"""The record adapters (jsonl_text, chat_jsonl) on real files, a real Hugging Face
tokenizer and the real datasets cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetrain_core.config.data import DataConfig
from kubetrain_trainer.data.chat import ChatRenderer
from kubetrain_trainer.data.hf_tokenizer import PretrainedTokenizer
from kubetrain_trainer.data.records import IGNORE, ChatDataset, PackedTextDataset, Seq2SeqDataset

CPU = torch.device("cpu")


def _chat(user: str, answer: str, system: bool = False) -> dict[str, Any]:
    messages = [{"role": "system", "content": "Be brief."}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def chat_cfg(tmp_path: Path, hf_base_model: Callable[[str], Path]) -> Callable[..., DataConfig]:
    def make(records: list[Any], **fields: Any) -> DataConfig:
        path = _write_jsonl(tmp_path / "chat.jsonl", records)
        base: dict[str, Any] = {
            "adapter": "chat_jsonl",
            "path": str(path),
            "tokenizer": {"kind": "pretrained", "path": str(hf_base_model("llama"))},
            "seq_len": 64,
            "batch_size": 2,
            "cache_dir": str(tmp_path / "cache"),
            "splits": {"train": 0.5, "val": 0.5, "test": 0.0},
        }
        return DataConfig.model_validate(base | fields)

    return make


def test_chat_loss_falls_only_on_the_assistant_reply_and_its_end_marker(
    chat_cfg: Callable[..., DataConfig],
) -> None:
    records = [
        _chat(f"What is {i} plus one?", f"It is {i + 1}.", system=i % 2 == 0) for i in range(8)
    ]
    data = ChatDataset(chat_cfg(records), seed=0)
    assert isinstance(data.tokenizer, PretrainedTokenizer)
    seen = 0
    for batch in data.eval_batches("val", 8, rank=0, world_size=1, device=CPU):
        for ids, targets in zip(batch["input_ids"], batch["targets"], strict=True):
            learned = data.tokenizer.decode([int(t) for t in targets if t != IGNORE])
            not_learned = data.tokenizer.decode(
                [int(i) for i, t in zip(ids[1:], targets[:-1], strict=True) if t == IGNORE]
            )
            # Only the reply and the end marker are learned; the prompt never is.
            assert learned.startswith("It is ") and learned.endswith(".<|im_end|>\n")
            assert "plus one" not in learned and "user" not in learned
            assert "plus one" in not_learned and "It is" not in not_learned
            seen += 1
    assert seen == 4  # val is the second half of 8 records


def test_two_turns_learn_both_replies(chat_cfg: Callable[..., DataConfig]) -> None:
    two = {
        "messages": [*_chat("Hi?", "Hello.")["messages"], *_chat("Bye?", "Goodbye.")["messages"]]
    }
    data = ChatDataset(chat_cfg([two, two]), seed=0)
    batch = next(data.eval_batches("val", 1, rank=0, world_size=1, device=CPU))
    learned = data.tokenizer.decode([int(t) for t in batch["targets"][0] if t != IGNORE])
    assert learned == "Hello.<|im_end|>\nGoodbye.<|im_end|>\n"


def test_a_template_that_rewrites_earlier_turns_is_refused_by_name(
    hf_base_model: Callable[[str], Path],
) -> None:
    tokenizer = PretrainedTokenizer.from_directory(hf_base_model("llama"))
    # Numbers every turn from the end: rendering a prefix changes the earlier turns.
    bad = (
        "{% for m in messages %}[{{ messages|length - loop.index }}]{{ m['content'] }}{% endfor %}"
    )
    renderer = ChatRenderer(tokenizer, bad)
    with pytest.raises(ValueError, match=r"chat\.jsonl:1: the chat template renders turn 1"):
        renderer.spans(_chat("a", "b")["messages"], "chat.jsonl:1")


def test_a_malformed_record_names_file_line_and_field(
    chat_cfg: Callable[..., DataConfig], tmp_path: Path
) -> None:
    records = [_chat("q", "a"), _chat("q", "a"), {"turns": []}, _chat("q", "a")]
    with pytest.raises(ValueError, match=r"chat.jsonl:3: no field 'messages'") as err:
        ChatDataset(chat_cfg(records), seed=0)
    assert "data.bad_records: skip" in str(err.value)

    bad_role = {"messages": [{"role": "robot", "content": "x"}]}
    with pytest.raises(ValueError, match=r"chat.jsonl:1: field 'messages'\[0\]: role 'robot'"):
        ChatDataset(chat_cfg([bad_role, *records[:2]], cache_dir=str(tmp_path / "c2")), seed=0)


def test_skipped_records_are_counted(chat_cfg: Callable[..., DataConfig]) -> None:
    records = [_chat("q", "a"), "not an object", _chat("q", "a"), {"messages": "text"}]
    data = ChatDataset(chat_cfg(records, bad_records="skip"), seed=0)
    assert data.stats["records"] == 4 and data.stats["skipped"] == 2 and data.stats["rows"] == 2
    assert "not a JSON object" in data.stats["first_problem"]


def test_the_token_cache_is_built_once_and_keyed_by_what_shapes_the_rows(
    chat_cfg: Callable[..., DataConfig], tmp_path: Path
) -> None:
    records = [_chat(f"q{i}", f"a{i}") for i in range(6)]
    cfg = chat_cfg(records)
    first = ChatDataset(cfg, seed=0)
    built = (first.cache_path / "kubetrain-rows.json").stat().st_mtime_ns
    again = ChatDataset(cfg, seed=1)  # another run: the seed orders, it does not shape rows
    assert again.cache_path == first.cache_path
    assert (again.cache_path / "kubetrain-rows.json").stat().st_mtime_ns == built
    longer = ChatDataset(cfg.model_copy(update={"seq_len": 80}), seed=0)
    assert longer.cache_path != first.cache_path
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == sorted(
        [first.cache_path.name, longer.cache_path.name]
    )


def test_packed_text_blocks_cover_the_token_stream_in_order(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    texts = [f"Story number {i} is about a cat." for i in range(40)]
    path = _write_jsonl(tmp_path / "text.jsonl", [{"body": t} for t in texts])
    cfg = DataConfig.model_validate(
        {
            "adapter": "jsonl_text",
            "path": str(path),
            "text_field": "body",
            "tokenizer": {"kind": "pretrained", "path": str(hf_base_model("llama"))},
            "seq_len": 16,
            "batch_size": 4,
            "cache_dir": str(tmp_path / "cache"),
            "splits": {"train": 0.8, "val": 0.2, "test": 0.0},
        }
    )
    data = PackedTextDataset(cfg, seed=3)
    tok = data.tokenizer
    assert tok.eos_id is not None
    stream = [i for t in texts for i in [*tok.encode(t), tok.eos_id]]
    blocks = len(stream) // 17
    assert data.stats["rows"] == blocks
    val = list(data.eval_batches("val", 100, rank=0, world_size=1, device=CPU))
    rows = torch.cat([torch.cat([b["input_ids"], b["targets"][:, -1:]], dim=1) for b in val])
    first_val = round(blocks * 0.8)
    expected = torch.tensor(stream[: blocks * 17]).view(blocks, 17)[first_val:]
    assert torch.equal(rows, expected)
    # Addressed batches: the same arguments give the same rows, other steps others.
    one = data.train_batch(5, 0, rank=1, world_size=2, accumulation_steps=1, device=CPU)
    two = data.train_batch(5, 0, rank=1, world_size=2, accumulation_steps=1, device=CPU)
    other = data.train_batch(6, 0, rank=1, world_size=2, accumulation_steps=1, device=CPU)
    assert torch.equal(one["input_ids"], two["input_ids"])
    assert not torch.equal(one["input_ids"], other["input_ids"])
    assert torch.equal(one["input_ids"][:, 1:], one["targets"][:, :-1])


def test_text_files_and_directories_are_records_too(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "b.txt").write_text("second file line\n" * 30)
    (folder / "a.txt").write_text("first file line\n\n" * 30)
    cfg = DataConfig.model_validate(
        {
            "adapter": "jsonl_text",
            "path": str(folder),
            "tokenizer": {"kind": "char"},
            "seq_len": 20,
            "batch_size": 2,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    data = PackedTextDataset(cfg, seed=0)
    assert data.stats["records"] == 60  # blank lines are not records
    # Sorted file order, so a.txt comes first: the first training row starts its text.
    first = data.train_batch(0, 0, rank=0, world_size=1, accumulation_steps=1, device=CPU)
    rows = [data.tokenizer.decode(r["tokens"].tolist()) for r in data._rows]
    assert rows[0] == "first file line\nfirst"  # seq_len + 1 characters, no blank line
    assert "second file" in rows[-1]  # then b.txt
    assert first["input_ids"].shape == (2, 20)


def test_no_data_files_is_an_error_naming_the_field(tmp_path: Path) -> None:
    cfg = DataConfig.model_validate(
        {
            "adapter": "jsonl_text",
            "path": str(tmp_path / "missing-*.jsonl"),
            "tokenizer": {"kind": "char"},
        }
    )
    with pytest.raises(ValueError, match=r"data.path: .*missing-\*.jsonl names no data files"):
        PackedTextDataset(cfg, seed=0)


def test_seq2seq_rows_honour_both_length_limits_and_mask_their_padding(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    long_input = "word " * 50
    records = [{"src": long_input, "tgt": "the cat"}, {"src": "hi", "tgt": "x " * 40}] * 2
    path = _write_jsonl(tmp_path / "pairs.jsonl", records)
    cfg = DataConfig.model_validate(
        {
            "adapter": "seq2seq_jsonl", "path": str(path), "input_field": "src",
            "target_field": "tgt", "max_input_length": 12, "max_target_length": 6,
            "tokenizer": {"kind": "pretrained", "path": str(hf_base_model("llama"))},
            "batch_size": 4, "cache_dir": str(tmp_path / "cache"),
            "splits": {"train": 0.5, "val": 0.5, "test": 0.0},
        }
    )  # fmt: skip
    data = Seq2SeqDataset(cfg, seed=0)
    batch = next(data.eval_batches("val", 1, rank=0, world_size=1, device=CPU))
    assert batch["input_ids"].shape == (2, 12) and batch["targets"].shape == (2, 6)
    long_in, short_in = batch["attention_mask"]
    assert int(long_in.sum()) == 12  # truncated to max_input_length
    assert 0 < int(short_in.sum()) < 12  # "hi", padded: the padding is masked
    assert torch.all(batch["input_ids"][1][short_in == 0] == data.pad_id)
    short_target, long_target = batch["targets"]
    assert data.tokenizer.decode([int(t) for t in short_target if t != IGNORE]) == "the cat"
    assert int((long_target != IGNORE).sum()) == 6  # truncated to max_target_length


def test_a_trained_tokenizer_skips_the_records_that_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"text": "hello there"}\n{not json\n' + '{"text": "more words here"}\n' * 20)
    cfg = DataConfig.model_validate(
        {"adapter": "jsonl_text", "path": str(path), "tokenizer": {"kind": "char"}, "seq_len": 8,
         "batch_size": 2, "bad_records": "skip", "cache_dir": str(tmp_path / "cache")}
    )  # fmt: skip
    data = PackedTextDataset(cfg, seed=0)
    assert data.stats["skipped"] == 1 and data.stats["records"] == 22
    with pytest.raises(ValueError, match=r"mixed\.jsonl:2: not JSON"):
        PackedTextDataset(cfg.model_copy(update={"bad_records": "error"}), seed=0)


def test_records_below_the_quality_threshold_are_skipped_and_counted(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    records = [{"text": f"record number {i} " * 12, "score": i / 10} for i in range(10)]
    path = _write_jsonl(tmp_path / "scored.jsonl", records)

    def build(**fields: Any) -> PackedTextDataset:
        cfg = {
            "adapter": "jsonl_text", "path": str(path), "tokenizer": {"kind": "char"},
            "seq_len": 20, "batch_size": 2, "cache_dir": str(tmp_path / "cache"),
        }  # fmt: skip
        return PackedTextDataset(DataConfig.model_validate(cfg | fields), seed=0)

    everything = build()
    kept = build(quality_field="score", min_quality_score=0.5)
    assert (everything.stats["low_quality"], kept.stats["low_quality"]) == (0, 5)
    assert kept.stats["records"] == 10 and kept.cache_path != everything.cache_path
    # records 5..9 only: the first training row starts with record 5's text
    first = kept.tokenizer.decode(kept._rows[0]["tokens"].tolist())
    assert first.startswith("record number 5")

    path.write_text(path.read_text() + json.dumps({"text": "no score here"}) + "\n")
    with pytest.raises(ValueError, match=r"scored.jsonl:11: no field 'score'"):
        build(quality_field="score", min_quality_score=0.5)
    assert (
        build(quality_field="score", min_quality_score=0.5, bad_records="skip").stats["skipped"]
        == 1
    )


def test_a_quality_threshold_needs_its_field() -> None:
    with pytest.raises(ValueError, match=r"needs data\.quality_field"):
        DataConfig(path="x.jsonl", adapter="jsonl_text", min_quality_score=0.5)
