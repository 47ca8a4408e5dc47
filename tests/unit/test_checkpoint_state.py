"""write_state/read_state and snapshot/write_snapshot: model, optimizer, loop state and RNG
come back exactly (CPU)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from kubetrain_trainer.checkpoint import CheckpointManager, ResumeRequest
from kubetrain_trainer.checkpoint.state import (
    TRAINER_STATE,
    StateStager,
    capture_rng,
    read_state,
    restore_rng,
    rng_file,
    write_snapshot,
    write_state,
)


def _draws() -> tuple[list[float], float, float]:
    return torch.rand(4).tolist(), random.random(), float(np.random.rand())


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 4)  # data drawn from the RNG: resumes only if the RNG does
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_round_trip_restores_linear_adamw_and_rng(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _train(model, optimizer, 3)
    optimizer.param_groups[0]["lr"] = 3e-3  # as a scheduler would have left it
    extra = {"step": 3, "epoch": 1, "loss_ema": 0.25, "nan_skips": torch.tensor(2)}
    write_state(tmp_path, model, optimizer, extra, rank=0)
    expected_draws = _draws()
    expected_params = {k: v.clone() for k, v in model.state_dict().items()}
    expected_optim = optimizer.state_dict()

    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    fresh = nn.Linear(4, 3)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2, weight_decay=0.1)
    assert not torch.equal(fresh.weight, expected_params["weight"])

    restored = read_state(tmp_path, fresh, fresh_optimizer, rank=0)

    assert restored["step"] == 3 and restored["epoch"] == 1 and restored["loss_ema"] == 0.25
    assert torch.equal(restored["nan_skips"], torch.tensor(2))
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, expected_params[key]), key
    got_optim = fresh_optimizer.state_dict()
    assert got_optim["param_groups"][0]["lr"] == 3e-3
    assert got_optim["param_groups"][0]["weight_decay"] == 0.1
    for index, state in expected_optim["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(got_optim["state"][index][name], state[name]), name
    assert _draws() == expected_draws


def test_rng_capture_and_restore_cover_python_torch_numpy() -> None:
    state = capture_rng()
    first = _draws()
    _draws()
    restore_rng(state)
    assert _draws() == first


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.3), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]


def _build() -> tuple[_Net, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    model = _Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 5))
    return model, optimizer, scheduler


def _loop(model: _Net, optimizer: Any, scheduler: Any, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 6) * (1 + random.random())  # torch and python RNG both feed data
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()  # dropout: RNG too
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def test_n_steps_resume_n_steps_equals_2n_steps(tmp_path: Path) -> None:
    steps = 6
    torch.manual_seed(7)
    random.seed(7)
    straight = _loop(*_build(), 2 * steps)

    torch.manual_seed(7)
    random.seed(7)
    model, optimizer, scheduler = _build()
    first_half = _loop(model, optimizer, scheduler, steps)
    extra = {"step": steps, "scheduler": scheduler.state_dict()}
    write_state(tmp_path / "stage", model, optimizer, extra, rank=0)
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    manager.start(ResumeRequest(), tmp_path / "unused")
    manager.save(steps, tmp_path / "stage")
    del model, optimizer, scheduler

    # A new process: different seeds, fresh objects, state only from the checkpoint.
    torch.manual_seed(99)
    random.seed(99)
    model, optimizer, scheduler = _build()
    loaded = CheckpointManager(str(tmp_path / "ckpt")).start(ResumeRequest(), tmp_path / "local")
    assert loaded is not None and loaded.info.step == steps
    assert {TRAINER_STATE, rng_file(0), "dcp/.metadata"} <= set(loaded.info.manifest.files)  # type: ignore[union-attr]
    restored = read_state(loaded.path, model, optimizer, rank=0)
    scheduler.load_state_dict(restored["scheduler"])
    second_half = _loop(model, optimizer, scheduler, steps)

    assert first_half + second_half == straight


def test_a_snapshot_is_the_state_when_taken_whatever_training_did_since(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, optimizer, scheduler = _build()
    _loop(model, optimizer, scheduler, 2)
    stager = StateStager()
    snapshot = stager.snapshot(model, optimizer, {"step": 2, "lr": scheduler.get_last_lr()}, 0)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v["exp_avg_sq"].clone() for k, v in optimizer.state_dict()["state"].items()}
    expected_draws = _draws()

    _loop(model, optimizer, scheduler, 3)  # changes weights, moments and every RNG
    write_snapshot(tmp_path, snapshot)
    stager.close()

    fresh, fresh_optimizer, _ = _build()
    extra = read_state(tmp_path, fresh, fresh_optimizer, rank=0)
    assert extra == {"step": 2, "lr": [pytest.approx(1e-2 * 3 / 5)]}
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for index, state in fresh_optimizer.state_dict()["state"].items():
        assert torch.equal(state["exp_avg_sq"], moments[index])
    assert _draws() == expected_draws


def test_snapshots_reuse_one_copy_of_the_state(tmp_path: Path) -> None:
    model, optimizer, scheduler = _build()
    _loop(model, optimizer, scheduler, 1)
    stager = StateStager()
    first = stager.snapshot(model, optimizer, {}, 0)
    _loop(model, optimizer, scheduler, 1)
    second = stager.snapshot(model, optimizer, {}, 0)

    def pointers(tensors: dict[str, Any]) -> list[int]:
        model_state, optim_state = tensors["model"], tensors["optimizer"]["state"]
        found = [t.data_ptr() for t in model_state.values()]
        return found + [s["exp_avg"].data_ptr() for s in optim_state.values()]

    # The memory is allocated once and overwritten: one extra copy, however many saves.
    assert pointers(second.tensors) == pointers(first.tensors)
    live = [p.data_ptr() for p in model.parameters()]
    assert not set(live) & set(pointers(second.tensors))  # a copy, not the live weights
    assert torch.equal(second.tensors["model"]["body.0.weight"], model.body[0].weight)
    stager.close()
