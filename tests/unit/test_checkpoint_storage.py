"""LocalStorage semantics and checkpoint URI parsing (open_storage)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetrain_core.checkpoints.s3 import S3Storage
from kubetrain_core.checkpoints.storage import LocalStorage, open_storage
from kubetrain_core.config.schema import S3Config


def test_local_bytes_and_files_round_trip(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.put_bytes("a/b.json", b'{"x": 1}')
    source = tmp_path / "src.bin"
    source.write_bytes(bytes(range(256)) * 10)
    storage.put_file("a/c/d.bin", source)

    assert storage.get_bytes("a/b.json") == b'{"x": 1}'
    target = tmp_path / "out" / "d.bin"
    storage.get_file("a/c/d.bin", target)
    assert target.read_bytes() == source.read_bytes()
    assert storage.exists("a/b.json")
    assert not storage.exists("a/missing")
    assert storage.list_keys() == ["a/b.json", "a/c/d.bin"]
    assert storage.list_keys("a/c") == ["a/c/d.bin"]
    assert storage.list_dirs() == ["a"]
    assert storage.list_dirs("a") == ["c"]
    assert storage.uri("a/b.json") == f"{(tmp_path / 'store').as_uri()}/a/b.json"


def test_local_missing_keys_raise_file_not_found(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(FileNotFoundError):
        storage.get_bytes("nope.json")
    with pytest.raises(FileNotFoundError):
        storage.get_file("nope.bin", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert storage.list_keys("nothing-here") == []


def test_delete_prefix_is_directory_exact(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes("step-1/a", b"1")
    storage.put_bytes("step-10/a", b"10")
    storage.delete_prefix("step-1")
    assert storage.list_keys() == ["step-10/a"]
    storage.delete("step-10/a")
    storage.delete("step-10/a")  # deleting a missing key is fine
    assert storage.list_keys() == []
    with pytest.raises(ValueError, match="whole storage root"):
        storage.delete_prefix("")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_invalid_keys_are_rejected(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="invalid storage key"):
        LocalStorage(tmp_path).put_bytes(key, b"x")


def test_open_storage_parses_uris(tmp_path: Path) -> None:
    local = open_storage(tmp_path.as_uri())
    assert isinstance(local, LocalStorage) and local.root == tmp_path
    plain = open_storage(str(tmp_path / "ckpt"))
    assert isinstance(plain, LocalStorage) and plain.root == tmp_path / "ckpt"
    spaced = open_storage((tmp_path / "with space").as_uri())
    assert isinstance(spaced, LocalStorage) and spaced.root == tmp_path / "with space"

    s3 = open_storage("s3://bucket/runs/a/", S3Config(endpoint="http://127.0.0.1:9", region="eu-1"))
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.endpoint) == ("bucket", "runs/a", "http://127.0.0.1:9")
    assert s3.root_uri == "s3://bucket/runs/a"
    assert s3.uri("step-00000001/manifest.json") == "s3://bucket/runs/a/step-00000001/manifest.json"
    assert open_storage("s3://bucket").root_uri == "s3://bucket"

    for bad in ("gs://bucket/x", "s3:///x", "file://host/x"):
        with pytest.raises(ValueError):
            open_storage(bad)
