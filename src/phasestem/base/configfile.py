"""Reading YAML and JSON text: one bounded loader and one error format for every command.

Errors name the file and the dotted field, e.g. ``run.yaml: model.n_slicez: unknown key``.

:func:`loads_yaml` and :func:`loads_json` are the only parsers of user text (configs, ``--set`` and
``--reader-option`` values, JSON metadata in model and data files): nesting deeper than :data:`MAX_DEPTH`
is refused before the text is turned into objects (PyYAML's composer and the code that walks the result
recurse once per level), and YAML aliases may not expand to more than :data:`MAX_VALUES` values.

The one rule for paths inside a config: a relative path written in a YAML file is relative to **that file's
folder** (fields marked :class:`ConfigPath`, resolved by :func:`resolve_config_paths` before validation); a path
given on the command line (``--out``, ``--set KEY=VALUE``) is relative to the working directory.
"""
from __future__ import annotations

import functools
import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import ConfigError, InputFileError
from .safety import check_readable

M = TypeVar("M", bound=BaseModel)


#: the words YAML 1.1 reads as booleans, and a quoted one, as the switch each means
SWITCH_WORDS = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


def switch_words(annotation: Any) -> frozenset[str] | None:
    """The words 'off' and 'on' among the values of ``annotation`` (a ``Literal``, also inside an Optional, a union
    or ``Annotated``); None where a boolean is itself allowed (``bool | Literal['auto']``: a boolean stays one)."""
    origin = typing.get_origin(annotation)
    if annotation is bool or (origin is Literal and any(isinstance(v, bool) for v in typing.get_args(annotation))):
        return None
    if origin is Literal:
        return frozenset(v for v in typing.get_args(annotation) if v in ("off", "on"))
    if origin in (Union, types.UnionType, Annotated):
        args = typing.get_args(annotation)[:1] if origin is Annotated else typing.get_args(annotation)
        words = [switch_words(a) for a in args]
        return None if None in words else frozenset().union(*words)
    return frozenset()


@functools.cache
def _switch_fields(model: type[BaseModel]) -> dict[str, frozenset[str]]:
    """Key (name and alias) → the switch words of every field of ``model`` that takes 'off' or 'on' and no boolean."""
    fields: dict[str, frozenset[str]] = {}
    for name, info in model.model_fields.items():
        words = switch_words(info.annotation)
        if words:
            fields.update({key: words for key in {name, info.alias} if key})
    return fields


def switch_value(value: Any, words: frozenset[str]) -> Any:
    """``value`` as the word it means where ``words`` (a field's 'off'/'on') takes it: YAML's ``off``, ``no`` and
    ``false`` (booleans) → 'off', ``on``/``yes``/``true`` → 'on', likewise quoted; anything else unchanged."""
    switch = SWITCH_WORDS.get(value.strip().lower()) if isinstance(value, str) else value
    if isinstance(switch, bool) and ("on" if switch else "off") in words:
        return "on" if switch else "off"
    return value


class StrictModel(BaseModel):
    """The base of every configuration section: an unknown key is an error naming it (``extra="forbid"``); a field
    whose allowed words include 'off' or 'on' takes them as YAML writes them (:func:`switch_value`)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _switch_words_as_written(cls, data: Any) -> Any:
        """YAML reads ``off``/``on``/``yes``/``no`` as booleans: turn them back into the word a field takes."""
        fields = _switch_fields(cls)
        if not fields or not isinstance(data, dict):
            return data
        changed = {key: switch_value(data[key], fields[key]) for key in fields.keys() & data.keys()}
        changed = {k: v for k, v in changed.items() if v is not data[k]}
        return {**data, **changed} if changed else data


class CheckedModel(StrictModel):
    """:class:`StrictModel` that also validates every assignment and refuses NaN/Inf (``simulate``, ``plan``)."""

    model_config = ConfigDict(validate_assignment=True, allow_inf_nan=False)


class FiniteModel(StrictModel):
    """:class:`StrictModel` whose numbers must be finite: ``.inf`` or ``.nan`` in any float field is refused at load,
    naming the key (``reconstruct``'s parameter file, where no field means anything by them)."""

    model_config = ConfigDict(allow_inf_nan=False)


def number_pair(value: Any, name: str, positive: bool = False, cast: type = float) -> tuple | None:
    """One number or two (y, x) as a pair of ``cast`` (None stays None): the one reader of such a value (a parameter
    file's field, a data file's calibration, a detector's). Anything else, or with ``positive`` a value ≤ 0, is one
    :class:`~phasestem.base.errors.ConfigError` line naming ``name`` (a ValueError, so a pydantic validator's
    error too)."""
    if value is None:
        return None
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
        got = f"{arr.size} values"
    except (TypeError, ValueError):
        arr, got = np.zeros(0), repr(value)
    if arr.size not in (1, 2):
        raise ConfigError(f"{name} must be one number or two (y, x), got {got}")
    if positive and arr.min() <= 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return (cast(arr[0]), cast(arr[-1]))


#: most values (after expanding YAML aliases) a config may hold: anchors cannot blow up validation time
MAX_VALUES = 100_000
#: deepest nesting of lists/mappings a YAML or JSON text may have (the shipped configs use 4)
MAX_DEPTH = 100

_YAML_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_YAML_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _too_deep(source: str) -> ConfigError:
    return ConfigError(f"{source}: nested more than {MAX_DEPTH} levels deep (lists/mappings inside each other); "
                       "expected a plain configuration")


def check_yaml_depth(text: str, source: str) -> None:
    """Refuse YAML nested deeper than :data:`MAX_DEPTH`, from the parser's events (no objects are built; the
    event parser keeps its own stack, so any depth is read without recursion). Syntax errors are left to the
    loader, which reports them."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, _YAML_OPEN):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _too_deep(source)
            elif isinstance(event, _YAML_CLOSE):
                depth -= 1
    except yaml.YAMLError:
        return


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def check_json_depth(text: str, source: str) -> None:
    """Refuse JSON nested deeper than :data:`MAX_DEPTH` (brackets outside strings, counted without parsing)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    code = np.frombuffer(_JSON_STRING.sub('""', text).encode("utf-8", "replace"), np.uint8)
    step = np.isin(code, (ord("["), ord("{"))).astype(np.int64) - np.isin(code, (ord("]"), ord("}")))
    if step.size and int(np.cumsum(step).max()) > MAX_DEPTH:
        raise _too_deep(source)


def loads_yaml(text: str, source: str, value: bool = False) -> Any:
    """``yaml.safe_load(text)`` after the depth check, aliases checked by :func:`count_values`. A syntax error
    or a tag is one :class:`ConfigError` line naming ``source`` (with the line and column of a file;
    ``value=True``: a command-line value, said to be not plain YAML)."""
    check_yaml_depth(text, source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = (getattr(exc, "problem", None) or str(exc)).splitlines()[0]
        if value:
            raise ConfigError(one_line(f"{source}: not a plain YAML value ({problem}); YAML tags such as "
                                       "!!python/... are refused")) from None
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(one_line(f"{source}: malformed YAML{where}: {problem}")) from None
    count_values(data, source)
    return data


def loads_json(text: str | bytes, source: str) -> Any:
    """``json.loads(text)`` after the depth check; malformed JSON is one :class:`ConfigError` line naming
    ``source``."""
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8", "replace")
    check_json_depth(text, source)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(one_line(f"{source}: malformed JSON ({exc})")) from None


def count_values(node: Any, source: str) -> int:
    """Values in ``node`` with aliases expanded; :class:`ConfigError` for a recursive alias, more than
    :data:`MAX_VALUES` values, or nesting deeper than :data:`MAX_DEPTH` (aliases can nest without the text
    doing so: ``a1: &a1 [*a0]``, ``a2: &a2 [*a1]``, …)."""
    sizes: dict[int, tuple[int, int]] = {}  # id → (values, height)
    active: set[int] = set()

    def size(n: Any, depth: int) -> tuple[int, int]:
        if not isinstance(n, dict | list):
            return 1, 0
        if depth > MAX_DEPTH:
            raise _too_deep(source)
        if id(n) in sizes:
            total, height = sizes[id(n)]
            if depth + height > MAX_DEPTH:
                raise _too_deep(source)
            return total, height
        if id(n) in active:
            raise ConfigError(f"{source}: a YAML alias refers to itself (recursive anchor)")
        active.add(id(n))
        children = list(n.keys()) + list(n.values()) if isinstance(n, dict) else n
        total, height = 1, 0
        for child in children:
            t, h = size(child, depth + 1)
            total, height = total + t, max(height, h + 1)
            if total > MAX_VALUES:
                raise ConfigError(f"{source}: more than {MAX_VALUES:,} values once YAML aliases are expanded")
        active.discard(id(n))
        sizes[id(n)] = (total, height)
        return total, height

    return size(node, 1)[0]


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """``yaml.safe_load`` a file whose top level must be a mapping (an empty file gives {})."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError(f"{path}: is a folder, expected a YAML {what}")
    if not path.is_file():
        if path.is_symlink():  # say why: a loop of links, or a link to nothing
            check_readable(path, f"YAML {what}")
        raise InputFileError(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file, expected a YAML {what}") from None
    data = loads_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (got {type(data).__name__})")
    return data


def parse_set_options(items: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """``["a.b=1", "c=[2, 3]"]`` → ``{"a.b": 1, "c": [2, 3]}``; values are plain YAML (tags refused, one line)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or "" in key.split("."):
            raise ConfigError(f"{option} expects KEY=VALUE (dotted key), got {item!r}")
        out[key] = loads_yaml(text, f"{option} {key}", value=True)
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


def path_fields(model: type[BaseModel], prefix: str = "") -> dict[str, ConfigPath]:
    """{dotted key: its :class:`ConfigPath`} of every path field of ``model``, sections walked as
    :func:`map_config_paths` walks them."""
    out: dict[str, ConfigPath] = {}
    for name, field in model.model_fields.items():
        marker = path_marker(field)
        subs = _submodels(field.annotation)
        if marker is not None:
            out[prefix + name] = marker
        elif subs:
            out.update(path_fields(subs[0], f"{prefix}{name}."))
    return out


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
