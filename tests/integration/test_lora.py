"""LoRA through peft on a real transformers model: only adapters train and are saved,
resume is exact, the base is checked by sha256, and the merged export is the adapter
model, loaded by plain transformers and peft in a process without kubetrain."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.integration.trainer_runs import (
    REPO,
    committed_steps,
    env_with,
    kubetrain,
    losses_by_step,
    records,
    tiny_config,
    torchrun,
    write_config,
)

pytestmark = pytest.mark.integration
FACTS = REPO / "examples" / "data" / "chat-facts.jsonl"

# Runs with no kubetrain on the path: the adapter on its base vs the merged export.
COMPARE = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, export = sys.argv[1], sys.argv[2]
ids = torch.tensor([[1, 5, 9, 42, 7, 3, 100, 11]])
with torch.no_grad():
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), export + "/adapter")
    merged = AutoModelForCausalLM.from_pretrained(export)
    plain = AutoModelForCausalLM.from_pretrained(base)
    a, m, p = (x(ids).logits for x in (adapted, merged, plain))
print(json.dumps({
    "merged_vs_adapter": (a - m).abs().max().item(),
    "adapter_vs_base": (a - p).abs().max().item(),
    "kubetrain_imported": any(k.startswith("kubetrain") for k in sys.modules),
}))
"""


def _config(run_dir: Path, base: Path, cache: Path, **sections: Any) -> dict[str, Any]:
    model = {"adapter": "hf_causal_lm", "pretrained": str(base), "lora": {"r": 4, "alpha": 8}}
    return tiny_config(
        run_dir,
        model=model,
        data={
            "adapter": "chat_jsonl", "path": str(FACTS), "seq_len": 48, "batch_size": 4,
            "cache_dir": str(cache),
        },
        optimization={"optimizer": {"lr": 0.01}},
        **sections,
    )  # fmt: skip


def _train(config: dict[str, Any], path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return kubetrain("train", "--config", str(write_config(path, config)), *overrides)


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def _checkpoint_keys(step_dir: Path) -> list[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return list(FileSystemReader(str(step_dir / "dcp")).read_metadata().state_dict_metadata)


def _bytes(step_dir: Path) -> int:
    return sum(p.stat().st_size for p in (step_dir / "dcp").iterdir())


def test_lora_trains_and_saves_only_adapters_and_exports_a_merged_model(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    base, cache = hf_base_model("llama"), tmp_path / "cache"
    _ok(_train(_config(tmp_path / "lora", base, cache), tmp_path / "lora.yaml"))
    full = _config(tmp_path / "full", base, cache, training={"max_steps": 5})
    full["model"].pop("lora")
    _ok(_train(full, tmp_path / "full.yaml"))

    losses = losses_by_step(tmp_path / "lora")
    assert losses[20] < losses[1]
    step = tmp_path / "lora" / "checkpoints" / "step-00000020-t0"
    model_keys = [k for k in _checkpoint_keys(step) if k.startswith("model.")]
    assert model_keys and all(".lora_" in k for k in model_keys), model_keys
    lora_bytes = _bytes(step)
    full_bytes = _bytes(tmp_path / "full" / "checkpoints" / "step-00000005-t0")
    assert lora_bytes <= 0.10 * full_bytes, (lora_bytes, full_bytes)
    (start,) = [r for r in records(tmp_path / "lora", "event") if r["event"] == "start"]
    assert 0 < start["trainable_parameters"] <= 0.05 * start["parameters"]

    export = tmp_path / "lora" / "export"
    adapter = export / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    env = {k: v for k, v in env_with().items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", COMPARE, str(base), str(export)],
        capture_output=True, text=True, env=env, cwd="/", timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    compared = json.loads(result.stdout.strip().splitlines()[-1])
    assert compared["merged_vs_adapter"] < 1e-4  # merge_and_unload folds the same update in
    assert compared["adapter_vs_base"] > 1e-3  # and the adapter did learn something
    assert compared["kubetrain_imported"] is False


def test_lora_resumes_exactly_and_only_on_its_base(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    base, cache = hf_base_model("qwen2"), tmp_path / "cache"
    _ok(_train(_config(tmp_path / "straight", base, cache, training={"max_steps": 10}),
               tmp_path / "a.yaml"))  # fmt: skip
    split = _config(tmp_path / "split", base, cache, training={"max_steps": 5})
    _ok(_train(split, tmp_path / "b.yaml"))
    _ok(_train(split, tmp_path / "b.yaml", "training.max_steps=10"))
    assert losses_by_step(tmp_path / "split") == losses_by_step(tmp_path / "straight")

    # Another base under the same path: the adapters would be meaningless on it.
    other = tmp_path / "other-base"
    shutil.copytree(base, other)
    split["model"]["pretrained"] = str(other)
    (other / "model.safetensors").write_bytes(
        (hf_base_model("llama") / "model.safetensors").read_bytes()
    )
    refused = _train(split, tmp_path / "c.yaml", "training.max_steps=15")
    assert refused.returncode == 64, refused.stderr[-3000:]
    assert "model.pretrained" in refused.stderr and "sha256" in refused.stderr


def test_qlora_is_refused_without_cuda(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip(
            "this machine has CUDA: tests/integration/test_lora.py::test_qlora_trains_on_a_gpu"
        )
    cfg = _config(tmp_path / "run", hf_base_model("llama"), tmp_path / "cache")
    cfg["model"]["quantization"] = {"bits": 4}
    result = _train(cfg, tmp_path / "q.yaml")
    assert result.returncode == 64
    assert "model.quantization" in result.stderr and "CUDA" in result.stderr


@pytest.mark.gpu
def test_qlora_trains_on_a_gpu(tmp_path: Path, hf_base_model: Callable[[str], Path]) -> None:
    cfg = _config(tmp_path / "run", hf_base_model("llama"), tmp_path / "cache",
                  training={"max_steps": 20, "device": "cuda", "precision": "bf16"})  # fmt: skip
    cfg["model"]["quantization"] = {"bits": 4, "quant_type": "nf4"}
    _ok(_train(cfg, tmp_path / "q.yaml"))
    losses = losses_by_step(tmp_path / "run")
    assert math.isfinite(losses[20]) and losses[20] < losses[1]
    assert (tmp_path / "run" / "export" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()


def test_lora_under_fsdp_matches_ddp_and_keeps_the_best_checkpoint_by_rouge(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    """Two processes, sharded and replicated: the same losses, adapter-only checkpoints,
    and checkpoint.best_metric val_rougeL (higher is better) keeps the best-scoring one."""
    base, cache = hf_base_model("llama"), tmp_path / "cache"
    runs = {}
    for parallelism in ("fsdp", "ddp"):
        cfg = _config(
            tmp_path / parallelism, base, cache,
            training={"max_steps": 24, "eval_steps": 4, "parallelism": parallelism},
            checkpoint={"interval_steps": 4, "keep_last": 1, "keep_best": 1,
                        "best_metric": "val_rougeL"},
            evaluation={"metrics": ["rouge"], "num_samples": 8, "max_new_tokens": 16},
        )  # fmt: skip
        cfg["data"]["seq_len"] = 96  # whole conversations: the answers to score
        result = torchrun(write_config(tmp_path / f"{parallelism}.yaml", cfg), 2)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        runs[parallelism] = tmp_path / parallelism
    fsdp, ddp = losses_by_step(runs["fsdp"]), losses_by_step(runs["ddp"])
    assert sorted(fsdp) == list(range(1, 25))
    assert all(abs(fsdp[s] - ddp[s]) < 1e-5 for s in fsdp), (fsdp, ddp)

    rouge = {r["step"]: r["val_rougeL"] for r in records(runs["fsdp"], "val")}
    assert len(set(rouge.values())) > 1, rouge  # the scores differ: the ranking means something
    best = max(sorted(rouge, reverse=True), key=lambda step: rouge[step])  # newest of equals
    kept = committed_steps(runs["fsdp"] / "checkpoints")
    # Kept: the best, the newest, and the newest proven good (20: 24 has no healthy
    # steps after it); every other is rotated out.
    assert best in kept and set(kept) <= {best, 20, 24}, (rouge, kept)
    step = runs["fsdp"] / "checkpoints" / "step-00000024-t0"
    model_keys = [k for k in _checkpoint_keys(step) if k.startswith("model.")]
    assert model_keys and all(".lora_" in k for k in model_keys), model_keys
    assert (runs["fsdp"] / "export" / "adapter" / "adapter_model.safetensors").is_file()
