"""Manifest and good-marker serialisation: what parses is committed, what does not is not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kubetrain_core.checkpoints.manifest import (
    FileEntry,
    GoodMarker,
    Manifest,
    ManifestError,
    Unauthenticated,
    Writer,
    checkpoint_dir,
    describe_files,
    parse_checkpoint_dir,
)

KEY = b"k" * 32


def _manifest() -> Manifest:
    return Manifest.create(
        120,
        epoch=2,
        world_size=4,
        files={
            "dcp/.metadata": FileEntry("a" * 64, 10, 0),
            "rng-rank3.pt": FileEntry("b" * 64, 5, 3),
        },
        writer=Writer(term=3, attempt=2, job_uid="uid"),
        metrics={"val_loss": 1.5, "diverged": math.nan},
        meta={"tokens": 1000},
    )


def test_round_trip_keeps_every_field() -> None:
    original = _manifest()
    parsed = Manifest.from_json(original.to_json())
    assert parsed == original
    assert parsed.metrics == {"val_loss": 1.5, "diverged": None}  # JSON has no NaN
    assert parsed.total_bytes == 15
    assert json.loads(original.to_json())["created"].endswith("Z")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("files"),
        lambda d: d.update(files={}),
        lambda d: d.update(step=-1),
        lambda d: d.update(step="120"),
        lambda d: d.update(format=99),
        lambda d: d["files"]["rng-rank3.pt"].update(sha256="xyz"),
        lambda d: d["files"]["rng-rank3.pt"].update(size=-5),
        lambda d: d.update(metrics={"val_loss": "low"}),
        lambda d: d.update(metrics={"val_loss": True}),
        lambda d: d.pop("writer"),
        lambda d: d["writer"].update(term=-1),
        lambda d: d.update(time=None),
    ],
)
def test_malformed_manifests_do_not_parse(mutate: object) -> None:
    data = json.loads(_manifest().to_json())
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ManifestError):
        Manifest.from_json(json.dumps(data).encode())


def test_truncated_manifest_does_not_parse() -> None:
    raw = _manifest().to_json()
    with pytest.raises(ManifestError):
        Manifest.from_json(raw[: len(raw) // 2])


def test_checkpoint_dir_names_sort_and_parse() -> None:
    assert checkpoint_dir(120, 3) == "step-00000120-t3"
    assert parse_checkpoint_dir("step-00000120-t3") == (120, 3)
    assert parse_checkpoint_dir("s3://b/p/step-123456789-t0/") == (123456789, 0)
    for name in ("step-12-t1", "step-00000120", "step-00000120-t", "good.json", "_kubetrain"):
        assert parse_checkpoint_dir(name) is None
    names = [checkpoint_dir(s, s % 7) for s in (100, 20, 3)]
    assert sorted(names) == [checkpoint_dir(s, s % 7) for s in (3, 20, 100)]


def test_signed_manifest_round_trips_and_any_change_breaks_it() -> None:
    raw = _manifest().to_json(KEY)
    assert Manifest.from_json(raw, KEY) == _manifest().__class__.from_json(raw)
    data = json.loads(raw)
    data["files"]["rng-rank3.pt"]["sha256"] = "c" * 64  # point at another file
    with pytest.raises(Unauthenticated, match="does not match"):
        Manifest.from_json(json.dumps(data).encode(), KEY)
    with pytest.raises(Unauthenticated, match="does not match"):
        Manifest.from_json(raw, b"another job's key")
    with pytest.raises(Unauthenticated, match="not signed"):
        Manifest.from_json(_manifest().to_json(), KEY)


def test_good_marker_is_signed_too() -> None:
    marker = GoodMarker(step=40, healthy_steps=20)
    assert GoodMarker.from_json(marker.to_json(KEY), KEY) == marker
    with pytest.raises(Unauthenticated):
        GoodMarker.from_json(marker.to_json(), KEY)


def test_describe_files_hashes_content(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"abc")
    entries = describe_files({"x": tmp_path / "x"}, rank=2)
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert entries == {"x": FileEntry(expected, 3, 2)}


def test_good_marker_round_trip() -> None:
    marker = GoodMarker(step=40, healthy_steps=20)
    assert GoodMarker.from_json(marker.to_json()) == marker
    with pytest.raises(ManifestError):
        GoodMarker.from_json(b"{}")
