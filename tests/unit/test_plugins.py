"""User code by import path and by entry point: known from metadata, imported only
by the trainer, and refused with the field named when it cannot be imported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.plugin_package import PACKAGE, install

from kubetrain_core import registry
from kubetrain_core.api import TrainingJob
from kubetrain_core.config import ConfigError, parse_config
from kubetrain_core.config.base import PLUGINS


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(install(tmp_path / "site")))
    return tmp_path / "site"


def _config(**sections: Any) -> dict[str, Any]:
    return {"data": {"path": "c.txt"}, "training": {"max_steps": 1}, **sections}


def test_an_entry_point_name_is_registered_from_metadata(site: Path) -> None:
    assert "step_log" in registry.CALLBACKS.names()
    cfg = parse_config(_config(extensions={"callbacks": [{"name": "step_log"}]}), plugins="import")
    assert cfg.extensions.callbacks[0].name == "step_log"
    assert registry.CALLBACKS.get("step_log").__name__ == "StepLog"


def test_an_import_path_is_accepted_without_importing_and_imported_by_the_trainer(
    site: Path,
) -> None:
    loss = {"loss": {"name": f"{PACKAGE}:DoubledLoss"}}
    assert parse_config(_config(optimization=loss)).optimization.loss.name.endswith("DoubledLoss")
    assert parse_config(_config(optimization=loss), plugins="import")
    assert registry.LOSSES.get(f"{PACKAGE}:DoubledLoss").__name__ == "DoubledLoss"


def test_a_plugin_that_cannot_be_imported_is_a_config_error_naming_its_field() -> None:
    data = _config(model={"adapter": "acme.models:Llama9"})
    parse_config(data)  # the syntax is fine where the image's packages are not
    with pytest.raises(ConfigError) as err:
        parse_config(data, plugins="import")
    assert "model.adapter" in str(err.value)
    assert "cannot import acme.models:Llama9 (No module named 'acme')" in str(err.value)


def test_unknown_plain_names_are_refused_except_by_the_operator() -> None:
    data = _config(optimization={"optimizer": {"name": "lion"}})
    with pytest.raises(ConfigError, match="unknown optimizer 'lion'; allowed: adam, adamw"):
        parse_config(data)
    job = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "j"},
        "spec": {"trainer": data},
    }
    # The operator has none of the image's packages: an entry point there is unknown.
    parsed = TrainingJob.model_validate(job, context={PLUGINS: "unchecked"})
    assert parsed.spec.trainer.optimization.optimizer.name == "lion"


def test_malformed_names_are_refused_everywhere() -> None:
    for name in ("Bad Name", "pkg:", ":Cls", "a..b:C", "x" * 254):
        with pytest.raises(ConfigError, match=r"optimization\.optimizer\.name"):
            parse_config(_config(optimization={"optimizer": {"name": name}}), plugins="unchecked")
