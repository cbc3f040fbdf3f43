"""JSON as ``phasestem serve`` reads it from run folders and writes it in its answers: NaN and ±Infinity are null.

Python's ``json`` reads and writes ``NaN`` and ``Infinity``, which are not JSON: a browser's ``JSON.parse`` refuses
them, and Starlette's answers refuse to write them (a 500). A run's ``calibration.json``, its metrics or a loss that
diverged may hold them; every answer and push payload goes through :func:`dumps`, every JSON file of a run folder
through :func:`load_file`.
"""
from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite number replaced by None (mappings, lists and tuples walked; numpy scalars
    as Python numbers)."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def dumps(value: Any) -> str:
    """``value`` as JSON text (compact, UTF-8 kept), non-finite numbers as null (:func:`finite`)."""
    return json.dumps(finite(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """JSON text as Python values, ``NaN``, ``Infinity`` and ``-Infinity`` read as None."""
    return json.loads(text, parse_constant=lambda _name: None)


def load_file(path: Path) -> Any | None:
    """A JSON file of a run folder (:func:`loads`); None where it cannot be read or is not JSON (a run still writing
    it, a file someone replaced): the page then shows the run without it."""
    try:
        return loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
