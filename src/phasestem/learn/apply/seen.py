"""Whether a sample was among a model's training data: a score on it says how well the model fits what it saw,
not how it generalises (``phasestem predict --sample N`` on a training file)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("phasestem.learn")


def split_of(meta: dict[str, Any], path: str | Path, sample: int) -> tuple[str, list[int]] | None:
    """(``train``, ``val`` or ``test``; the test samples of that file) for sample ``sample`` of ``path`` in the
    split a model records (its training files, ``max_samples``, fractions and seed:
    :func:`phasestem.learn.data.files.recorded_index`, as ``phasestem evaluate`` rebuilds it); None where the model
    records none, ``path`` is not one of its files, or they cannot be read any more."""
    from ..data.files import recorded_index

    d = meta.get("data") or {}
    g = d.get("geometry") or {}
    if not d.get("files") or "split_seed" not in d or not g:
        return None
    try:
        stored = recorded_index(meta)
        splits = stored.split_positions(d["val_fraction"], d["test_fraction"], d["split_seed"])
    except Exception as exc:  # noqa: BLE001  (a note only: files moved, another geometry …)
        log.debug("the model's split cannot be rebuilt: %s", exc)
        return None
    target = os.path.realpath(path)
    mine = {k for k, fi in enumerate(stored.files) if os.path.realpath(fi.path) == target}
    role = {p: name for name, positions in splits.items() for p in positions}
    found = [role[p] for p, (k, i) in enumerate(stored.entries) if k in mine and i == int(sample)]
    if not found:
        return None
    tests = [stored.entries[p][1] for p in splits["test"] if stored.entries[p][0] in mine]
    return found[0], tests


def note_seen(meta: dict[str, Any], path: str | Path, sample: int | None) -> str | None:
    """The warning (also logged) when ``sample`` of ``path`` was in the model's training (or validation) set."""
    if sample is None:
        return None
    found = split_of(meta, path, sample)
    if found is None or found[0] == "test":
        return None
    role, tests = found
    what = "training" if role == "train" else "validation"
    held = (f"its test samples of this file: {', '.join(map(str, tests[:8]))}{' …' if len(tests) > 8 else ''}"
            if tests else "it holds no test sample of this file")
    message = (f"{path}: sample {sample} was in the model's {what} set: the prediction shows how well the model fits "
               f"data it saw, not how it generalises ({held})")
    log.warning(message)
    return message
