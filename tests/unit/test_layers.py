"""The layers hold at run time: the operator's process never loads torch or the trainer.

`lint-imports` (make lint) checks the import graph statically; these start a fresh
interpreter, in a venv that has torch installed, and look at what was loaded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kubetrain_devcluster.project import source_path

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {TOP})))
"""


def _loaded(modules: list[str], top: set[str]) -> list[str]:
    code = PROBE.replace("{TOP}", repr(top))
    result = subprocess.run(
        [sys.executable, "-c", code, *modules],
        env={"PYTHONPATH": source_path(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def test_the_operator_entry_point_loads_without_torch_or_the_trainer() -> None:
    # main imports the kopf handlers, kube.py, reconcile and builders: the whole operator.
    loaded = _loaded(["kubetrain_operator.main"], {"torch", "kubetrain_trainer", "boto3"})
    assert loaded == []
    assert "kubetrain_operator.handlers" in _loaded(
        ["kubetrain_operator.main"], {"kubetrain_operator"}
    )


@pytest.mark.parametrize(
    "module", ["kubetrain_core.api", "kubetrain_core.crd", "kubetrain_cli.cli"]
)
def test_the_core_and_the_cli_load_without_torch(module: str) -> None:
    assert _loaded([module], {"torch", "kopf", "kubernetes", "boto3"}) == []


def test_the_trainer_config_side_loads_without_the_operator() -> None:
    loaded = _loaded(["kubetrain_trainer.entrypoint"], {"kubetrain_operator", "kopf", "kubernetes"})
    assert loaded == []


def test_nothing_outside_tests_imports_the_tests() -> None:
    """Benchmarks, tools and packages use localkube and kubetrain_devcluster, never tests.*"""
    root = Path(__file__).resolve().parents[2]
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.relative_to(root).parts[0] not in {"tests", "runs", ".git"}
        and re.search(r"^\s*(from|import) tests\b", path.read_text(errors="replace"), re.M)
    ]
    assert offenders == []
