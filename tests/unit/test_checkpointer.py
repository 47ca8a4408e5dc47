"""The Checkpointer saves every attached component and loads each one back.

A real tiny model and optimizer, a local store, one process: what a resumed
attempt gets back is what the saving attempt had, components included that the
loop used to forget (early stopping's patience).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kubetrain_core.config import TrainingConfig, parse_config
from kubetrain_trainer.callbacks import EarlyStopping
from kubetrain_trainer.checkpointer import Checkpointer
from kubetrain_trainer.components import Components, build_components
from kubetrain_trainer.distributed import DistInfo
from kubetrain_trainer.faults import FaultInjector
from kubetrain_trainer.metrics import Sink, TrainerMetrics
from kubetrain_trainer.recovery import NanGuard
from kubetrain_trainer.runtime import Runtime

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "data" / "tiny_corpus.txt"
DIST = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _cfg(tmp_path: Path) -> TrainingConfig:
    return parse_config(
        {
            "run_dir": str(tmp_path / "run"),
            "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16},
            "data": {"path": str(CORPUS), "seq_len": 16, "batch_size": 2},
            "training": {"max_steps": 10, "early_stopping": {"patience": 5}},
            "checkpoint": {"async_upload": False},
        }
    )


class _Loop:
    """The loop's own state, as the Trainer hands it over."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


def _attempt(
    tmp_path: Path, restart: int
) -> tuple[Checkpointer, Components, _Loop, NanGuard, bool]:
    cfg = _cfg(tmp_path)
    runtime = Runtime(restart_count=restart)
    checkpointer = Checkpointer(
        cfg, runtime, DIST, tmp_path / f"scratch-{restart}",
        faults=FaultInjector([], 0, restart), metrics=TrainerMetrics(labels={}),
    )  # fmt: skip
    point = checkpointer.resume_point()
    parts = build_components(cfg, DIST)
    loop, guard = _Loop(), NanGuard(cfg.recovery)
    states = {"loop": loop, "guard": guard, **parts.stateful()}
    checkpointer.attach(parts.raw_model, parts.optimizer, states, parts.dataset.tokenizer, Sink())
    if point is not None:
        checkpointer.load(point, resuming=True)
    return checkpointer, parts, loop, guard, point is not None


def _early_stopping(parts: Components) -> EarlyStopping:
    [early] = [c for c in parts.callbacks.callbacks if isinstance(c, EarlyStopping)]
    return early


def test_a_resumed_attempt_gets_back_every_component(tmp_path: Path) -> None:
    first, parts, loop, guard, resumed = _attempt(tmp_path, restart=0)
    assert not resumed
    loop.step = 4
    early = _early_stopping(parts)
    early.best, early.bad_validations = 1.5, 3  # three validations without improvement
    guard.restores = 1
    parts.optimizer.step()
    parts.scheduler.step()
    weights = {k: v.clone() for k, v in parts.raw_model.state_dict().items()}
    first.save(4, {"val_loss": 1.5})
    first.close()

    second, parts2, loop2, guard2, resumed = _attempt(tmp_path, restart=1)
    assert resumed and loop2.step == 4
    early2 = _early_stopping(parts2)
    # Before, early stopping's state was never saved: patience restarted on every resume.
    assert (early2.best, early2.bad_validations) == (1.5, 3)
    assert guard2.restores == 1  # a fresh process continues the NaN budget it had
    assert parts2.scheduler.state_dict()["last_epoch"] == parts.scheduler.state_dict()["last_epoch"]
    for name, tensor in parts2.raw_model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    second.close()


def test_an_in_process_restore_keeps_the_nan_budget_it_spent(tmp_path: Path) -> None:
    checkpointer, _, loop, guard, _ = _attempt(tmp_path, restart=0)
    loop.step = 2
    checkpointer.save(2, {})
    loop.step, guard.restores = 7, 2
    point = checkpointer.restore()
    assert point is not None and point.info.step == 2
    assert loop.step == 2  # back to the checkpoint's step
    assert guard.restores == 2  # but the restores spent on the way are not given back
    checkpointer.close()
