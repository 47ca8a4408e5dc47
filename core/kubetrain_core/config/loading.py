"""Read, override, validate and write back trainer configs."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kubetrain_core.config.base import PLUGINS
from kubetrain_core.config.schema import TrainingConfig


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


def _takes_text(path: list[str]) -> bool:
    """Whether the config field at `path` holds text: its override value is then taken
    verbatim (YAML would read "s3://b/x #1" as "s3://b/x" and "0755" as 493)."""
    model: type[BaseModel] = TrainingConfig
    for i, part in enumerate(path):
        info = model.model_fields.get(part)
        if info is None:
            return False  # unknown: validation names it
        annotation = info.annotation
        if i == len(path) - 1:
            options = (annotation,) if _is_text_literal(annotation) else typing.get_args(annotation)
            return any(o is str or _is_text_literal(o) for o in options or (annotation,))
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        model = annotation
    return False


def _is_text_literal(annotation: Any) -> bool:
    return typing.get_origin(annotation) is typing.Literal and all(
        isinstance(v, str) for v in typing.get_args(annotation)
    )


def set_values(
    data: dict[str, Any], values: dict[str, Any], source: str = "overrides"
) -> dict[str, Any]:
    """Set dotted keys to already-typed values (e.g. from the environment)."""
    for key, value in values.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(source, [f"{key}: {part!r} is not a section"])
            node = child
        node[leaf] = value
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides: text fields take the value verbatim, other
    fields parse it as a YAML scalar or list (``training.max_steps=100``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError("overrides", [f"{item!r}: expected dotted.key=value"])
        text = _takes_text(key.split("."))
        set_values(data, {key: raw if text or not raw else yaml.safe_load(raw)})
    return data


def parse_config(
    data: Any, source: str = "config", prefix: str = "", plugins: str = "names"
) -> TrainingConfig:
    """Validate a mapping into a TrainingConfig, raising ConfigError on any problem;
    `plugins` says how far component names are checked (config/base.py PLUGINS)."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"{prefix or '<root>'}: expected a mapping of config sections"])
    try:
        return TrainingConfig.model_validate(data, context={PLUGINS: plugins})
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
    """Relative paths resolve against the config file's folder, like includes do: the
    data always (a missing file is then reported where it was looked for), a model or
    tokenizer directory when it exists there (else it may be a cached hub id)."""

    def resolved(location: str, must_exist: bool) -> str:
        path = Path(location)
        if path.is_absolute() or "://" in location:
            return location
        candidate = base / path
        if candidate.exists() or not (must_exist or path.exists()):
            return str(candidate)
        return location

    config.data.path = resolved(config.data.path, must_exist=False)
    pretrained = config.model.pretrained
    if pretrained is not None:
        config.model.pretrained = resolved(pretrained, must_exist=True)
    tokenizer = config.data.tokenizer
    if tokenizer.path is not None:
        tokenizer.path = (
            config.model.pretrained
            if tokenizer.path == pretrained
            else resolved(tokenizer.path, must_exist=True)
        )
    return config


def load_config(
    path: str | Path,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
    plugins: str = "names",
) -> TrainingConfig:
    """Load a trainer config file (a bare TrainingConfig or a TrainingJob's spec.trainer),
    set the typed dotted `values` (the environment's), then apply CLI `overrides`."""
    data = read_yaml(path)
    prefix = ""
    if isinstance(data, dict) and data.get("kind") == "TrainingJob":
        data, prefix = (data.get("spec") or {}).get("trainer"), "spec.trainer"
    data = set_values(data if isinstance(data, dict) else {}, values or {})
    data = apply_overrides(data, overrides or [])
    return resolve_paths(parse_config(data, str(path), prefix, plugins), Path(path).parent)


def to_yaml(model: BaseModel) -> str:
    """Write a config back as YAML (defaults included, so the file documents the run)."""
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)
