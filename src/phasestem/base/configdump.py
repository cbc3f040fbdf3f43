"""Writing configs: the resolved config as YAML, documented and portable.

Every command's ``--dump-config`` and every copy of a config written into a run folder go through
:func:`config_yaml`: each field is preceded by its description (the pydantic ``Field`` text, as in
docs/config_reference.md) as a YAML comment, and every path (fields marked
:class:`phasestem.base.configfile.ConfigPath`) is absolute, so the text loads to the same config wherever it is saved.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .configfile import absolute_path, map_config_paths

#: characters per comment line
WIDTH = 100


def config_yaml(cfg: BaseModel, title: str | None = None, base: str | Path | None = None) -> str:
    """``cfg`` as commented YAML with absolute paths; ``yaml.safe_load`` of it validates back to ``cfg`` (paths
    absolute). ``title``: the first comment line (e.g. the command). ``base``: the folder the text will be saved
    in, when it is known: paths are then written relative to it (the one rule), so the folder can move."""
    def fn(text: str) -> str:
        return absolute_path(text) if base is None else os.path.relpath(absolute_path(text), absolute_path(str(base)))

    data = map_config_paths(type(cfg), cfg.model_dump(mode="json"), fn)
    where = "absolute" if base is None else "relative to this file's folder"
    lines = [f"# {title}" if title else "# phasestem config",
             f"# Resolved: every field, with its description; paths are {where}. A relative path in a config",
             "# file is taken relative to that file's folder; on the command line, to the working directory.", ""]
    _section(cfg, data, "", lines)
    return "\n".join(lines) + "\n"


def write_config(cfg: BaseModel, path: str | Path, title: str | None = None) -> Path:
    """Write :func:`config_yaml` of ``cfg`` to ``path`` (atomically)."""
    from .safety import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(config_yaml(cfg, title), encoding="utf-8")
    return Path(path)


def _comment(text: str, pad: str) -> list[str]:
    text = " ".join(str(text).split())
    return [f"{pad}# {ln}" for ln in textwrap.wrap(text, max(40, WIDTH - len(pad) - 2))] if text else []


def _dump(value: Any, flow: bool) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=float("inf"), default_flow_style=flow)


def _value(key: str, value: Any, pad: str) -> list[str]:
    """``key: value`` lines; a list or mapping on one line (flow style) when it is short, else as a block."""
    if isinstance(value, dict | list) and value:
        flow = _dump(value, True).strip()
        if "\n" not in flow and len(pad) + len(key) + len(flow) <= WIDTH + 20:
            return [f"{pad}{key}: {flow}"]
    return [pad + ln for ln in _dump({key: value}, False).splitlines()]


def _section(model: BaseModel, data: dict[str, Any], pad: str, lines: list[str]) -> None:
    fields = type(model).model_fields
    for key, value in data.items():
        field = fields.get(key)
        sub = getattr(model, key, None) if field is not None else None
        is_section = isinstance(sub, BaseModel) and isinstance(value, dict) and bool(value)
        if not pad and is_section and lines[-1]:
            lines.append("")
        lines += _comment((field.description or "") if field is not None else "", pad)
        if is_section:
            lines.append(f"{pad}{key}:")
            _section(sub, value, pad + "  ", lines)
        else:
            lines += _value(key, value, pad)
