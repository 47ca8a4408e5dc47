"""Hugging Face models through the real CLI: the chat fine-tuning example, swapped by
overrides, exact resume, a model fetched from S3, and an export that plain
transformers loads in a process that never imports kubetrain."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.integration.trainer_runs import (
    REPO,
    env_with,
    kubetrain,
    losses_by_step,
    records,
    same_weights,
    tiny_config,
    torchrun,
    write_config,
)

from kubetrain_core.config.data import DataConfig
from kubetrain_core.config.model import ModelConfig
from kubetrain_trainer.data.records import ChatDataset
from kubetrain_trainer.models.hf import CausalLMAdapter
from kubetrain_trainer.optimization.losses import LanguageModelingLoss
from localkube.s3 import new_bucket, s3_env
from localkube.services import MinioServer

pytestmark = pytest.mark.integration
FACTS = REPO / "examples" / "data" / "chat-facts.jsonl"
ARITHMETIC = REPO / "examples" / "data" / "chat-arithmetic.jsonl"

# Runs in a fresh interpreter with no kubetrain on the path: the export must stand alone.
PLAIN_LOSS = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
records = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
val = records[int(len(records) * 0.9):int(len(records) * 0.95)]
out = {}
for name in sys.argv[2:]:
    model = AutoModelForCausalLM.from_pretrained(name).eval()
    tok = AutoTokenizer.from_pretrained(name)
    total = 0.0
    for r in val:
        ids = tok.apply_chat_template(r["messages"], return_tensors="pt", return_dict=True)
        with torch.no_grad():
            total += model(**ids, labels=ids["input_ids"]).loss.item()
    out[name] = total / len(val)
out["kubetrain_imported"] = any(m.startswith("kubetrain") for m in sys.modules)
print(json.dumps(out))
"""


def plain_losses(data: Path, *model_dirs: Path) -> dict[str, Any]:
    env = {k: v for k, v in env_with().items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_LOSS, str(data), *map(str, model_dirs)],
        capture_output=True, text=True, env=env, timeout=300, check=True, cwd="/",
    )  # fmt: skip
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def assistant_val_loss(model_dir: Path, data_cfg: dict[str, Any]) -> float:
    """The loss the trainer reports as val_loss, for a model it has not trained."""
    data = ChatDataset(DataConfig.model_validate(data_cfg), seed=0)
    model_cfg = ModelConfig(adapter="hf_causal_lm", pretrained=str(model_dir))
    adapter = CausalLMAdapter(model_cfg, data.tokenizer.vocab_size)
    model, loss_fn, losses = adapter.build_model().eval(), LanguageModelingLoss(), []
    with torch.no_grad():
        for batch in data.eval_batches("val", 8, rank=0, world_size=1, device=torch.device("cpu")):
            losses.append(adapter.compute_loss(model, batch, loss_fn).item())
    return sum(losses) / len(losses)


def run_example(runs: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    example = str(REPO / "examples" / "finetune-chat.yaml")
    result = kubetrain("run", example, "--runs-dir", str(runs), *overrides, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def test_the_chat_example_fine_tunes_and_exports_a_model_transformers_loads(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    base = hf_base_model("llama")
    cache = tmp_path / "data-cache"
    run_example(tmp_path / "runs", f"model.pretrained={base}", f"data.cache_dir={cache}")
    run_dir = tmp_path / "runs" / "finetune-chat"

    data_cfg = {
        "adapter": "chat_jsonl", "path": str(FACTS), "seq_len": 96, "batch_size": 8,
        "cache_dir": str(cache), "tokenizer": {"kind": "pretrained", "path": str(base)},
        "splits": {"train": 0.9, "val": 0.05, "test": 0.05},
    }  # fmt: skip
    before = assistant_val_loss(base, data_cfg)
    after = records(run_dir, "val")[-1]["val_loss"]
    assert after <= 0.8 * before, (before, after)  # the assistant-token loss fell >= 20 %

    export = run_dir / "export"
    # Any committed checkpoint exports too: the step-100 one, and the store's newest.
    key = ("--key-file", str(run_dir / "checkpoint.key"))
    at_100, newest = tmp_path / "at-100", tmp_path / "newest"
    checkpoints = run_dir / "checkpoints"
    for target, out in ((checkpoints / "step-00000100-t0", at_100), (checkpoints, newest)):
        made = kubetrain("export", f"file://{target}", str(out), *key)
        assert made.returncode == 0, made.stderr[-3000:]
    assert "(step 200)" in made.stdout
    assert same_weights(newest, export)  # the final checkpoint is the model at the end
    losses = plain_losses(FACTS, base, at_100, export)
    assert losses["kubetrain_imported"] is False
    assert losses[str(export)] < losses[str(base)] and losses[str(at_100)] < losses[str(base)]
    # The cache built by the run (rank 0 and rank 1 shared one) served the check above.
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1


def test_another_architecture_and_chat_file_by_dotted_overrides(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    gpt2 = hf_base_model("gpt2")
    run_example(
        tmp_path / "runs",
        f"model.pretrained={gpt2}",
        f"data.path={ARITHMETIC}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "training.max_steps=80",
    )
    export = tmp_path / "runs" / "finetune-chat" / "export"
    assert json.loads((export / "config.json").read_text())["model_type"] == "gpt2"
    trained = (export / "kubetrain-config.yaml").read_text()
    assert "chat-arithmetic.jsonl" in trained and "max_steps: 80" in trained
    losses = plain_losses(ARITHMETIC, gpt2, export)
    assert losses[str(export)] < losses[str(gpt2)]


def _hf_config(
    run_dir: Path, model: dict[str, Any], cache: Path, **sections: Any
) -> dict[str, Any]:
    return tiny_config(
        run_dir,
        model=model,
        data={
            "adapter": "chat_jsonl", "path": str(FACTS), "seq_len": 48, "batch_size": 4,
            "cache_dir": str(cache),
        },
        **sections,
    )  # fmt: skip


def test_an_hf_model_resumes_exactly(tmp_path: Path, hf_base_model: Callable[[str], Path]) -> None:
    model = {"adapter": "hf_causal_lm", "pretrained": str(hf_base_model("qwen2"))}
    cache = tmp_path / "cache"
    straight = _hf_config(tmp_path / "straight", model, cache, training={"max_steps": 10})
    assert (
        kubetrain("train", "--config", str(write_config(tmp_path / "a.yaml", straight))).returncode
        == 0
    )
    split = _hf_config(tmp_path / "split", model, cache, training={"max_steps": 5})
    path = write_config(tmp_path / "b.yaml", split)
    assert kubetrain("train", "--config", str(path)).returncode == 0
    assert kubetrain("train", "--config", str(path), "training.max_steps=10").returncode == 0
    events = [r["event"] for r in records(tmp_path / "split", "event")]
    assert events.count("resume") == 1
    expected, got = losses_by_step(tmp_path / "straight"), losses_by_step(tmp_path / "split")
    assert sorted(got) == list(range(1, 11))
    assert got == expected  # bit-identical on CPU, as for the native model


def test_a_model_in_s3_is_fetched_once_per_machine(
    tmp_path: Path, minio: MinioServer, hf_base_model: Callable[[str], Path]
) -> None:
    bucket = new_bucket(minio)
    base = hf_base_model("llama")
    for path in sorted(base.iterdir()):
        minio.client().upload_file(str(path), bucket, f"models/chat-base/{path.name}")
    uri = f"s3://{bucket}/models/chat-base"
    env = env_with(
        **s3_env(minio),
        AWS_ENDPOINT_URL=minio.endpoint,
        KUBETRAIN_MODEL_CACHE=str(tmp_path / "models"),
    )
    model = {"adapter": "hf_causal_lm", "pretrained": uri}
    for attempt in ("first", "second"):
        cfg = _hf_config(tmp_path / attempt, model, tmp_path / "cache", training={"max_steps": 2})
        result = kubetrain(
            "train", "--config", str(write_config(tmp_path / f"{attempt}.yaml", cfg)), env=env
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        assert ("fetching " + uri in output) is (attempt == "first")
    fetched = [p for p in (tmp_path / "models").iterdir() if p.is_dir()]
    assert len(fetched) == 1 and (fetched[0] / "model.safetensors").is_file()


def test_the_native_model_of_a_checkpoint_exports_too(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", training={"max_steps": 10})
    assert (
        kubetrain("train", "--config", str(write_config(tmp_path / "c.yaml", cfg))).returncode == 0
    )
    out = tmp_path / "from-checkpoint"
    made = kubetrain("export", str(tmp_path / "run" / "checkpoints"), str(out))
    assert made.returncode == 0, made.stderr[-2000:]
    assert "(step 10)" in made.stdout
    assert same_weights(out, tmp_path / "run" / "export")


@pytest.mark.parametrize("processes,parallelism", [(1, "ddp"), (2, "ddp"), (2, "fsdp")])
def test_an_encoder_decoder_trains_and_exports(
    tmp_path: Path, hf_base_model: Callable[[str], Path], processes: int, parallelism: str
) -> None:
    words = ["cat", "dog", "sun", "moon", "tree", "home"]
    pairs = [
        {"input": " ".join(w), "target": " ".join(reversed(w))}
        for w in ([words[(i + j) % 6] for j in range(3)] for i in range(60))
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    cfg = tiny_config(
        tmp_path / "run",
        model={"adapter": "hf_seq2seq", "hf_config": {
            "model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 1, "num_heads": 4,
        }},
        data={"adapter": "seq2seq_jsonl", "path": str(data), "max_input_length": 16,
              "max_target_length": 8, "cache_dir": str(tmp_path / "cache"),
              "tokenizer": {"kind": "pretrained", "path": str(hf_base_model("llama"))}},
        training={"max_steps": 30, "parallelism": parallelism},
        optimization={"optimizer": {"lr": 0.01}},
    )  # fmt: skip
    result = torchrun(write_config(tmp_path / "c.yaml", cfg), processes)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = losses_by_step(tmp_path / "run")
    assert losses[30] < 0.7 * losses[1]
    load = (
        "import sys; from transformers import AutoModelForSeq2SeqLM as A; "
        "m = A.from_pretrained(sys.argv[1]); print(type(m).__name__, "
        "any(k.startswith('kubetrain') for k in sys.modules))"
    )
    env = {k: v for k, v in env_with().items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-I", "-c", load, str(tmp_path / "run" / "export")],
        capture_output=True, text=True, env=env, check=True, cwd="/",
    )  # fmt: skip
    assert out.stdout.split() == ["T5ForConditionalGeneration", "False"]
