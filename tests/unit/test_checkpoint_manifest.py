"""Manifest and good-marker serialisation: what parses is committed, what does not is not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kubetrain_trainer.checkpoint.manifest import (
    FileEntry,
    GoodMarker,
    Manifest,
    ManifestError,
    describe_files,
    parse_step_dir,
    step_dir,
)


def _manifest() -> Manifest:
    return Manifest.create(
        120,
        epoch=2,
        world_size=4,
        files={
            "dcp/.metadata": FileEntry("a" * 64, 10, 0),
            "rng-rank3.pt": FileEntry("b" * 64, 5, 3),
        },
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


def test_step_dir_names_sort_and_parse() -> None:
    assert step_dir(120) == "step-00000120"
    assert parse_step_dir("step-00000120") == 120
    assert parse_step_dir("s3://b/p/step-123456789/") == 123456789
    assert parse_step_dir("step-12") is None
    assert parse_step_dir("good.json") is None
    assert sorted([step_dir(s) for s in (100, 20, 3)]) == [step_dir(s) for s in (3, 20, 100)]


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
