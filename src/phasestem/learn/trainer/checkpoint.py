"""Weight files and checkpoint folders of the one trainer: safetensors/torch weights with the ``phasestem``
metadata (:mod:`.meta`), atomic folder commits with a sha256 manifest, verification, small CSV/JSON writers."""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ...base.configfile import loads_json
from ...base.errors import ConfigError, InputFileError
from ...base.extras import require
from ...base.safety import atomic_file, remove_stale_temporaries, temporary_name
from ...base.torch_files import first_line, require_nonempty, state_dict_mismatch, torch_load  # noqa: F401 (re-exported to the trainer)
from ..pretrained import resolve, sha256_file

log = logging.getLogger("phasestem.learn")

MANIFEST = "checkpoint.json"  # step, epoch and the sha256 of every file of a checkpoint folder
# meta entries a resumed run must share with its checkpoint (network and data geometry), dotted keys
RESUME_MUST_MATCH = ("model", "network", "data.geometry", "data.target", "data.pattern_shape", "data.preprocess",
                     "pattern_shape", "preprocess")


class CheckpointError(InputFileError):
    """A checkpoint is torn, corrupted or does not fit the run that resumes from it."""


def save_weights(
    state_dict: Mapping[str, torch.Tensor], path: str | Path, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write a state_dict atomically as safetensors (``.safetensors``) or torch (``.pt``), with ``meta``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta_json = json.dumps(meta or {}, default=str)
    with atomic_file(path, field="weights") as tmp:
        if path.suffix == ".safetensors":
            save_file = require("safetensors.torch", f"writing {path.name}").save_file
            save_file(tensors, str(tmp), metadata={"phasestem": meta_json})
        else:
            torch.save({"state_dict": tensors, "meta": meta_json}, tmp)
    return path


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read ``(state_dict, meta)`` from a file written by :func:`save_weights` (or a plain state_dict file).

    ``path`` may also be a run folder (``best/`` then ``last/`` are tried) or a checkpoint folder.
    An empty, truncated or foreign file raises :class:`~phasestem.base.errors.InputFileError` naming it.
    """
    path = resolve_weights_path(path)
    if path.suffix == ".safetensors":
        state, meta = read_safetensors(path, map_location)
        check_finite_weights(state, path)
        return state, meta
    obj = torch_load(path, map_location, "PyTorch weights file")
    meta: Any = "{}"
    if isinstance(obj, dict) and "state_dict" in obj:
        obj, meta = obj["state_dict"], obj.get("meta", "{}")
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputFileError(f"{path}: expected a state_dict (names → tensors), found {type(obj).__name__}")
    check_finite_weights(obj, path)
    return dict(obj), _parse_meta(meta, path)


def check_finite_weights(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights holding NaN or ±Inf (a diverged training: every prediction would be NaN) in one line naming
    the file, how many tensors and the first one."""
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        first = state[bad[0]]
        n = int((~torch.isfinite(first)).sum())
        raise InputFileError(f"{path}: {len(bad)} of {len(state)} weight tensors hold NaN or Inf (first: '{bad[0]}', "
                             f"{n} of {first.numel()} values); expected finite weights (a diverged training? use an "
                             "earlier checkpoint)")


def _parse_meta(meta: Any, path: Path) -> dict:
    """The ``phasestem`` metadata of a file as a dict in the current schema (older layouts converted)."""
    from ..meta import normalize_meta

    if isinstance(meta, Mapping):
        return normalize_meta(dict(meta))
    if not isinstance(meta, str | bytes):
        raise InputFileError(f"{path}: its 'phasestem' metadata is not JSON text (found {type(meta).__name__})")
    try:
        out = loads_json(meta, f"{path}: its 'phasestem' metadata")
    except ConfigError as exc:
        raise InputFileError(str(exc)) from None
    if not isinstance(out, dict):
        raise InputFileError(f"{path}: its 'phasestem' metadata is not a JSON object")
    return normalize_meta(out)


def read_safetensors(path: str | Path, map_location: str | torch.device = "cpu", tensors: bool = True
                     ) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, phasestem meta)`` of a safetensors file (``tensors=False``: the header only, ``{}`` for the
    tensors); an empty/truncated one raises InputFileError."""
    path = Path(path)
    safe_open = require("safetensors", f"reading {path.name}").safe_open
    require_nonempty(path, "safetensors weights file")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            raw = (f.metadata() or {}).get("phasestem", "{}")
            out = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118 (no __iter__)
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError)
        raise InputFileError(f"{path}: not a readable safetensors file, truncated or corrupted? "
                             f"({first_line(exc)})") from exc
    return out, _parse_meta(raw, path)


def read_meta(path: str | Path) -> dict:
    """The ``phasestem`` metadata of a model file, checkpoint folder or run folder (as :func:`load_weights` finds
    it), without reading a safetensors file's tensors (a ``.pt`` file is one object and is read whole)."""
    path = resolve_weights_path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path, tensors=False)[1]
    return load_weights(path)[1]


def resolve_weights_path(path: str | Path) -> Path:
    """A model file from a pretrained model's name (:mod:`.pretrained`: ``seed-tiny``, checksum verified), a file, a
    checkpoint folder (``model.*``) or a run folder (``best/``, ``last/``)."""
    shipped = resolve(path)
    if shipped is not None:
        return shipped
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for sub in ("", "best", "last"):
            for name in ("model.safetensors", "model.pt"):
                cand = path / sub / name
                if cand.is_file():
                    return cand
    raise InputFileError(
        f"{path}: no model weights found (expected a .safetensors/.pt file, or a folder holding "
        "model.safetensors, best/model.safetensors or last/model.safetensors)"
    )


#: a value absent from a checkpoint's state (told apart from a stored None)
MISSING = object()
_STATE_KEYS = ("epoch", "batch_in_epoch", "global_step", "best", "best_epoch", "bad_epochs", "history", "optimizer",
               "scheduler", "scaler", "rng")


def check_state(path: Path, state: Any) -> None:
    """Refuse, naming ``path``, a trainer state that lacks any of the keys a resume reads."""
    missing = [k for k in _STATE_KEYS if not isinstance(state, Mapping) or k not in state]
    if missing or not isinstance(state["scheduler"], Mapping) or "last_epoch" not in state["scheduler"]:
        raise CheckpointError(f"{path}: not a phasestem trainer state (missing {', '.join(missing) or 'scheduler'})")


def first_difference(key: str, old: Any, new: Any) -> tuple[str, Any, Any]:
    """The first dotted key below ``key`` where two JSON values differ, with both values there."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*old, *(k for k in new if k not in old)]:
            a, b = old.get(k, MISSING), new.get(k, MISSING)
            if a != b:
                if a is MISSING or b is MISSING:
                    return f"{key}.{k}", "absent" if a is MISSING else a, "absent" if b is MISSING else b
                return first_difference(f"{key}.{k}", a, b)
    return key, old, new


def jsonable(value: Any) -> Any:
    """``value`` as JSON would read it back (anything JSON cannot hold as its string)."""
    return json.loads(json.dumps(value, default=str))


def short(value: Any, limit: int = 120) -> str:
    """``value`` as JSON text of at most ``limit`` characters, for a message."""
    text = json.dumps(jsonable(value)) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "…"


def step_of(row: Mapping[str, str]) -> float:
    """The global step of a metrics CSV row (0 where it has none or it is not a number)."""
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


def _fsync(path: Path) -> None:
    """Flush a file (or, on POSIX, a folder's entries) to disk; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_folder(folder: str | Path, write: Callable[[Path], Iterable[str]]) -> Path:
    """Replace ``folder`` by what ``write(tmp)`` puts in a fresh ``<folder>.<pid>.tmp``, as one unit.

    The new folder is complete and on disk before it is renamed into place; the old one is moved
    to ``<folder>.prev`` first and removed after. A kill at any point leaves either the old or the
    new folder complete (``<folder>.prev`` when it struck between the two renames; resume finds it).
    The caller holds the run folder's lock (:meth:`Trainer.fit`), so temporaries that killed runs left
    (``<folder>.<pid>.tmp``) are removed here; this call's own is removed when ``write`` fails.
    """
    folder = Path(folder)
    tmp, prev = temporary_name(folder), folder.with_name(folder.name + ".prev")
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder.parent, [folder.name])
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name in write(tmp):
            _fsync(tmp / name)
        _fsync(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        if prev.exists():
            shutil.rmtree(prev)
        os.replace(folder, prev)
    os.replace(tmp, folder)
    _fsync(folder.parent)
    if prev.exists():
        shutil.rmtree(prev, ignore_errors=True)
    return folder


def checkpoint_folder(folder: str | Path) -> Path | None:
    """``folder``, or ``<folder>.prev`` when a kill struck between the two renames of :func:`commit_folder`."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    prev = folder.with_name(folder.name + ".prev")
    if (prev / "trainer_state.pt").is_file():
        log.warning("%s is missing; resuming from the complete previous checkpoint %s", folder, prev)
        return prev
    return None


def verify_checkpoint(folder: str | Path) -> dict | None:
    """Check every file of a checkpoint against its manifest; the manifest, or None for an older checkpoint."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        log.warning("%s has no %s (written by an older phasestem): cannot verify that it is complete", folder,
                    MANIFEST)
        return None
    try:
        manifest = loads_json(path.read_text(errors="replace"), str(path))
        files = dict(manifest["files"])
        int(manifest["global_step"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / MANIFEST}: unreadable checkpoint manifest ({first_line(exc)})") from exc
    for name, digest in files.items():
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: incomplete checkpoint: {name} is missing (listed in {MANIFEST}, step "
                                  f"{manifest['global_step']}); resume from an intact copy or start a new out_dir")
        if sha256_file(folder / name) != digest:
            raise CheckpointError(f"{folder}: torn or corrupted checkpoint: {name} does not match the sha256 in "
                                  f"{MANIFEST} (step {manifest['global_step']}); resume from an intact copy or "
                                  "start a new out_dir")
    return manifest


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_file(path, field="json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str))


def write_csv(path: Path, rows: list[dict[str, float]], fields: list[str] | None = None) -> None:
    """Write ``rows`` atomically; columns ``fields`` first (in their order), then any others the rows have."""
    keys: list[str] = list(fields or [])
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with atomic_file(path, field="csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
