"""The config keys as dangerous as options: every key that names a host, a URL, a database or a path, and the rule
a workspace holds each to: one table, read by the job's options (:func:`option_rule`), its ``set`` values
(:func:`check_set_keys`), every command's config with them and the parameter form (:func:`check_config_keys`).

The table has two parts:

- **derived from the schemas**: every :class:`~phasestem.base.configfile.ConfigPath` field of the command's config
  (data files, globs, structure files, initial objects and probes, checkpoints, weights, run folders), and any key
  whose last part is named like a path (:data:`PATH_NAME`: ``file``, ``files``, ``dir``, ``path``, ``*_file``,
  ``*_dir``, ``*_path``, …, also inside free mappings such as ``data.reader_options``): **confined to the root**;
- **listed** (:data:`KEY_RULES`): keys a schema cannot mark as paths: ``compute.scheduler`` (a host: refused),
  ``tune.storage`` (a database URL: only ``sqlite:///`` files inside the root), ``*.allow_download`` (the network:
  off) and the run folder's keys (``out``, ``out_dir``, ``resume``: set by the job itself).

Confined means: resolved (symbolic links followed, ``~`` expanded) inside the root and not in the server's state
folder. A glob is confined in full (:func:`glob_matches`): no ``..`` after its first wildcard, and every file it
matches now (looked up one folder at a time, at most :data:`MAX_GLOB_MATCHES` matches and
:data:`MAX_GLOB_ENTRIES` folder entries) resolves inside the root. Refusals are 403 naming the file and the key.
"""
from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.configfile import get_dotted, path_fields
from .security import Refused, refuse_state_folder

#: what a workspace does with a key's value
REFUSED = "refused"  #: any value but null is 403
OFF = "off"  #: only false (or null)
SQLITE_IN_ROOT = "sqlite:/// inside the root"  #: a SQLite file URL whose file is confined
SET_BY_JOB = "set by the job"  #: refused among ``set`` values; a file's value is replaced by the job's own
CONFINED = "confined to the root"  #: a path or glob, resolved in full inside the root


@dataclass(frozen=True)
class KeyRule:
    """One listed key: ``key`` dotted (``*.name``: that last part under any section, or at the top), what its value
    names, the rule, the command-line options that set the same value, and why."""

    key: str
    names: str
    rule: str
    options: tuple[str, ...] = ()
    why: str = ""

    def matches(self, dotted: str) -> bool:
        if self.key.startswith("*."):
            return dotted == self.key[2:] or dotted.endswith(self.key[1:])
        return dotted == self.key


#: the keys no schema marks as paths: hosts, URLs, databases, the network and the run folder
KEY_RULES = (
    KeyRule("compute.scheduler", "a host (a Dask scheduler's address)", REFUSED, ("--scheduler",),
            "a job connects to no other machine (a scheduler's answers are unpickled: they run as code)"),
    KeyRule("tune.storage", "a database URL", SQLITE_IN_ROOT, (),
            "the study is written there; only a SQLite file inside the root, e.g. sqlite:///runs/study.db"),
    KeyRule("*.allow_download", "the network (timm / Hugging Face downloads)", OFF, (),
            "a job downloads nothing; put the weights under the root and name them"),
    KeyRule("*.out", "the run folder", SET_BY_JOB, ("--out",), "the job writes into the run folder it made"),
    KeyRule("*.out_dir", "the run folder", SET_BY_JOB, ("--out", "--out-dir"),
            "the job writes into the run folder it made"),
    KeyRule("*.resume", "the run folder", SET_BY_JOB, ("--resume", "--restart"),
            "the run folder and resuming are set by the job itself"),
)
#: a key's last part that names a path, whatever the schema says (``file``, ``files``, ``positions_file``,
#: ``out_dir``, ``weights_path``, ``header_files`` …): its string values are confined to the root
PATH_NAME = re.compile(r"^(?:.*_)?(?:file|files|dir|dirs|path|paths|folder|folders)$")
#: the characters that make a path a glob (:func:`glob.has_magic`)
MAGIC = re.compile(r"[*?\[]")
#: most files a glob may match (it is expanded to be checked)
MAX_GLOB_MATCHES = 10_000
#: most folder entries a glob's expansion may look at
MAX_GLOB_ENTRIES = 200_000
#: longest path a key may hold (characters)
MAX_PATH_CHARS = 4096


def option_rule(option: str) -> KeyRule | None:
    """The listed key a command-line option sets (``--scheduler`` → ``compute.scheduler``), or None."""
    return next((r for r in KEY_RULES if option in r.options), None)


def key_rule(dotted: str) -> KeyRule | None:
    """The listed rule of a dotted key, or None."""
    return next((r for r in KEY_RULES if r.matches(dotted)), None)


def keys_table(schema) -> dict[str, str]:
    """{dotted key: its rule} for a command's config ``schema``: its path fields (derived) and the listed keys."""
    table = {key: CONFINED + (f" (after {m.prefix!r})" if m.prefix else "") for key, m in path_fields(schema).items()}
    table.update({r.key: r.rule for r in KEY_RULES})
    return table


def check_set_keys(overrides: dict[str, Any]) -> None:
    """``set`` values (dotted keys): a key set by the job itself, a refused host and the network are refused
    before any file is read (their paths and URLs: :func:`check_config_keys`)."""
    for key, value in overrides.items():
        rule = key_rule(key)
        if rule is not None and rule.rule == SET_BY_JOB:
            raise Refused(f"set {key!r}: the run folder and resuming are set by the job itself", 403)
        if rule is not None:
            _check_listed(rule, key, value, None, "set")


def check_config_keys(root: Path, schema, data: dict[str, Any], source: str) -> None:
    """Every key of the table in ``data``, a command's raw config (its ``set`` values applied; the paths of its
    :class:`~phasestem.base.configfile.ConfigPath` fields already taken from their base, absolute or not): paths and
    globs confined to ``root``, listed keys by their rule. Refused (403) naming ``source`` and the key."""
    root = Path(root).resolve()
    marked = path_fields(schema)
    for key, marker in marked.items():
        value = get_dotted(data, key)
        if value is not None:
            marker.map(value, lambda text, key=key: _confined(root, text, f"{source}: {key}"))
    for key, value in _items(data):
        rule = key_rule(key)
        if rule is not None and rule.rule != SET_BY_JOB:
            _check_listed(rule, key, value, root, source)
        elif key not in marked and PATH_NAME.match(key.rsplit(".", 1)[-1]):
            for text in _strings(value):
                _confined(root, text, f"{source}: {key}")  # relative: to the job's working directory, the root


def _check_listed(rule: KeyRule, key: str, value: Any, root: Path | None, source: str) -> None:
    what = f"{source}: {key}"
    if value is None or (rule.rule == OFF and value is False):
        return
    if rule.rule in (REFUSED, OFF):
        shown = f" {value!r}"[:80] if isinstance(value, str) else ""
        raise Refused(f"{what}{shown}: names {rule.names}, which a workspace refuses: {rule.why}", 403)
    if rule.rule == SQLITE_IN_ROOT:
        database = sqlite_file(value, what)
        if root is not None:
            _confined(root, database, what)


def sqlite_file(value: Any, what: str) -> str:
    """The file of a ``sqlite:///FILE`` URL (FILE relative to the job's working directory, the root, or absolute:
    ``sqlite:////abs``); any other URL, a query (``?mode=…``, ``?uri=true``) or percent-escapes are refused (403)."""
    text = value if isinstance(value, str) else ""
    database = text.removeprefix("sqlite:///")
    if not text.startswith("sqlite:///") or not database or any(c in database for c in "?#%\x00"):
        shown = repr(text[:80]) if text else f"a {type(value).__name__}"
        raise Refused(f"{what} {shown}: a workspace allows only a SQLite file inside its root as the database "
                      "(sqlite:///runs/study.db: no other URL, no query, no %-escapes)", 403)
    return database


def _confined(root: Path, text: str, what: str) -> str:
    """``text`` (a path or glob, ``~`` not yet expanded; relative: to ``root``) confined to ``root``; a glob in
    full."""
    if "\x00" in text or len(text) > MAX_PATH_CHARS or not _encodable(text):
        raise Refused(f"{what}: not a path (a NUL character, an unencodable character or more than "
                      f"{MAX_PATH_CHARS} characters)", 400)
    text = os.path.join(root, os.path.expanduser(text))  # an absolute path stays as it is
    for path in glob_matches(root, text, what):
        _inside(root, path, text, what)
    return text


def _encodable(text: str) -> bool:
    try:
        os.fsencode(text)
    except UnicodeError:
        return False
    return True


def _inside(root: Path, path: Path, text: str, what: str) -> None:
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):  # a loop of links, a name too long: not a path inside the root
        resolved = None
    if resolved is None or (resolved != root and root not in resolved.parents):
        name = Path(path).name or Path(text).name or text
        raise Refused(f"{what}: the path {name!r} lies outside the workspace root; jobs read and write only under it",
                      403)
    refuse_state_folder(root, resolved, f"{what}: the path {Path(text).name or text!r}")


def glob_matches(root: Path, pattern: str, what: str, limit: int = MAX_GLOB_MATCHES,
                 budget: int = MAX_GLOB_ENTRIES) -> list[Path]:
    """What :func:`glob.glob` finds for the absolute ``pattern`` (not recursive: ``**`` is ``*``), looked up one
    folder at a time, and the folder before its first wildcard, which must lie inside ``root`` (the root's own name
    is no pattern); a path without a wildcard: itself. A ``..`` after the first wildcard is refused (403); more than
    ``limit`` matches or ``budget`` folder entries looked at: 400."""
    parts = Path(pattern).parts
    start = len(root.parts) if Path(pattern).is_relative_to(root) else 0
    first = next((i for i in range(start, len(parts)) if MAGIC.search(parts[i])), None)
    if first is None:
        return [Path(pattern)]
    if ".." in parts[first:]:
        raise Refused(f"{what}: the glob {Path(pattern).name!r} has '..' after a wildcard; a glob stays inside the "
                      "workspace root", 403)
    head = Path(*parts[:first])
    _inside(root, head, str(head), what)
    found, seen = [head], 0
    for k, part in enumerate(parts[first:], start=first):
        last = k == len(parts) - 1
        found, seen = _glob_step(found, part, last, seen, budget, what)
        if len(found) > limit:
            raise Refused(f"{what}: the glob matches more than {limit:,} files; name a narrower pattern", 400)
    return found


def _glob_step(folders: list[Path], part: str, last: bool, seen: int, budget: int, what: str
               ) -> tuple[list[Path], int]:
    """The paths matching one component ``part`` inside each of ``folders`` (folders only unless ``last``)."""
    out: list[Path] = []
    for folder in folders:
        if not MAGIC.search(part):
            path = folder / part
            if os.path.lexists(path) if last else path.is_dir():
                out.append(path)
            continue
        try:
            entries = list(os.scandir(folder))
        except (OSError, ValueError):
            continue
        seen += len(entries)
        if seen > budget:
            raise Refused(f"{what}: the glob looks at more than {budget:,} folder entries; name a narrower pattern",
                          400)
        for entry in entries:
            if entry.name.startswith(".") and not part.startswith("."):
                continue
            if fnmatch.fnmatchcase(entry.name, part) and (last or _is_dir(entry)):
                out.append(Path(entry.path))
    return out, seen


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _items(data: Any, limit: int = 200_000) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every key at every depth of nested mappings (without recursion, bounded)."""
    stack = [("", data)]
    count = 0
    while stack:
        prefix, node = stack.pop()
        if not isinstance(node, dict):
            continue
        for name, value in node.items():
            count += 1
            if count > limit:
                raise Refused(f"config: more than {limit:,} keys", 400)
            key = f"{prefix}{name}"
            yield key, value
            stack.append((key + ".", value))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []
