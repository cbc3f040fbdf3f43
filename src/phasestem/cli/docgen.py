"""Generate the configuration reference (docs/config_reference.md) from the pydantic schemas.

``python -m phasestem.cli.docgen [OUT.md]`` writes it; a test keeps the committed page current and
fails when a field has no description.
"""
from __future__ import annotations

import importlib
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from ..base.configfile import path_marker

#: (title, "module:Class") of every schema a user writes as YAML
SCHEMAS = [
    ("phasestem simulate", "phasestem.simulate.config:SimulationConfig"),
    ("phasestem reconstruct / tune", "phasestem.recon.params:ReconstructParams"),
    ("phasestem train patch | stitch | end2end", "phasestem.learn.config:TrainRunConfig"),
    ("phasestem train autoencoder", "phasestem.learn.config:AutoencoderRunConfig"),
    ("phasestem train phaseformer", "phasestem.learn.config:PhaseformerRunConfig"),
    ("phasestem train restorer", "phasestem.learn.config:RestorerRunConfig"),
    ("phasestem make-pairs", "phasestem.learn.config:MakePairsConfig"),
    ("phasestem demo (built-in settings)", "phasestem.cli.demo:DemoConfig"),
    ("phasestem plan", "phasestem.plan.config:PlanConfig"),
]


def load_schema(target: str) -> type[BaseModel]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _submodels(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out = []
    for arg in typing.get_args(annotation):
        out += _submodels(arg)
    return out


#: how a bound of an ``Annotated`` number reads (annotated_types' Ge, Gt, Le, Lt)
_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _type_text(annotation) -> str:
    """A field's type as a reader writes it: ``int ≥ 0 | Literal['auto']`` rather than its repr."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        items = [item for m in meta for item in getattr(m, "metadata", [m])]  # pydantic's FieldInfo holds them
        bounds = [f"{sign} {getattr(item, k)}" for item in items for k, sign in _BOUNDS.items()
                  if getattr(item, k, None) is not None]
        return " ".join([_type_text(base), ", ".join(bounds)]) if bounds else _type_text(base)
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        return " | ".join(_type_text(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


def _type_name(annotation) -> str:
    return _type_text(annotation).replace("|", "\\|")


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`".replace("|", "\\|")


def missing_descriptions(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of fields (recursively) that have no description."""
    out = []
    for name, field in model.model_fields.items():
        if not (field.description or "").strip():
            out.append(prefix + name)
        for sub in _submodels(field.annotation):
            out += missing_descriptions(sub, f"{prefix}{name}.")
    return out


def _section(model: type[BaseModel], prefix: str, lines: list[str], seen: set) -> None:
    lines += ["", f"#### `{prefix or '(top level)'}`", ""]
    first_paragraph = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
    if first_paragraph and prefix:
        lines += [first_paragraph, ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    nested = []
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("\n", " ").replace("|", "\\|")
        if path_marker(field) is not None:
            desc += " *(path: relative to this file's folder)*"
        lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        for sub in _submodels(field.annotation):
            nested.append((sub, f"{prefix}.{name}" if prefix else name))
    for sub, p in nested:
        if (sub, p) not in seen:
            seen.add((sub, p))
            _section(sub, p, lines, seen)


def config_reference() -> str:
    lines = ["# Configuration reference", "",
             "Generated from the pydantic schemas by `python -m phasestem.cli.docgen docs/config_reference.md`; "
             "do not edit by hand. Every command also writes its fully resolved config with `--dump-config` (each "
             "field's description as a comment, paths absolute). A relative path in a config file is relative to "
             "that file's folder (fields marked *path*); see [cli.md](cli.md)."]
    for title, target in SCHEMAS:
        model = load_schema(target)
        lines += ["", f"## {title}", "", f"Schema `{target.replace(':', '.')}`."]
        _section(model, "", lines, set())
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = config_reference()
    if argv:
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
