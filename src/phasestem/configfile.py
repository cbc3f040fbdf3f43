"""Reading YAML configuration files: one loader and one error format for every command.

Errors name the file and the dotted field, e.g. ``run.yaml: model.n_slicez: unknown key``.

The one rule for paths inside a config: a relative path written in a YAML file is relative to **that file's
folder** (fields marked :class:`ConfigPath`, resolved by :func:`resolve_config_paths` before validation); a path
given on the command line (``--out``, ``--set KEY=VALUE``) is relative to the working directory.
"""
from __future__ import annotations

import os
import typing
from collections.abc import Callable, Mapping
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


class ConfigPath:
    """Marks a config field that holds a path, a list of paths or globs, or None: ``Annotated[str, ConfigPath()]``.

    ``keep``: values that are names rather than paths (e.g. ``"auto"``); ``prefix``: only what follows it is a
    path (``"stitch:"`` in ``"stitch:runs/e2e"``), values without it are left alone."""

    def __init__(self, keep: tuple[str, ...] = (), prefix: str = "") -> None:
        self.keep, self.prefix = tuple(keep), prefix

    def __repr__(self) -> str:
        return f"ConfigPath(keep={self.keep!r}, prefix={self.prefix!r})"

    def map(self, value: Any, fn: Callable[[str], str]) -> Any:
        """``value`` with ``fn`` applied to each path in it (other types are left for validation to judge)."""
        if isinstance(value, list):
            return [self._one(v, fn) for v in value]
        return self._one(value, fn)

    def _one(self, value: Any, fn: Callable[[str], str]) -> Any:
        if not isinstance(value, str | os.PathLike):
            return value
        text = os.fspath(value)
        if not isinstance(text, str) or not text or text in self.keep:
            return value
        if not self.prefix:
            return fn(text)
        if not text.startswith(self.prefix) or text == self.prefix:
            return value
        return self.prefix + fn(text[len(self.prefix):])


def path_marker(field: Any) -> ConfigPath | None:
    """The :class:`ConfigPath` of a pydantic field, or None."""
    return next((m for m in field.metadata if isinstance(m, ConfigPath)), None)


def map_config_paths(model: type[BaseModel], data: Any, fn: Callable[[str], str], defaults: bool = False) -> Any:
    """A copy of the raw mapping ``data`` (a config of ``model``, sections nested) with ``fn`` applied to every
    path of a :class:`ConfigPath` field; anything that is not where the schema expects it is left as it is.
    ``defaults``: a path field left out takes its default through ``fn`` too (a default path is relative to the
    config file as well), in sections left out included."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, field in model.model_fields.items():
        marker = path_marker(field)
        if name not in out:
            default = _default(field) if defaults else None
            if marker is not None and default:
                out[name] = marker.map(default, fn)
            elif marker is None and isinstance(default, BaseModel):
                section = map_config_paths(type(default), {}, fn, defaults)
                if section:
                    out[name] = section
            continue
        if marker is not None:
            out[name] = marker.map(out[name], fn)
            continue
        subs = _submodels(field.annotation)
        if subs:
            out[name] = map_config_paths(subs[0], out[name], fn, defaults)
    return out


def _default(field: Any) -> Any:
    if field.is_required():
        return None
    try:
        return field.get_default(call_default_factory=True)
    except TypeError:  # a factory that needs the other fields' values: not a path default
        return None


def relative_to(base: str | Path) -> Callable[[str], str]:
    """``fn`` for :func:`map_config_paths`: a relative path (``~`` expanded) taken from the folder ``base``."""
    def fn(text: str) -> str:
        text = os.path.expanduser(text)
        return text if os.path.isabs(text) else os.path.join(os.fspath(base), text)
    return fn


def absolute_path(text: str) -> str:
    """``fn`` for :func:`map_config_paths`: the path made absolute (from the working directory), normalised."""
    return os.path.abspath(os.path.expanduser(text))


def resolve_config_paths(model: type[BaseModel], data: dict[str, Any], base_dir: str | Path | None
                         ) -> dict[str, Any]:
    """The raw mapping read from a YAML file with its relative paths taken from ``base_dir``, that file's folder
    (the one rule); ``base_dir`` None (no file: built-in defaults): unchanged."""
    if base_dir is None:
        return data
    return map_config_paths(model, data, relative_to(base_dir), defaults=True)


def load_yaml_config(model: type[M], path: str | Path, overrides: dict[str, Any] | None = None,
                     what: str = "config file") -> M:
    """Read, resolve the file's relative paths (against its folder), override (command-line values, relative to
    the working directory) and validate a YAML config in one step."""
    data = resolve_config_paths(model, read_yaml_mapping(path, what), Path(path).parent)
    return validate(model, apply_overrides(data, overrides), str(path))
