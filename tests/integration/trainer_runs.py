"""Helpers for tests that run the real trainer: tiny configs and metrics readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "data" / "tiny_corpus.txt"


def tiny_config(run_dir: Path, **sections: Any) -> dict[str, Any]:
    """A model small enough that a step takes milliseconds on one CPU core."""
    cfg: dict[str, Any] = {
        "run_dir": str(run_dir),
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
        "data": {"path": str(CORPUS), "seq_len": 32, "batch_size": 4},
        "optimization": {"optimizer": {"lr": 0.003}, "scheduler": {"name": "constant"}},
        "training": {"max_steps": 20, "eval_steps": 10, "eval_batches": 2, "device": "cpu"},
        "checkpoint": {"interval_steps": 5, "keep_last": 10},
        "metrics": {"log_steps": 1, "console": False},
        "recovery": {"good_after_steps": 2},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("KUBETRAIN_")]:
        del env[key]
    env.update(extra)
    return env


def kubetrain(
    *args: str, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "kubetrain_cli", *args],
        env=env or env_with(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def train_ok(cfg: dict[str, Any], path: Path, *overrides: str) -> None:
    """`kubetrain train` of `cfg` written to `path`; fails the test with its output."""
    result = kubetrain("train", "--config", str(write_config(path, cfg)), *overrides)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def losses_by_step(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir, "train")}


def committed_steps(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in ckpt_dir.glob("step-*/manifest.json"))


def same_weights(a: Path, b: Path) -> bool:
    """Whether two export directories hold the same tensors under the same names."""
    import torch
    from safetensors.torch import load_file

    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def torchrun(config: Path, processes: int, *overrides: str) -> subprocess.CompletedProcess[str]:
    """The trainer under a real torchrun with `processes` local workers (gloo on CPU)."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc-per-node={processes}", "-m", "kubetrain_trainer", "train",
         "--config", str(config), *overrides],
        env=env_with(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
