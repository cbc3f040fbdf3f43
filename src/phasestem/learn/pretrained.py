"""Pretrained models shipped with phasestem, by name: ``phasestem predict scan.h5 --model seed-tiny``.

The registry is package data, ``phasestem/data/models/models.json``, one entry per name::

    {"seed-tiny": {"file": "seed-tiny.safetensors", "sha256": "…", "bytes": 1634567,
                   "card": "docs/models/seed-tiny.md", "summary": "…", "geometry": {…}}}

with the weight files beside it (safetensors only: tensors and JSON metadata, nothing executable). A name is
resolved wherever a model is read (:func:`phasestem.learn.trainer.checkpoint.resolve_weights_path`: ``predict``,
``evaluate``, ``embed``, ``refine``, ``load_model``, ``predict_file``) before the value is taken as a path; a
folder of that name is then reached as ``./seed-tiny``. The file's size and sha256 are checked against the registry
every time it is resolved: a truncated or corrupted copy stops with one line naming the file, the expected and
the actual checksum, and how to restore it.

``PHASESTEM_MODEL_DIR`` names another model folder (its own ``models.json`` and weight files) used instead of the
package's: a copy of the models kept elsewhere, or models registered outside the package. Names of :data:`PLANNED`
sizes that this install does not ship (a GPU run of ``benchmarks/learned/train_shipped.py`` produces them) are
refused in one line saying so, unless a path of that name exists. :func:`register_model` adds or replaces an entry
(the training script's last step).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..base.errors import InputFileError

log = logging.getLogger("phasestem.learn")

#: environment variable naming another model folder (registry and weights) used instead of the package's
MODEL_DIR_ENV = "PHASESTEM_MODEL_DIR"
#: the registry file inside the package's model folder
REGISTRY = "models.json"
#: names a training run of ``benchmarks/learned/train_shipped.py`` can add (one per network size)
PLANNED = ("seed-tiny", "seed-small", "seed-base")
#: largest weight file shipped inside the package (bytes)
MAX_SHIPPED_BYTES = 20 * 1024 * 1024


class PretrainedModelError(InputFileError):
    """A shipped model is missing, truncated or corrupted, or a name is not shipped in this install."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_dir() -> Path:
    """The package's model folder (``phasestem/data/models``), where the registry and the shipped weights are."""
    return Path(str(files("phasestem") / "data" / "models"))


def model_dir() -> Path:
    """The model folder in use: ``$PHASESTEM_MODEL_DIR`` when set, else :func:`package_dir`."""
    override = os.environ.get(MODEL_DIR_ENV)
    return Path(override) if override else package_dir()


def registry(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every registered model of ``folder`` (default :func:`model_dir`): name → entry (``{}`` without a registry)."""
    path = (folder or model_dir()) / REGISTRY
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PretrainedModelError(f"{path}: the pretrained-model registry is not readable JSON ({exc}); restore it "
                                   "with `git checkout` or reinstall phasestem") from exc
    return data if isinstance(data, dict) else {}


def names() -> tuple[str, ...]:
    """Names of the models this install ships."""
    return tuple(registry())


def _restore_hint(path: Path) -> str:
    if os.environ.get(MODEL_DIR_ENV):
        return f"copy it again into ${MODEL_DIR_ENV} ({path.parent}) from phasestem's own {package_dir()}"
    return (f"restore it with `git checkout -- src/phasestem/data/models/{path.name}` in a clone, or reinstall "
            "phasestem (`pip install --force-reinstall .`)")


def verify(name: str, entry: dict[str, Any], path: Path) -> Path:
    """``path`` when its size and sha256 are the registry's for ``name``; one-line PretrainedModelError otherwise."""
    if not path.is_file():
        raise PretrainedModelError(f"{path}: pretrained model '{name}' is missing; {_restore_hint(path)}")
    size, want = path.stat().st_size, str(entry.get("sha256", ""))
    got = sha256_file(path)
    if got != want:
        what = f"truncated ({size} of {entry['bytes']} bytes)" if "bytes" in entry and size < int(entry["bytes"]) \
            else "corrupted"
        raise PretrainedModelError(f"{path}: pretrained model '{name}' is {what}: sha256 {got}, expected {want}; "
                                   f"{_restore_hint(path)}")
    return path


def resolve(value: str | os.PathLike) -> Path | None:
    """The verified weight file of a registered name, ``None`` for anything else (a path is then read as one).

    A :data:`PLANNED` name this install does not ship is refused unless a path of that name exists."""
    name = str(value)
    if not name or "/" in name or os.sep in name or Path(name).suffix:  # a path, not a name
        return None
    entries = registry()
    if name in entries:
        entry = entries[name]
        path = verify(name, entry, model_dir() / str(entry["file"]))
        if entry.get("note"):  # what a user choosing the model must know (its card says more)
            log.warning("pretrained model '%s': %s", name, entry["note"])
        return path
    if name in PLANNED and not Path(name).exists():
        shipped = ", ".join(entries) or "none"
        raise PretrainedModelError(f"{name}: pretrained model not shipped in this install (shipped: {shipped}); "
                                   f"`python benchmarks/learned/train_shipped.py --size {name.split('-', 1)[1]}` "
                                   "trains and registers it (a GPU run), or give a model file / run folder")
    return None


def register_model(name: str, weights: Path, card: str, info: dict[str, Any], folder: Path | None = None) -> dict:
    """Add (or replace) ``name`` in the registry of ``folder`` (default :func:`model_dir`) for the weight file
    ``weights`` already in that folder: its size and sha256, the card's repository path and ``info`` (summary,
    geometry, scores). Returns the entry."""
    folder = folder or model_dir()
    weights = Path(weights)
    if weights.parent.resolve() != folder.resolve():
        raise PretrainedModelError(f"{weights}: a registered model must sit in {folder}")
    size = weights.stat().st_size
    if size > MAX_SHIPPED_BYTES:
        raise PretrainedModelError(f"{weights}: {size / 2**20:.1f} MiB is more than the {MAX_SHIPPED_BYTES // 2**20} "
                                   "MiB a model shipped in the package may take")
    entry = {"file": weights.name, "sha256": sha256_file(weights), "bytes": size, "card": card, **info}
    entries = registry(folder)
    entries[name] = entry
    path = folder / REGISTRY
    from ..base.safety import atomic_file

    with atomic_file(path, "registry") as tmp:
        tmp.write_text(json.dumps(dict(sorted(entries.items())), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return entry
