"""PtyRAD's scan geometry (``pos_scan_flipT``, ``pos_scan_affine``) as phasestem's ``scan.rotation``, ``scan.step``
and ``scan.affine``, exactly.

PtyRAD (1.0, ``init/initializer.py``) builds its raster of positions as row vectors (y, x) in object pixels, flips
or transposes the grid (``pos_scan_flipT: [flipud, fliplr, transpose]``), centres it on its mean and multiplies
it from the right by ``F = S · Asym · Rot · Shear`` with, for ``[scale s, asymmetry a, rotation θ, shear φ]``
(θ, φ in degrees)::

    S = s·I,  Asym = diag(1 + a/2, 1 − a/2),  Rot = [[cos θ, sin θ], [−sin θ, cos θ]],  Shear = [[1, 0], [tan φ, 1]]

On column vectors (phasestem's :mod:`phasestem.scan`) that is ``Fᵀ = Shearᵀ · R(θ) · Asym · S`` with ``R``
phasestem's :func:`~phasestem.scan.rotation_matrix`: PtyRAD's θ is ``scan.rotation`` as it is, the diagonal
``s·Asym`` scales the step per axis (``scan.step``), ``Shearᵀ = [[1, tan φ], [0, 1]]`` is ``scan.affine``
(applied after the rotation). PtyRAD turns about the scan's mean, phasestem about its first position: the two
position sets differ by one common shift, which moves the object in its frame and nothing else.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..scan import rotation_matrix

#: |entry| below which a decomposed affine counts as the identity (the rounding of R(θ)·R(−θ))
IDENTITY_TOLERANCE = 1e-12


def ptyrad_affine_matrix(scale: float, asymmetry: float, rotation: float, shear: float) -> np.ndarray:
    """PtyRAD's 2×2 ``F`` for row vectors (y, x) (``positions @ F``); ``rotation``, ``shear`` in degrees."""
    th, ph = math.radians(rotation), math.radians(shear)
    stretch = scale * np.diag([1 + asymmetry / 2, 1 - asymmetry / 2])
    turn = np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])
    return stretch @ turn @ np.array([[1.0, 0.0], [math.tan(ph), 1.0]])


def flip_matrix(flip_up: bool, flip_lr: bool, transpose: bool) -> np.ndarray:
    """PtyRAD's ``pos_scan_flipT`` as a 2×2 map of centred (y, x) column vectors: reversing the rows (columns) of the
    grid negates y (x) about the centre; its ``transpose`` flips the (y, x) axis of the positions, i.e. swaps them."""
    m = np.diag([-1.0 if flip_up else 1.0, -1.0 if flip_lr else 1.0])
    return m[::-1].copy() if transpose else m


def scan_fields(affine: list[float] | None, flips: tuple[bool, bool, bool] | None,
                step: float | None) -> dict[str, Any]:
    """phasestem's ``scan`` fields for PtyRAD's ``[scale, asymmetry, rotation, shear]`` (None: [1, 0, 0, 0]),
    ``pos_scan_flipT`` (None: none) and ``pos_scan_step_size`` (Å; None: the data file's, taken as square).

    Returns the fields that differ from a plain raster: ``rotation`` (degrees, PtyRAD's θ), ``step`` ((dy, dx) Å:
    the step times ``scale·(1 ± asymmetry/2)``, when ``step`` is given and they differ) and ``affine`` (the rest,
    a 2×2 list; left out when it is the identity). Raises ValueError when the map is singular.
    """
    scale, asym, theta, shear = affine if affine is not None else (1.0, 0.0, 0.0, 0.0)
    linear = ptyrad_affine_matrix(scale, asym, theta, shear).T  # column vectors, per unit of the step
    if flips is not None:
        linear = linear @ flip_matrix(*flips)
    det = float(np.linalg.det(linear))
    if not math.isfinite(det) or abs(det) < IDENTITY_TOLERANCE:
        raise ValueError(f"a singular map (determinant {det:g}): the positions would collapse onto a line")
    out: dict[str, Any] = {}
    if theta:
        out["rotation"] = float(theta)
    per_axis = np.ones(2)
    if step is not None:
        per_axis = np.abs(scale * np.array([1 + asym / 2, 1 - asym / 2]))
        linear = linear * step
        if not np.allclose(per_axis, 1.0, rtol=0, atol=IDENTITY_TOLERANCE):
            out["step"] = [float(step * per_axis[0]), float(step * per_axis[1])]
        per_axis = per_axis * step
    rest = linear @ np.diag(1 / per_axis) @ rotation_matrix(-theta)
    if not np.allclose(rest, np.eye(2), rtol=0, atol=IDENTITY_TOLERANCE):
        out["affine"] = (np.round(rest, 12) + 0.0).tolist()
    return out
