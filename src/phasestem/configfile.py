"""Reading YAML configuration files: one loader and one error format for every command.

Errors name the file and the dotted field, e.g. ``run.yaml: model.n_slicez: unknown key``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError, InputFileError

M = TypeVar("M", bound=BaseModel)


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """``yaml.safe_load`` a file whose top level must be a mapping (an empty file gives {})."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (got {type(data).__name__})")
    return data


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Set ``{"section.key": value}`` overrides (from the command line) into a nested dict, in place."""
    for dotted, value in (overrides or {}).items():
        node = data
        *head, last = dotted.split(".")
        for key in head:
            node = node.setdefault(key, {})
        node[last] = value
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming every bad field: ``source: a.b: message; c: message``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown key (see --dump-config for every valid key)")
        elif err["type"] == "missing":
            parts.append(f"{loc}: required field missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg} (got {err.get('input')!r})")
    return f"{source}: " + "; ".join(parts)


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """``model.model_validate(data)`` with errors turned into one ConfigError line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    except ValueError as exc:  # raised inside a validator that is not a pydantic one
        raise ConfigError(f"{source}: {exc}") from None


def load_yaml_config(model: type[M], path: str | Path, overrides: dict[str, Any] | None = None,
                     what: str = "config file") -> M:
    """Read, override and validate a YAML config in one step."""
    return validate(model, apply_overrides(read_yaml_mapping(path, what), overrides), str(path))
