"""Scan geometry: where the probe was for each pattern (abTEM's ``GridScan`` vocabulary).

A :class:`GridScan` is a raster of ``shape`` (rows, cols) probe positions, row-major (x fastest),
``step`` (dy, dx) Å apart, turned by ``rotation`` degrees counter-clockwise *as displayed*
(x right, y down), optionally distorted by a 2×2 ``affine`` (applied after the rotation) and
shifted to ``origin`` (y0, x0) Å. ``explicit`` positions, when given, replace the grid.
Positions are probe centres in Å, (y, x), as everywhere in phasestem.

Position of scan index (iy, ix)::

    p = origin + A · R(rotation) · (iy · dy, ix · dx)ᵀ

with R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]] acting on (y, x) column vectors.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .base.configfile import number_pair
from .base.errors import ConfigError, ShapeError


def rotation_matrix(degrees: float) -> np.ndarray:
    """2×2 matrix turning (y, x) vectors counter-clockwise as displayed (y down) by ``degrees``."""
    th = math.radians(degrees)
    return np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])


@dataclass(frozen=True)
class GridScan:
    """A raster scan (or explicit positions) in Å.

    Attributes
    ----------
    shape : (rows, cols) of the scan; patterns are numbered row-major (x fastest).
    step : (dy, dx) Å between neighbouring positions (before rotation/affine).
    origin : (y0, x0) Å of scan index (0, 0) (None: (0, 0)).
    rotation : degrees, counter-clockwise as displayed (x right, y down), about the origin.
    affine : optional 2×2 matrix applied to the (y, x) displacements after the rotation.
    explicit : optional (rows·cols, 2) Å positions that replace the grid (row-major order).
    """

    shape: tuple[int, int]
    step: tuple[float, float] = (1.0, 1.0)
    origin: tuple[float, float] = (0.0, 0.0)
    rotation: float = 0.0
    affine: np.ndarray | None = field(default=None, compare=False)
    explicit: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self):
        shape = tuple(int(s) for s in np.atleast_1d(self.shape))
        if len(shape) != 2 or min(shape) <= 0:
            raise ConfigError(f"scan.shape must be two positive integers (rows, cols), got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        if self.step is None:
            raise ConfigError("scan.step: missing; give the scan step (dy, dx) in Å")
        object.__setattr__(self, "step", number_pair(self.step, "scan.step"))
        object.__setattr__(self, "origin", number_pair((0.0, 0.0) if self.origin is None else self.origin,
                                                       "scan.origin"))
        object.__setattr__(self, "rotation", float(self.rotation))
        if self.affine is not None:
            a = np.asarray(self.affine, dtype=np.float64)
            if a.shape != (2, 2):
                raise ConfigError(f"scan.affine must be a 2×2 matrix, got shape {a.shape}")
            object.__setattr__(self, "affine", a)
        if self.explicit is not None:
            pos = np.asarray(self.explicit, dtype=np.float64).reshape(-1, 2)
            if len(pos) != self.n:
                raise ShapeError(f"scan.explicit: {len(pos)} positions for a {shape[0]}×{shape[1]} scan "
                                 f"({self.n} positions expected)")
            object.__setattr__(self, "explicit", pos)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_positions(cls, positions, shape: tuple[int, int] | None = None) -> GridScan:
        """A scan of explicit (N, 2) Å positions; ``shape`` (rows, cols) defaults to (1, N)."""
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        return cls(shape=tuple(shape) if shape is not None else (1, len(pos)), explicit=pos)

    @classmethod
    def raster_from_positions(cls, positions, decimals: int = 3) -> GridScan | None:
        """The plain raster that (N, 2) Å positions form, or None when they are not one.

        The positions, rounded to ``decimals``, must be row-major over every pair of their distinct y and x
        values. ``shape`` counts those values, ``step`` is the median spacing of each (1 Å for a single one)
        and ``origin`` the first position.
        """
        raw = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        pos = np.round(raw, decimals)
        ys, xs = np.unique(pos[:, 0]), np.unique(pos[:, 1])
        if len(ys) * len(xs) != len(pos):
            return None
        gy, gx = np.meshgrid(ys, xs, indexing="ij")  # the product of the distinct values, not a uniform grid
        if not np.allclose(np.stack([gy.ravel(), gx.ravel()], -1), pos, atol=10.0 ** (-decimals)):
            return None
        dy = float(np.median(np.diff(ys))) if len(ys) > 1 else 1.0
        dx = float(np.median(np.diff(xs))) if len(xs) > 1 else 1.0
        return cls(shape=(len(ys), len(xs)), step=(dy, dx), origin=tuple(raw[0]))

    @classmethod
    def from_dataset(cls, dataset) -> GridScan:
        """The scan of a :class:`~phasestem.dataset.FourDSTEM`: its grid, or its explicit positions."""
        return cls(shape=dataset.scan_shape, step=dataset.scan_step, origin=dataset.scan_origin,
                   explicit=dataset.positions)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GridScan:
        """From a mapping with the attribute names (as written by :meth:`to_dict`)."""
        allowed = {"shape", "step", "origin", "rotation", "affine", "explicit"}
        unknown = set(values) - allowed
        if unknown:
            raise ConfigError(f"scan: unknown key(s) {sorted(unknown)}; expected {sorted(allowed)}")
        if "shape" not in values:
            raise ConfigError("scan.shape: missing; give (rows, cols)")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (YAML/JSON friendly); ``explicit`` as nested lists."""
        out: dict[str, Any] = {"shape": list(self.shape), "step": list(self.step), "origin": list(self.origin),
                               "rotation": self.rotation}
        if self.affine is not None:
            out["affine"] = self.affine.tolist()
        if self.explicit is not None:
            out["explicit"] = self.explicit.tolist()
        return out

    def replace(self, **changes) -> GridScan:
        """A copy with some attributes changed."""
        return replace(self, **changes)

    # ---- geometry -------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of positions, rows·cols."""
        return self.shape[0] * self.shape[1]

    @property
    def matrix(self) -> np.ndarray:
        """2×2 matrix M with position = origin + M · (iy, ix)ᵀ (Å per scan index); grid scans only."""
        m = rotation_matrix(self.rotation) @ np.diag(self.step)
        return m if self.affine is None else self.affine @ m

    def indices(self) -> np.ndarray:
        """(N, 2) integer scan indices (iy, ix), row-major."""
        iy, ix = np.meshgrid(np.arange(self.shape[0]), np.arange(self.shape[1]), indexing="ij")
        return np.stack([iy.ravel(), ix.ravel()], -1)

    def positions(self) -> np.ndarray:
        """(N, 2) probe positions (y, x) in Å, row-major over the scan."""
        if self.explicit is not None:
            return self.explicit.copy()
        if self.is_plain_raster:  # (iy·dy + y0, ix·dx + x0) directly, as a plain raster builder computes it
            return self.indices() * np.asarray(self.step) + np.asarray(self.origin)
        return self.indices().astype(np.float64) @ self.matrix.T + np.asarray(self.origin)

    @property
    def is_plain_raster(self) -> bool:
        """True when positions are exactly origin + (iy·dy, ix·dx) (no rotation, affine or explicit)."""
        return self.explicit is None and self.affine is None and self.rotation == 0.0

    def extent(self) -> tuple[float, float]:
        """(height, width) Å of the bounding box of the positions."""
        pos = self.positions()
        span = pos.max(0) - pos.min(0)
        return float(span[0]), float(span[1])


def as_grid_scan(scan: GridScan | Mapping[str, Any] | Sequence[int]) -> GridScan:
    """A :class:`GridScan` from a GridScan, a mapping of its attributes or a bare (rows, cols)."""
    if isinstance(scan, GridScan):
        return scan
    if isinstance(scan, Mapping):
        return GridScan.from_dict(scan)
    return GridScan(shape=tuple(scan))
