"""The LoRA example through `kubetrain run`, on its base made by the project's script:
generated answers get better by BLEU and ROUGE, the logged scores are what sacrebleu and
rouge-score give for the samples in generations.jsonl, at most 5 % of the parameters
train, the LoRA checkpoint is at most 10 % of a full fine-tune's of the same model (a
real one, written by a 2-step run without model.lora), and the merged export loads with
plain transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.integration.trainer_runs import REPO, env_with, kubetrain, records

pytestmark = pytest.mark.integration

LOADS = (
    "import sys; from transformers import AutoModelForCausalLM as A, AutoTokenizer as T; "
    "A.from_pretrained(sys.argv[1]); T.from_pretrained(sys.argv[1]); "
    "print(any(k.startswith('kubetrain') for k in sys.modules))"
)


def _start(run_dir: Path) -> dict[str, Any]:
    (start,) = [r for r in records(run_dir, "event") if r["event"] == "start"]
    return start


def _checkpoint_bytes(run_dir: Path, step: int) -> int:
    """Every file of the step's checkpoint directory: tensors, optimizer state, DCP
    metadata, RNG states, tokenizer, manifest."""
    (directory,) = (run_dir / "checkpoints").glob(f"step-{step:08d}-*")
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def test_the_lora_example_learns_recipes_by_bleu_and_rouge(
    tmp_path: Path, recipe_base_model: Path
) -> None:
    from rouge_score import rouge_scorer  # type: ignore[import-untyped]
    from sacrebleu.metrics.bleu import BLEU

    example = str(REPO / "examples" / "finetune-lora.yaml")
    result = kubetrain(
        "run", example, "--runs-dir", str(tmp_path / "runs"),
        f"model.pretrained={recipe_base_model}", f"data.cache_dir={tmp_path / 'cache'}",
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    run_dir = tmp_path / "runs" / "finetune-lora"

    evals = records(run_dir, "val")
    assert [r["step"] for r in evals] == [50, 100, 150, 200]
    first, last = evals[0], evals[-1]
    assert last["val_bleu"] > first["val_bleu"] and last["val_rougeL"] > first["val_rougeL"]

    samples = [
        json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()
    ]
    at_last = [s for s in samples if s["step"] == 200]
    assert len(at_last) == 8 and [s["index"] for s in at_last] == list(range(8))
    predictions = [s["prediction"] for s in at_last]
    references = [s["reference"] for s in at_last]
    assert all(r.startswith("Title: ") for r in references)
    bleu = BLEU().corpus_score(predictions, [references]).score
    assert last["val_bleu"] == pytest.approx(bleu, abs=1e-9)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge_l = (
        sum(
            scorer.score(r, p)["rougeL"].fmeasure
            for p, r in zip(predictions, references, strict=True)
        )
        / 8
    )
    assert last["val_rougeL"] == pytest.approx(rouge_l, abs=1e-9)

    start = _start(run_dir)
    assert 0 < start["trainable_parameters"] <= 0.05 * start["parameters"], start

    # A full fine-tune of the same base with the same optimizer, long enough to write
    # one checkpoint: the real size the LoRA checkpoint is compared with.
    full = kubetrain(
        "run", example, "--runs-dir", str(tmp_path / "full"),
        f"model.pretrained={recipe_base_model}", f"data.cache_dir={tmp_path / 'cache'}",
        "model.lora=null", "training.max_steps=2",
    )  # fmt: skip
    assert full.returncode == 0, (full.stdout + full.stderr)[-4000:]
    full_dir = tmp_path / "full" / "finetune-lora"
    full_params = _start(full_dir)["trainable_parameters"]
    assert full_params == _start(full_dir)["parameters"]
    full_bytes = _checkpoint_bytes(full_dir, 2)
    assert full_bytes >= full_params * (4 + 8)  # fp32 weights + AdamW's two moments
    lora_bytes = _checkpoint_bytes(run_dir, 200)
    assert lora_bytes <= 0.10 * full_bytes, (lora_bytes, full_bytes)

    env = {k: v for k, v in env_with().items() if k != "PYTHONPATH"}
    loaded = subprocess.run(
        [sys.executable, "-I", "-c", LOADS, str(run_dir / "export")],
        capture_output=True, text=True, env=env, cwd="/", timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["False"]
    assert (run_dir / "export" / "adapter" / "adapter_model.safetensors").is_file()
