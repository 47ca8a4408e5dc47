"""FSDP2 on CPU with gloo through a real torchrun: the same trajectory as DDP, exact
resume, resume at another world size, and an export gathered from the shards."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.integration.trainer_runs import (
    REPO,
    kubetrain,
    losses_by_step,
    records,
    same_weights,
    tiny_config,
    torchrun,
    write_config,
)

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, name: str, parallelism: str, **sections: Any) -> Path:
    cfg = tiny_config(
        tmp_path / name,
        model={"n_layers": 2},  # two blocks: two shard units besides the root
        training={"max_steps": 10, "parallelism": parallelism},
        **sections,
    )
    return write_config(tmp_path / f"{name}.yaml", cfg)


def _ok(result: Any) -> None:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_fsdp_follows_ddp_and_resumes_at_another_world_size(tmp_path: Path) -> None:
    _ok(torchrun(_config(tmp_path, "ddp", "ddp"), 2))
    _ok(torchrun(_config(tmp_path, "fsdp", "fsdp"), 2))
    ddp, fsdp = losses_by_step(tmp_path / "ddp"), losses_by_step(tmp_path / "fsdp")
    assert sorted(fsdp) == list(range(1, 11))
    for step, loss in ddp.items():  # the same maths, another reduction order
        assert fsdp[step] == pytest.approx(loss, rel=1e-5), step

    # Five steps on two processes, then the last five on two, and on one.
    half = _config(tmp_path, "half", "fsdp")
    _ok(torchrun(half, 2, "training.max_steps=5"))
    shutil.copytree(tmp_path / "half", tmp_path / "one")
    _ok(torchrun(half, 2))
    # One process with twice the batch holds exactly the samples of both ranks
    # (data/sampling.py), so the trajectory goes on unchanged through the reshard.
    one = _config(tmp_path, "one", "fsdp", data={"batch_size": 8})
    _ok(torchrun(one, 1))
    for name in ("half", "one"):
        events = [r for r in records(tmp_path / name, "event") if r["event"] == "resume"]
        assert [e["uri"].rsplit("/", 1)[-1] for e in events] == ["step-00000005-t0"], name
        resumed = losses_by_step(tmp_path / name)
        for step in range(6, 11):
            assert resumed[step] == pytest.approx(fsdp[step], rel=1e-5), (name, step)

    # The end-of-run export gathers the shards: the same tensors as the final
    # checkpoint exported in one process.
    out = tmp_path / "from-checkpoint"
    made = kubetrain("export", str(tmp_path / "fsdp" / "checkpoints"), str(out))
    assert made.returncode == 0, made.stderr[-2000:]
    assert same_weights(out, tmp_path / "fsdp" / "export")


def test_an_hf_model_trains_sharded_and_exports_whole(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    cfg = tiny_config(
        tmp_path / "run",
        model={"adapter": "hf_causal_lm", "pretrained": str(hf_base_model("llama"))},
        data={
            "adapter": "chat_jsonl", "path": str(REPO / "examples/data/chat-facts.jsonl"),
            "seq_len": 96, "batch_size": 4, "cache_dir": str(tmp_path / "cache"),
        },
        training={"max_steps": 6, "parallelism": "fsdp", "eval_steps": 3},
        # 5 records over 2 processes: generation stays in lockstep (synced_gpus, padding)
        evaluation={"metrics": ["bleu", "exact_match"], "num_samples": 5, "max_new_tokens": 8},
    )  # fmt: skip
    _ok(torchrun(write_config(tmp_path / "c.yaml", cfg), 2))
    losses = losses_by_step(tmp_path / "run")
    assert sorted(losses) == list(range(1, 7)) and losses[6] < losses[1]
    # Every rank runs the same number of sharded eval forwards, or this would hang.
    evals = records(tmp_path / "run", "val")
    assert [r["step"] for r in evals] == [3, 6] and all("val_bleu" in r for r in evals)
    lines = (tmp_path / "run" / "generations.jsonl").read_text().splitlines()
    generated = [(r["step"], r["index"]) for r in map(json.loads, lines)]
    n = len(generated) // 2  # each sample once per evaluation: no padding copies
    assert n >= 3 and generated == [(step, i) for step in (3, 6) for i in range(n)]
    out = tmp_path / "from-checkpoint"
    made = kubetrain("export", str(tmp_path / "run" / "checkpoints"), str(out))
    assert made.returncode == 0, made.stderr[-2000:]
    assert same_weights(out, tmp_path / "run" / "export")
