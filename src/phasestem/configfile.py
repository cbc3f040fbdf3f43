"""Reading YAML configuration files: one loader and one error format for every command.

Errors name the file and the dotted field, e.g. ``run.yaml: model.n_slicez: unknown key``.
"""
from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError, InputFileError

M = TypeVar("M", bound=BaseModel)

#: most values (after expanding YAML aliases) a config may hold: anchors cannot blow up validation time
MAX_VALUES = 100_000


def _count_values(node: Any, source: str) -> int:
    """Values in ``node`` with aliases expanded (ConfigError for a recursive alias or more than MAX_VALUES)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: Any) -> int:
        if not isinstance(n, dict | list):
            return 1
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in active:
            raise ConfigError(f"{source}: a YAML alias refers to itself (recursive anchor)")
        active.add(id(n))
        children = list(n.keys()) + list(n.values()) if isinstance(n, dict) else n
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_VALUES:
                raise ConfigError(f"{source}: more than {MAX_VALUES:,} values once YAML aliases are expanded")
        active.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(node)


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """``yaml.safe_load`` a file whose top level must be a mapping (an empty file gives {})."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError(f"{path}: is a folder, expected a YAML {what}")
    if not path.is_file():
        raise InputFileError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file, expected a YAML {what}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (got {type(data).__name__})")
    _count_values(data, str(path))
    return data


def parse_set_options(items: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """``["a.b=1", "c=[2, 3]"]`` → ``{"a.b": 1, "c": [2, 3]}``; values are plain YAML (tags refused, one line)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or "" in key.split("."):
            raise ConfigError(f"{option} expects KEY=VALUE (dotted key), got {item!r}")
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = (getattr(exc, "problem", None) or str(exc)).splitlines()[0]
            raise ConfigError(f"{option} {key}: not a plain YAML value ({problem}); YAML tags such as "
                              "!!python/... are refused") from None
        _count_values(out[key], f"{option} {key}")
    return out


def get_dotted(tree: Any, dotted: str, default: Any = None) -> Any:
    """The value at ``"section.key"`` in nested mappings, or ``default`` where a part is missing."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Set ``{"section.key": value}`` overrides (from the command line) into a nested dict, in place."""
    for dotted, value in (overrides or {}).items():
        node = data
        *head, last = dotted.split(".")
        for i, key in enumerate(head):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(head[: i + 1])}: is a value, not a section, so {dotted} cannot be set")
        node[last] = value
    return data


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` with line breaks and other control characters escaped, cut to ``limit`` characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _key(part: Any) -> str:
    text = str(part)
    return text if text and text.isprintable() and "." not in text else repr(text)


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming every bad field: ``source: a.b: message; c: message``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(_key(p) for p in err["loc"] if not str(p).startswith("function-")) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown key (see --dump-config for every valid key)")
        elif err["type"] == "missing":
            parts.append(f"{loc}: required field missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg} (got {one_line(repr(err.get('input')), 80)})")
    return one_line(f"{source}: " + "; ".join(parts))


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """``model.model_validate(data)`` with errors turned into one ConfigError line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    except ValueError as exc:  # raised inside a validator that is not a pydantic one
        raise ConfigError(one_line(f"{source}: {exc}")) from None
    except (TypeError, ArithmeticError, LookupError, RecursionError) as exc:  # a validator's bug: still one line
        where = _locate(model, data)
        raise ConfigError(one_line(f"{source}: {where or '(top level)'}: invalid value ({type(exc).__name__}: {exc})")
                          ) from None


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _submodels(arg)]


def _raises_outside_pydantic(model: type[BaseModel], data: Any) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    except Exception:  # noqa: BLE001 - any other exception is what is being located
        return True
    return False


def _locate(model: type[BaseModel], data: Any) -> str | None:
    """Dotted name of the field whose value makes a validator raise something other than a validation error."""
    if not isinstance(data, dict) or _raises_outside_pydantic(model, {}):
        return None
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        for sub in _submodels(field.annotation):
            deeper = _locate(sub, value)
            if deeper:
                return f"{key}.{deeper}"
        if _raises_outside_pydantic(model, {key: value}):
            return key
    return None


def load_yaml_config(model: type[M], path: str | Path, overrides: dict[str, Any] | None = None,
                     what: str = "config file") -> M:
    """Read, override and validate a YAML config in one step."""
    return validate(model, apply_overrides(read_yaml_mapping(path, what), overrides), str(path))
