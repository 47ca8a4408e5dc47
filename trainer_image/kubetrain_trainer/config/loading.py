"""Read, override, validate and write back trainer configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kubetrain_trainer.config.schema import TrainingConfig


class ConfigError(ValueError):
    """A config that cannot be used; ``errors`` holds one "path: problem" line each."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: invalid configuration\n" + "\n".join(f"  {e}" for e in errors))


def format_validation_error(err: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem, naming the dotted field path and what is allowed."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `kubetrain validate` lists allowed fields)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        got = e.get("input")
        if e["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict | list):
            msg += f" (got {got!r})"
        lines.append(f"{path or '<root>'}: {msg}")
    return lines


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML scalars or lists."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError("overrides", [f"{item!r}: expected dotted.key=value"])
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError("overrides", [f"{key}: {part!r} is not a section"])
            node = child
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return data


def parse_config(data: Any, source: str = "config", prefix: str = "") -> TrainingConfig:
    """Validate a mapping into a TrainingConfig, raising ConfigError on any problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"{prefix or '<root>'}: expected a mapping of config sections"])
    try:
        return TrainingConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, format_validation_error(err, prefix)) from None


def read_yaml(path: str | Path) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except yaml.YAMLError as err:
        raise ConfigError(str(path), [f"not valid YAML: {err}"]) from None


def resolve_paths(config: TrainingConfig, base: Path) -> TrainingConfig:
    """Relative data paths resolve against the config file's folder, like includes do."""
    data_path = Path(config.data.path)
    if not data_path.is_absolute() and "://" not in config.data.path:
        candidate = base / data_path
        if candidate.exists() or not data_path.exists():
            config.data.path = str(candidate)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainingConfig:
    """Load a trainer config file (a bare TrainingConfig or a TrainingJob's spec.trainer)."""
    data = read_yaml(path)
    prefix = ""
    if isinstance(data, dict) and data.get("kind") == "TrainingJob":
        data, prefix = (data.get("spec") or {}).get("trainer"), "spec.trainer"
    data = apply_overrides(data if isinstance(data, dict) else {}, overrides or [])
    return resolve_paths(parse_config(data, str(path), prefix), Path(path).parent)


def to_yaml(model: BaseModel) -> str:
    """Write a config back as YAML (defaults included, so the file documents the run)."""
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)
