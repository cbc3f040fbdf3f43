"""Reading PyTorch files safely, for every command: tensors and plain containers only, one-line errors.

:func:`torch_load` is ``torch.load(path, weights_only=True)``, which never runs code from the file; a file
that is empty, truncated, not a torch file or holding other Python objects stops with one
:class:`~phasestem.base.errors.InputFileError` line naming it (never with torch's advice to load it unsafely).
:func:`state_dict_mismatch` says whether loaded tensors fit a module. :func:`torch_save` writes one so that a disk
that fills mid-write is Python's ``OSError`` (torch's own writer reports it as an unrelated ``RuntimeError``).
"""
from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import InputFileError


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def require_nonempty(path: Path, what: str) -> None:
    """Refuse a missing or empty file in one line naming it and ``what`` was expected."""
    if not path.is_file():
        raise InputFileError(f"{path}: file not found (expected a {what})")
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: empty file (expected a {what})")


def torch_load(path: str | Path, map_location: str | torch.device = "cpu", what: str = "PyTorch file") -> Any:
    """``torch.load(path, weights_only=True)`` (tensors and plain containers only, never code) with one-line errors
    naming the file and ``what`` it should have been."""
    path = Path(path)
    require_nonempty(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol 4" notes of the safe unpickler
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputFileError(f"{path}: not a {what}: not a torch file, or it holds Python objects other than "
                             "tensors (phasestem loads tensors only and never unpickles code)") from exc
    except Exception as exc:
        raise InputFileError(f"{path}: not a readable {what}, truncated or corrupted? "
                             f"({type(exc).__name__}: {first_line(exc)})") from exc


class _WriteErrors(io.RawIOBase):
    """A binary file torch writes to that keeps the first ``OSError`` of its writes (torch's C++ writer turns it
    into a ``RuntimeError`` that no longer says what happened)."""

    def __init__(self, fh) -> None:
        super().__init__()
        self.fh, self.error = fh, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


def torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, except that a write that fails (no space left, a file-size limit) raises its
    ``OSError`` (with its errno) instead of torch's ``RuntimeError``."""
    with open(path, "wb") as fh:
        writer = _WriteErrors(fh)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def state_dict_mismatch(own: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> str:
    """'' when ``other`` fits ``own`` (same names and shapes), else a short description of the first differences."""
    shapes = [f"{k}: {tuple(other[k].shape)} vs {tuple(v.shape)} here" for k, v in own.items()
              if k in other and tuple(other[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in other]
    extra = [k for k in other if k not in own]
    parts = []
    for label, items in (("shape", shapes), ("missing", missing), ("unexpected", extra)):
        if items:
            parts.append(f"{len(items)} {label}, e.g. {items[0]}")
    return "; ".join(parts)
