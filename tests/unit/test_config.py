"""The trainer config: loading, overrides, round trips and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetrain_core.config import ConfigError, load_config, parse_config, to_yaml

MINIMAL = {"data": {"path": "corpus.txt"}, "training": {"max_steps": 10}}


def errors_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.errors


def test_defaults_fill_every_section() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.optimization.optimizer.name == "adamw"
    assert cfg.model.d_model % cfg.model.n_heads == 0
    assert cfg.training.max_steps == 10


def test_yaml_round_trip_is_lossless(tmp_path: Path) -> None:
    cfg = parse_config({**MINIMAL, "optimization": {"scheduler": {"name": "exponential"}}})
    again = parse_config(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


def test_dotted_overrides_parse_yaml_scalars(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    cfg = load_config(
        path, ["training.max_steps=7", "optimization.optimizer.lr=0.1", "metrics.port=9100"]
    )
    assert (cfg.training.max_steps, cfg.optimization.optimizer.lr, cfg.metrics.port) == (
        7,
        0.1,
        9100,
    )


def test_relative_data_path_resolves_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("hello")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    assert load_config(path).data.path == str(tmp_path / "corpus.txt")


def test_training_job_file_is_read_through_spec_trainer(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    job = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "spec": {"trainer": MINIMAL},
    }
    path.write_text(yaml.safe_dump(job))
    assert load_config(path).training.max_steps == 10


def test_training_job_errors_carry_the_spec_trainer_prefix(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    bad = {**MINIMAL, "training": {"max_steps": 0}}
    path.write_text(yaml.safe_dump({"kind": "TrainingJob", "spec": {"trainer": bad}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors[0].startswith("spec.trainer.training.max_steps:")


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            {"training": {"max_steps": 5, "precision": "fp8"}},
            "training.precision: Input should be 'fp32', 'bf16' or 'fp16'",
        ),
        (
            {"optimization": {"optimizer": {"name": "lion"}}},
            "optimization.optimizer.name: unknown optimizer 'lion'; allowed: adam, adamw, rmsprop, sgd",
        ),
        (
            {"optimization": {"scheduler": {"name": "step"}}},
            "unknown scheduler 'step'; allowed: constant, cosine, exponential, linear_warmup",
        ),
        (
            {"data": {"path": "x", "tokenizer": {"kind": "word"}}},
            "data.tokenizer.kind: unknown tokenizer 'word'; allowed: auto, bpe, char, pretrained",
        ),
        (
            {"model": {"d_model": 100, "n_heads": 3}},
            "model: d_model (100) must be divisible by n_heads (3)",
        ),
        (
            {"data": {"path": "x", "splits": {"train": 0.9, "val": 0.2, "test": 0.0}}},
            "data.splits: train + val + test must be 1.0",
        ),
        (
            {"data": {"path": "x", "seq_len": 512}},
            "data.seq_len (512) exceeds model.max_seq_len (256)",
        ),
        ({"training": {"eval_steps": 10}}, "set training.max_steps or training.num_epochs"),
        ({"training": {"max_steps": 5, "max_step": 3}}, "training.max_step: unknown field"),
        (
            {"optimization": {"optimizer": {"lr": -1}}},
            "optimization.optimizer.lr: Input should be greater than 0",
        ),
        ({"optimization": {"optimizer": {"betas": [0.9, 1.5]}}}, "each beta must be in [0, 1)"),
        ({"checkpoint": {"uri": "gs://bucket/x"}}, "checkpoint.uri: String should match pattern"),
        ({"data": None}, "data: Input should be a valid dictionary"),
    ],
)
def test_each_bad_config_gives_one_clear_error(patch: dict, expected: str) -> None:
    errors = errors_of({**MINIMAL, **patch})
    assert len(errors) == 1, errors
    assert expected in errors[0]


def test_missing_required_sections_are_named() -> None:
    assert errors_of({}) == [
        "data: required field is missing",
        "training: required field is missing",
    ]


def test_malformed_override_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    with pytest.raises(ConfigError, match=r"expected dotted\.key=value"):
        load_config(path, ["training.max_steps"])


def test_config_package_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, kubetrain_core.config, kubetrain_core.api; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
