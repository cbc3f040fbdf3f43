"""The seed-000 training-data file format, defined once (SPEC §2): names, keys, conventions, σ.

Files ``<prefix>1.h5`` … ``<prefix>N.h5`` (prefix ``simulation_data``); per sample ``i``:

* ``dp_set_{i}`` — patterns (Sy, Sx, H, W);
* ``phase_{i}`` — the phase image (Ny, Nx);
* ``potential_{i}`` — the projected potential (V·Å), in phasestem's files only.

Two kinds of file carry these keys:

* **phasestem's own** (:mod:`phasestem.simulate.writer`): root attribute ``format = "phasestem-seed000"``,
  ``phase_convention = "phase_rad"``, the optics and geometry as attributes. ``phase_{i}`` is already the
  phase in rad (σ·V_proj); ``potential_{i}`` holds V_proj.
* **the user's original generator**: no attributes. Its ``phase_{i}`` holds abTEM's *projected potential*
  in V·Å, not yet multiplied by σ (the seed's SPEC: "phase_{i} … holding abTEM's projected potential (not
  yet multiplied by σ)"). The phase in rad is σ(E)·phase_{i}, with E the beam energy (default
  :data:`ORIGINAL_ENERGY`, 300 keV, the generator's default; configurable). The geometry defaults are
  those of the generator: 2 Å scan step, a 100 Å cell over the phase image.

Every reader of these files (``phasestem.io.hdf5``, the learned route's datasets, the Phaseformer pairs)
takes the keys, the file kind and the factor that turns ``phase_{i}`` into rad from here.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..base.configfile import loads_json
from ..physics.optics import interaction_constant
from ._common import decode

#: root attribute ``format`` of phasestem's own seed-000 files
FORMAT = "phasestem-seed000"
#: root attribute ``phase_convention`` of phasestem's files: ``phase_{i}`` is the phase in rad
PHASE_CONVENTION = "phase_rad"
#: default file-name prefix: ``simulation_data1.h5`` …
PREFIX = "simulation_data"
#: the user's original generator (no attributes in its files): beam energy (eV), scan step and cell side (Å)
ORIGINAL_ENERGY = 300e3
ORIGINAL_SCAN_STEP = 2.0
ORIGINAL_EXTENT = 100.0

_KEY = re.compile(r"(dp_set|phase|potential)_(\d+)")


def file_name(k: int, prefix: str = PREFIX) -> str:
    """Name of shard ``k`` (1-based): ``simulation_data1.h5`` for the default prefix."""
    return f"{prefix}{int(k)}.h5"


def patterns_key(i: int) -> str:
    return f"dp_set_{int(i)}"


def phase_key(i: int) -> str:
    return f"phase_{int(i)}"


def potential_key(i: int) -> str:
    return f"potential_{int(i)}"


def target_key(i: int, target: str = "phase") -> str:
    """``phase_{i}`` or ``potential_{i}``."""
    return potential_key(i) if target == "potential" else phase_key(i)


def parse_key(key: str) -> tuple[str, int] | None:
    """``"dp_set_12"`` → ``("dp_set", 12)``; ``None`` for any other name."""
    m = _KEY.fullmatch(key)
    return (m.group(1), int(m.group(2))) if m else None


def sample_ids(keys: Iterable[str], kind: str = "dp_set") -> list[int]:
    """Sorted sample numbers of the ``{kind}_{i}`` keys among ``keys`` (an h5py File/Group works)."""
    return sorted(p[1] for k in keys if (p := parse_key(k)) is not None and p[0] == kind)


def attr_str(attrs: Mapping[str, Any], name: str, default: str = "") -> str:
    """Root attribute ``name`` as text (h5py gives bytes or str)."""
    return str(decode(attrs.get(name, default)))


def aberrations(attrs: Mapping[str, Any], path: str | Path = "") -> dict[str, float]:
    """The ``aberrations`` root attribute of phasestem's files (JSON, Å) as a dict; ``{}`` when absent.
    Errors name ``path`` (the file)."""
    return loads_json(attr_str(attrs, "aberrations", "{}"), f"{path}: root attribute 'aberrations'" if path
                      else "root attribute 'aberrations'")


def is_own(attrs: Mapping[str, Any]) -> bool:
    """True for phasestem's own seed-000 file (root attribute ``format``)."""
    return attr_str(attrs, "format") == FORMAT


def sigma(energy: float | None = None) -> float:
    """σ(E) (rad/(V·Å)) at ``energy`` eV (default :data:`ORIGINAL_ENERGY`, the original generator's)."""
    return float(interaction_constant(float(energy or ORIGINAL_ENERGY)))


def phase_scale(own: bool, energy: float | None = None) -> float:
    """Factor that turns the stored ``phase_{i}`` into rad: 1 for phasestem's files, σ(E) for the original's.

    ``energy`` (eV) is the beam energy of an original file (default :data:`ORIGINAL_ENERGY`).
    """
    return 1.0 if own else sigma(energy)


def file_sigma(attrs: Mapping[str, Any], energy: float | None = None) -> float:
    """σ (rad/(V·Å)) of a file: its ``sigma`` attribute, else σ of ``energy`` (default: its ``energy`` attribute,
    else :data:`ORIGINAL_ENERGY`)."""
    if "sigma" in attrs:
        return float(attrs["sigma"])
    return sigma(energy or attrs.get("energy"))


def phase_sampling(attrs: Mapping[str, Any], shape: tuple[int, ...]) -> tuple[float, float]:
    """Pixel (Å, (y, x)) of the ``phase_{i}`` images of a seed-000 file: its ``phase_sampling`` attribute in
    phasestem's files, the :data:`ORIGINAL_EXTENT` cell over the image (``shape``) in the original generator's."""
    if "phase_sampling" in attrs:
        s = np.asarray(attrs["phase_sampling"], dtype=np.float64).ravel()
        return (float(s[0]), float(s[-1]))
    return (ORIGINAL_EXTENT / shape[-2], ORIGINAL_EXTENT / shape[-1])


def read_phase(f, key: str, energy: float | None = None) -> np.ndarray:
    """Dataset ``key`` (a ``phase_{i}``) of an open seed-000 file as float32 phase in rad: as stored in phasestem's
    files, × σ(``energy``) in the original generator's (whose ``phase_{i}`` is the projected potential)."""
    arr = np.asarray(f[key][...], dtype=np.float32)
    scale = phase_scale(is_own(f.attrs), energy)
    return arr if scale == 1.0 else arr * np.float32(scale)
