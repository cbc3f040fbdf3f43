"""User-facing errors: one class so the CLI can print them as one actionable line."""
from __future__ import annotations


class PhasestemError(Exception):
    """An error in the user's input (file, key, field or value) with what was expected."""


class InputFileError(PhasestemError, FileNotFoundError):
    """A file is missing or unreadable, or lacks a key."""


class ConfigError(PhasestemError, ValueError):
    """A configuration field is missing, unknown or out of range."""


class ShapeError(PhasestemError, ValueError):
    """An array has a shape that does not match what it must fit."""


class MissingCalibrationError(ConfigError):
    """A calibration (energy, scan step, …) that neither the file nor the caller gives; ``name`` is the reader
    option's name (``energy``, ``scan_step``), so that a caller can name its own field instead."""

    def __init__(self, message: str, name: str = ""):
        super().__init__(message)
        self.name = name


class DiskFullError(PhasestemError, OSError):
    """A write found no room (no space left, a quota, the process's file-size limit): the file it would have replaced
    is kept as it was (:func:`phasestem.base.safety.atomic_file`)."""
