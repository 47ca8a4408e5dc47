"""The finetune, pretrain_mlm and curriculum strategies through `kubetrain train`:
each learns, each resumes exactly, and a frozen base stays out of the checkpoints."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.integration.trainer_runs import (
    CORPUS,
    committed_steps,
    losses_by_step,
    records,
    tiny_config,
    train_ok,
)

pytestmark = pytest.mark.integration

FACTS = Path(__file__).resolve().parents[2] / "examples" / "data" / "chat-facts.jsonl"


def _resumes_exactly(tmp_path: Path, make: Callable[[Path], dict[str, Any]], steps: int) -> None:
    """`steps` straight, and `steps // 2` then resumed to `steps`: the same losses."""
    straight = make(tmp_path / "straight")
    straight["training"]["max_steps"] = steps
    train_ok(straight, tmp_path / "straight.yaml")
    split = make(tmp_path / "split")
    split["training"]["max_steps"] = steps // 2
    train_ok(split, tmp_path / "split.yaml")
    train_ok(split, tmp_path / "split.yaml", f"training.max_steps={steps}")
    assert losses_by_step(tmp_path / "split") == losses_by_step(tmp_path / "straight")


def _encoder(run_dir: Path, **training: Any) -> dict[str, Any]:
    return tiny_config(
        run_dir,
        model={"d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 64, "causal": False},
        data={"seq_len": 64, "batch_size": 16},
        optimization={
            "optimizer": {"lr": 0.002}, "scheduler": {"name": "cosine", "warmup_steps": 40}
        },
        training={"strategy": "pretrain_mlm", "eval_steps": 100, "eval_batches": 8, **training},
        checkpoint={"interval_steps": 100},
    )  # fmt: skip


def _unigram_entropy(path: Path) -> float:
    """The loss of predicting a character from the corpus's frequencies alone (nats)."""
    text = path.read_text()
    counts = Counter(text)
    return -sum(n / len(text) * math.log(n / len(text)) for n in counts.values())


def test_masked_lm_pretraining_of_the_native_encoder_learns(tmp_path: Path) -> None:
    train_ok(_encoder(tmp_path / "run", max_steps=400), tmp_path / "c.yaml")
    val = [r["val_loss"] for r in records(tmp_path / "run", "val")]
    assert len(val) == 4 and val == sorted(val, reverse=True), val
    # Masked MLM first learns character frequencies, then reads the context on both
    # sides: below the frequencies' entropy, the masked characters are being inferred.
    assert val[-1] < _unigram_entropy(CORPUS) - 0.15, val


def test_masked_lm_resumes_exactly(tmp_path: Path) -> None:
    _resumes_exactly(tmp_path, lambda d: _encoder(d, max_steps=20, eval_steps=10), 20)


def test_time_step_masking_trains_and_resumes_exactly(tmp_path: Path) -> None:
    """Seed 003's time-step masking: each sequence's masked share from a drawn time step."""
    steps = {"num_time_steps": 10, "mask_fractions": {0: 0.15, 5: 0.5, 9: 0.9}}

    def config(run_dir: Path) -> dict[str, Any]:
        return _encoder(run_dir, max_steps=20, eval_steps=10, mlm={"time_steps": steps})

    _resumes_exactly(tmp_path, config, 20)
    plain = _encoder(tmp_path / "plain", max_steps=20, eval_steps=10)
    train_ok(plain, tmp_path / "plain.yaml")
    # Other masks than plain masked LM's 15%: other losses from the first step on.
    assert losses_by_step(tmp_path / "plain")[1] != losses_by_step(tmp_path / "straight")[1]


def test_a_bert_model_pretrains_with_masked_lm(tmp_path: Path) -> None:
    bert = {
        "model_type": "bert", "hidden_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 96, "max_position_embeddings": 64,
    }  # fmt: skip
    cfg = tiny_config(
        tmp_path / "run",
        model={"adapter": "hf_masked_lm", "hf_config": bert},
        data={"seq_len": 48, "batch_size": 8, "tokenizer": {"kind": "bpe", "vocab_size": 300}},
        optimization={"optimizer": {"lr": 0.002}},
        training={"strategy": "pretrain_mlm", "max_steps": 60, "eval_steps": 30},
        checkpoint={"interval_steps": 30},
    )
    train_ok(cfg, tmp_path / "c.yaml")
    val = [r["val_loss"] for r in records(tmp_path / "run", "val")]
    assert val[-1] < val[0], val
    from transformers import AutoModelForMaskedLM

    exported = AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "export")
    # The tokenizer's vocabulary plus the mask id the strategy added after it.
    assert (
        exported.config.vocab_size
        == json.loads((tmp_path / "run" / "export" / "tokenizer.json").read_text())["model"][
            "vocab"
        ].__len__()
        + 1
    )


def _curriculum(run_dir: Path) -> dict[str, Any]:
    stages = [
        {"start_step": 0, "seq_len": 16, "data_fraction": 0.25},
        {"start_step": 6, "seq_len": 24},
        {"start_step": 12},
    ]
    return tiny_config(
        run_dir, training={"strategy": "curriculum", "curriculum": {"stages": stages}}
    )


def test_curriculum_resumes_exactly_across_a_stage_switch(tmp_path: Path) -> None:
    # Resumed at step 9: mid-stage 2, with stage 3 still ahead.
    _resumes_exactly(tmp_path, _curriculum, 18)
    samples = {r["step"]: r["samples_per_second"] / r["tokens_per_second"] for r in
               records(tmp_path / "straight", "train")}  # fmt: skip
    # tokens per sample: 16 in stage 1 (steps 1-6), 24 in stage 2, 32 in stage 3.
    assert {round(1 / samples[s]) for s in range(1, 7)} == {16}
    assert {round(1 / samples[s]) for s in range(7, 13)} == {24}
    assert {round(1 / samples[s]) for s in range(13, 19)} == {32}


def _finetune(run_dir: Path, base: Path, cache: Path) -> dict[str, Any]:
    return tiny_config(
        run_dir,
        model={"adapter": "hf_causal_lm", "pretrained": str(base)},
        data={
            "adapter": "chat_jsonl", "path": str(FACTS), "seq_len": 48, "batch_size": 4,
            "cache_dir": str(cache),
        },
        optimization={"optimizer": {"lr": 0.01}},
        training={
            "strategy": "finetune", "max_steps": 10,
            "finetune": {
                "freeze_blocks": 1,
                "lr_scales": [{"pattern": "model.norm.*", "scale": 1.0}, {"pattern": "*", "scale": 0.3}],
            },
        },
    )  # fmt: skip


def test_finetune_freezes_a_block_keeps_it_out_of_checkpoints_and_resumes(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    from torch.distributed.checkpoint import FileSystemReader

    base, cache = hf_base_model("llama"), tmp_path / "cache"
    _resumes_exactly(tmp_path, lambda d: _finetune(d, base, cache), 10)
    run = tmp_path / "straight"
    start = next(r for r in records(run, "event") if r.get("event") == "start")
    assert 0 < start["trainable_parameters"] < start["parameters"]

    assert committed_steps(run / "checkpoints")[-1] == 10
    step_dir = run / "checkpoints" / "step-00000010-t0"
    keys = list(FileSystemReader(str(step_dir / "dcp")).read_metadata().state_dict_metadata)
    model_keys = [k for k in keys if k.startswith("model.")]
    assert model_keys and not any(".layers.0." in k or "embed_tokens" in k for k in model_keys)
    assert any(".layers.1." in k for k in model_keys)
    manifest = json.loads((step_dir / "manifest.json").read_text())
    assert manifest["meta"]["base"]["uri"] == str(base)  # the frozen block comes from here

    import torch
    from safetensors.torch import load_file

    exported, original = (
        load_file(run / "export" / "model.safetensors"),
        load_file(base / "model.safetensors"),
    )
    frozen = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(exported[frozen], original[frozen])
    trained = "model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(exported[trained], original[trained])
