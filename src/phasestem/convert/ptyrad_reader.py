"""Reading a PtyRAD 1.0 params file for :mod:`phasestem.convert.ptyrad`: its sections, the keys read (every key
not read is listed at the end), the three kinds of line about what did not carry over (:class:`Translation`), and
the one-line refusal naming a field (also for an untranslated setting that changes the geometry, unless the user
allowed it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: the top-level sections of a PtyRAD params file
SECTIONS = ("init_params", "hypertune_params", "model_params", "loss_params", "constraint_params", "recon_params")


def is_ptyrad_params(data: Any) -> bool:
    """Whether a parsed YAML mapping is a PtyRAD params file: it has ``init_params`` and none of phasestem's
    ``data``/``optics``/``scan`` sections."""
    return isinstance(data, dict) and "init_params" in data and not {"data", "optics", "scan"} & set(data)


@dataclass
class Translation:
    """The phasestem parameter mapping and what did not carry over (one line each)."""

    params: dict[str, Any]
    untranslated: list[str] = field(default_factory=list)
    approximate: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def report_lines(self) -> list[str]:
        """``not translated: …`` / ``approximate: …`` lines, then one ``ignored (off, null or output naming): …``."""
        lines = [f"not translated: {s}" for s in self.untranslated] + [f"approximate: {s}" for s in self.approximate]
        if self.ignored:
            lines.append(f"ignored (off, null, or PtyRAD's output naming): {', '.join(self.ignored)}")
        return lines


def short_value(value: Any) -> str:
    """A value of PtyRAD's parameter file as one short line of YAML, for a message."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    return text if len(text) <= 70 else text[:67] + "..."


def _is_off(value: Any) -> bool:
    """A PtyRAD value that does nothing: null, false, an empty list/dict, a term with state false, a schedule with
    start_iter null, a pad/resample with mode null, all-zero flips."""
    if value is None or value is False or value == [] or value == {}:
        return True
    if isinstance(value, dict):
        if value.get("state") is False or ("start_iter" in value and value["start_iter"] is None):
            return True
        if "mode" in value and value["mode"] is None:
            return True
    return isinstance(value, list) and len(value) == 3 and all(v in (0, False) for v in value)


class PtyradReader:
    """A PtyRAD params file's sections, the keys read from them, and the lines of its :class:`Translation`."""

    def __init__(self, data: dict, source: str, cwd: Path, lsq: bool, allow_untranslated: bool = False):
        from ..base.errors import ConfigError

        self.source, self.cwd, self.lsq = source, cwd, lsq
        self.allow_untranslated = allow_untranslated
        self.out: dict[str, Any] = {"data": {}, "optics": {}, "scan": {}, "model": {}, "losses": {},
                                    "constraints": {}, "run": {}}
        self.tr = Translation(self.out)
        self.sections: dict[str, dict] = {}
        for name, section in data.items():
            if name not in SECTIONS:
                self.tr.untranslated.append(f"{name}: not a section of a PtyRAD 1.0 params file")
            elif section is None:
                self.sections[name] = {}
            elif not isinstance(section, dict):
                raise ConfigError(f"{source}: {name}: expected a mapping of PtyRAD parameters, got "
                                  f"{type(section).__name__}")
            else:
                self.sections[name] = dict(section)
        self.used: set[tuple[str, str]] = set()

    # ---- bookkeeping -------------------------------------------------------------------------
    def get(self, section: str, key: str, default: Any = None) -> Any:
        self.used.add((section, key))
        return self.sections.get(section, {}).get(key, default)

    def given(self, section: str, key: str) -> bool:
        return key in self.sections.get(section, {})

    def skip(self, section: str, key: str, why: str, value: Any = None) -> None:
        """One ``not translated`` line for a key that changes the run, or an ``ignored`` name for one that is off."""
        self.used.add((section, key))
        present = self.given(section, key)
        value = self.sections.get(section, {}).get(key) if present else value
        if present and _is_off(value):
            self.tr.ignored.append(f"{section}.{key}")
        elif value is not None:
            default = "" if present else " (PtyRAD's default)"
            self.tr.untranslated.append(f"{section}.{key}: {short_value(value)}{default}: {why}")

    def geometry(self, field_name: str, value: Any, what: str, remedy: str) -> None:
        """A setting that changes the geometry (where the probe is, what a detector pixel means) and is not
        translated: a ConfigError naming it (``what`` it does, the ``remedy`` in phasestem's terms), or, when the
        user allowed it, one ``not translated`` line."""
        if not self.allow_untranslated:
            raise self.fail(field_name, f"{short_value(value)}: {what}: it changes the geometry and is not translated; "
                            f"{remedy}, or go on without it: phasestem convert ptyrad {self.source} "
                            "--allow-untranslated --out-file FILE")
        self.tr.untranslated.append(f"{field_name}: {short_value(value)}: {what} (changes the geometry): {remedy}")

    def fail(self, field_name: str, why: str):
        from ..base.errors import ConfigError

        return ConfigError(f"{self.source}: {field_name}: {why}")

    # ---- sections ----------------------------------------------------------------------------
