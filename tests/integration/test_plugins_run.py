"""A user's plugin package on the trainer's path is used by a real run: a callback by
entry point and a loss by import path; one that cannot be imported stops the run
before training with the config-invalid exit code and the field named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.integration.trainer_runs import (
    env_with,
    kubetrain,
    losses_by_step,
    tiny_config,
    write_config,
)
from tests.plugin_package import PACKAGE, install

from kubetrain_core.contract import ExitCode

pytestmark = pytest.mark.integration


def test_plugins_from_an_installed_package_are_used_by_a_run(tmp_path: Path) -> None:
    site = install(tmp_path / "site")
    env = env_with(PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    plain = tiny_config(tmp_path / "plain", training={"max_steps": 4})
    assert (
        kubetrain(
            "train", "--config", str(write_config(tmp_path / "p.yaml", plain)), env=env
        ).returncode
        == 0
    )
    plugged = tiny_config(
        tmp_path / "plugged",
        training={"max_steps": 4},
        optimization={"loss": {"name": f"{PACKAGE}:DoubledLoss"}},
        extensions={"callbacks": [{"name": "step_log", "options": {"every": 2}}]},
    )
    result = kubetrain(
        "train", "--config", str(write_config(tmp_path / "q.yaml", plugged)), env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "plugged" / "plugin-steps.json").read_text()) == [2, 4]
    # The same weights and batch at step 1: the user's loss is twice the built-in one.
    first_plain, first_plugged = (
        losses_by_step(tmp_path / "plain")[1],
        losses_by_step(tmp_path / "plugged")[1],
    )
    assert first_plugged == pytest.approx(2 * first_plain, rel=1e-5)


def test_a_plugin_that_is_not_installed_stops_the_run_naming_the_field(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", model={"adapter": "acme_models:Llama9"})
    result = kubetrain("train", "--config", str(write_config(tmp_path / "c.yaml", cfg)))
    assert result.returncode == ExitCode.CONFIG_INVALID
    assert "model.adapter" in result.stderr and "No module named 'acme_models'" in result.stderr
    assert "Traceback" not in result.stderr
