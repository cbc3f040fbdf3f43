"""The calibrate page's parameter form: a reconstruction parameter file as a form of dotted fields
(:func:`params_form`), validated by the YAML's own schema before it is written (:func:`save_params_form`).

Saves of one folder go one at a time, each from its own temporary renamed over the file, so a read sees one whole
save or another; the form names the version of the text it read (:func:`file_version`), and a save against a version
that another save has replaced is refused (409) instead of replacing it.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .runs import flatten
from .security import Refused


def file_version(content: bytes) -> str:
    """The version of a file's content the form names (the first 32 hex digits of its SHA-256)."""
    return hashlib.sha256(content).hexdigest()[:32]


def read_params_file(path: Path) -> tuple[dict[str, Any], str]:
    """(the mapping, the version) of a parameter file, from one read of it: what is parsed and what the version
    names are the same bytes (a save replaces the file whole, by a rename, so a read sees one save or another)."""
    from ..base.configfile import loads_yaml

    content = path.read_bytes()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(f"{path.name}: not a UTF-8 text file, expected a YAML parameter file", 400) from None
    data = loads_yaml(text, path.name)
    if data is not None and not isinstance(data, dict):
        raise Refused(f"{path.name}: the top level must be a mapping of sections (got {type(data).__name__})", 400)
    return data or {}, file_version(content)


def params_form(path: Path) -> dict[str, Any]:
    """A reconstruction parameter file as its form, from one read of it: ``fields`` ({"section.key": YAML text of
    the value}), ``layout`` (:func:`params_layout`) and ``version`` (:func:`file_version`: what a save sends back)."""
    from ..recon.params import parse_params

    data, version = read_params_file(path)
    params = parse_params(data, path.name, path.parent)  # must be valid to be shown; relative paths as written
    defaults = flatten(params.model_dump(mode="json"))
    fields = {**{k: v for k, v in defaults.items() if not k.startswith("tune")}, **flatten(data)}
    fields = {k: yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
              for k, v in fields.items()}
    return {"fields": fields, "layout": params_layout(params, fields), "version": version}


#: the fields users change first, shown on top of the form (in this order, where the file has them)
FIRST_FIELDS = ("data.file", "optics.energy", "optics.semiangle", "optics.aberrations.C10", "scan.step",
                "run.n_epochs", "run.batch_size", "run.device", "model.n_slices", "model.slice_thickness",
                "losses.gaussian", "losses.poisson")


def _descriptions(model, prefix: str = "") -> dict[str, str]:
    """{"section.key": description} of a parameter model's fields (nested models walked)."""
    from pydantic import BaseModel

    out: dict[str, str] = {}
    for name, info in type(model).model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if info.description:
            out[key] = info.description
        value = getattr(model, name, None)
        if isinstance(value, BaseModel):
            out.update(_descriptions(value, key))
    return out


def params_layout(params, fields: dict[str, str]) -> dict[str, Any]:
    """How the form shows ``fields`` (:func:`params_form` of the parameters ``params``): ``first``, the fields users
    change first (:data:`FIRST_FIELDS`, those the form has; ``optics.aberrations`` where it has no C10), then
    ``sections``, every field by its section ({"name", "title", "keys"}, in the file's order), and ``help``, each
    field's description from the schema."""
    help_ = _descriptions(params)
    first = [k for k in FIRST_FIELDS if k in fields]
    if "optics.aberrations.C10" not in fields and "optics.aberrations" in fields:
        first.insert(min(3, len(first)), "optics.aberrations")
    sections: dict[str, list[str]] = {}
    for key in fields:
        sections.setdefault(key.split(".", 1)[0], []).append(key)
    return {"first": first, "help": {k: v for k, v in help_.items() if k in fields or "." not in k},
            "sections": [{"name": name, "title": help_.get(name, name), "keys": keys}
                         for name, keys in sections.items()]}


#: one lock per folder that parameter forms are saved in (its real path): this process's saves there, one at a time.
#: The folder's file lock (:mod:`phasestem.base.lock`) keeps other processes out, but a process that holds it may
#: take it again (nesting), so two requests of the server would both pass it.
_SAVING: dict[str, threading.Lock] = {}
_SAVING_GUARD = threading.Lock()


def _saving(folder: Path) -> threading.Lock:
    with _SAVING_GUARD:
        return _SAVING.setdefault(os.path.realpath(folder), threading.Lock())


def save_params_form(path: Path, values: dict[str, Any], version: str | None = None,
                     check: Callable[[], None] | None = None) -> str:
    """Write the form's ``values`` ({"section.key": YAML text}) over the parameter file at ``path``, after they pass
    the same schema as the YAML (:class:`~phasestem.recon.params.ReconstructParams`) and ``check`` (the server's path
    checks, run on the file as it is then); returns the :func:`file_version` of the text written.

    One save of a folder at a time (:func:`_saving`, and the folder's lock against other processes: a running job's
    folder is refused, 409); each writes its own temporary (:func:`~phasestem.base.safety.unique_temporary_name`)
    renamed over the file, so a read sees one whole save. ``version`` (what :func:`params_form` answered): the save
    is refused (409) when the file is no longer that version — another save came first and would be lost."""
    from ..base.configfile import apply_overrides, parse_set_options
    from ..base.lock import FolderBusyError, hold_output

    if not isinstance(values, dict) or not values:
        raise Refused("values: expected the form's fields", 400)
    with _saving(path.parent):
        try:
            with hold_output(path.parent, "phasestem serve (saving a parameter file)"):
                data, current = read_params_file(path)
                if version is not None and version != current:
                    raise Refused(f"{path.name}: changed since the form was read (another save); reload the form "
                                  "and make the change again", 409)
                if check is not None:
                    check()
                data = apply_overrides(data, parse_set_options([f"{k}={v}" for k, v in values.items()], "field"))
                return _write_params(path, data)
        except FolderBusyError as exc:
            raise Refused(str(exc), 409) from None


def _write_params(path: Path, data: dict[str, Any]) -> str:
    """Validate ``data`` by the YAML's own schema (one line naming each bad field), write it over ``path`` through a
    temporary of this call's own; returns its :func:`file_version`."""
    from ..base.safety import atomic_file, unique_temporary_name
    from ..recon.params import parse_params

    parse_params(data, path.name, path.parent)
    content = yaml.safe_dump(data, sort_keys=False).encode("utf-8")
    with atomic_file(path, temporary=unique_temporary_name) as tmp:
        tmp.write_bytes(content)
    return file_version(content)
