"""Data in S3 (real MinIO): a prefix with a glob, one object, fetched once per machine
and again when the store changes; a run that trains on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tests.integration.trainer_runs import (
    CORPUS,
    env_with,
    kubetrain,
    losses_by_step,
    tiny_config,
    write_config,
)

from kubetrain_core.config import ConfigError
from kubetrain_core.config.data import DataConfig
from kubetrain_trainer.data.records import PackedTextDataset
from kubetrain_trainer.data.text import TextFileDataset
from localkube.s3 import new_bucket, s3_env
from localkube.services import MinioServer

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(minio: MinioServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in {**s3_env(minio), "AWS_ENDPOINT_URL": minio.endpoint}.items():
        monkeypatch.setenv(name, value)
    yield new_bucket(minio)


def _put(minio: MinioServer, bucket: str, key: str, text: str, tmp_path: Path) -> None:
    local = tmp_path / "upload"
    local.write_text(text)
    minio.client().upload_file(str(local), bucket, key)


def _lines(texts: list[str]) -> str:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts)


def _packed(path: str, cache: Path) -> PackedTextDataset:
    cfg = DataConfig.model_validate(
        {
            "adapter": "jsonl_text", "path": path, "tokenizer": {"kind": "char"},
            "seq_len": 16, "batch_size": 2, "cache_dir": str(cache),
        }
    )  # fmt: skip
    return PackedTextDataset(cfg, seed=0)


def test_a_prefix_glob_is_fetched_once_and_again_when_it_changes(
    minio: MinioServer, bucket: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    _put(minio, bucket, "corpus/a.jsonl", _lines(["alpha beta gamma"] * 40), tmp_path)
    _put(minio, bucket, "corpus/b.jsonl", _lines(["delta epsilon"] * 20), tmp_path)
    _put(minio, bucket, "corpus/notes.txt", "not matched by the glob\n" * 50, tmp_path)
    uri = f"s3://{bucket}/corpus/*.jsonl"
    first = _packed(uri, tmp_path / "cache")
    assert first.stats["records"] == 60  # a.jsonl and b.jsonl, not notes.txt
    assert [p.name for p in first.files] == ["a.jsonl", "b.jsonl"]
    assert capfd.readouterr().err.count(f"fetching s3://{bucket}/corpus:") == 3

    again = _packed(uri, tmp_path / "cache")
    assert again.stats["records"] == 60
    assert "fetching" not in capfd.readouterr().err  # the machine's copy is reused

    _put(minio, bucket, "corpus/b.jsonl", _lines(["delta epsilon"] * 30), tmp_path)
    changed = _packed(uri, tmp_path / "cache")
    assert changed.stats["records"] == 70  # the changed object was fetched anew
    assert "fetching" in capfd.readouterr().err


def test_one_object_is_the_text_file_corpus(
    minio: MinioServer, bucket: str, tmp_path: Path
) -> None:
    minio.client().upload_file(str(CORPUS), bucket, "texts/tiny_corpus.txt")
    cache = str(tmp_path / "cache")
    remote = TextFileDataset(
        DataConfig(path=f"s3://{bucket}/texts/tiny_corpus.txt", cache_dir=cache), seed=0
    )
    local = TextFileDataset(DataConfig(path=str(CORPUS)), seed=0)
    assert remote.tokenizer.vocab_size == local.tokenizer.vocab_size
    assert remote.steps_per_epoch(1, 1) == local.steps_per_epoch(1, 1)
    where = {"rank": 0, "world_size": 1, "accumulation_steps": 1, "device": torch.device("cpu")}
    for step in (0, 7):  # the same corpus, so the same batches
        mine, theirs = remote.train_batch(step, 0, **where), local.train_batch(step, 0, **where)
        assert torch.equal(mine["input_ids"], theirs["input_ids"])


def test_a_missing_prefix_names_the_field(bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _packed(f"s3://{bucket}/nothing/here", tmp_path / "cache")
    assert err.value.source == "data.path" and "names no objects" in str(err.value)


def test_a_run_trains_on_data_in_s3(minio: MinioServer, bucket: str, tmp_path: Path) -> None:
    minio.client().upload_file(str(CORPUS), bucket, "texts/tiny_corpus.txt")
    cfg = tiny_config(
        tmp_path / "run",
        data={"path": f"s3://{bucket}/texts/tiny_corpus.txt", "cache_dir": str(tmp_path / "c")},
        training={"max_steps": 4},
    )
    env = env_with(**s3_env(minio), AWS_ENDPOINT_URL=minio.endpoint)
    result = kubetrain("train", "--config", str(write_config(tmp_path / "c.yaml", cfg)), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(losses_by_step(tmp_path / "run")) == [1, 2, 3, 4]
