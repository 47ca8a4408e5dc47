"""A real MinIO on loopback, one per test module that asks for it, and the LoRA
example's pretrained base model, made once per session by the project's script."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localkube.s3 import running_minio
from localkube.services import MinioServer


@pytest.fixture(scope="module")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    with running_minio(tmp_path_factory.mktemp("minio")) as server:
        yield server


@pytest.fixture(scope="session")
def recipe_base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/make_base_model.py --preset recipe: the 0.9M-parameter Llama-style base
    of examples/finetune-lora.yaml, pretrained for a minute or so on shipped text (the
    same bytes as `make demo-lora` builds; nothing downloaded)."""
    from tests.conftest import base_model_script

    script = base_model_script()
    built: Path = script.make(tmp_path_factory.mktemp("recipe-base"), preset="recipe")
    return built
