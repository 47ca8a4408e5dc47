"""Fixtures shared by the unit and integration tests: small Hugging Face models made
by the project's own script (examples/make_base_model.py), never downloaded."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests never reach a hub: an accidental download fails instead of passing slowly.
os.environ.update(dict.fromkeys(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"), "1"))


def base_model_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_base_model", REPO / "examples" / "make_base_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def hf_base_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """arch -> a save_pretrained directory (model + ChatML tokenizer), made once."""
    made: dict[str, Path] = {}
    script = base_model_script()

    def get(arch: str = "llama") -> Path:
        if arch not in made:
            made[arch] = script.make(tmp_path_factory.mktemp(f"base-{arch}"), arch, vocab_size=512)
        return made[arch]

    return get


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests run where CUDA is (`make test-gpu` on a GPU machine); elsewhere they
    are reported as skipped with the reason, never as passed."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make test-gpu on a GPU machine)")
    for item in gpu:
        item.add_marker(skip)
