"""FourDSTEM: the one in-memory dataset type (patterns + scan geometry + optics metadata).

A dataset carries its scan (:attr:`FourDSTEM.scan`, a :class:`~phasestem.scan.GridScan`) and its detector
(:attr:`FourDSTEM.detector`, a :class:`~phasestem.detector.PixelatedDetector` of the patterns as they are now)
together with what is known per pattern and per detector pixel: ``detector_shifts`` (where each pattern's zero
frequency sits, the descan) and ``bad_pixels``. Every transform (scan subset, flips/transpose, crop, binning,
padding) updates them with the patterns, so shifts, masks and calibrations follow the data by construction.

Patterns may be a NumPy array, a torch tensor or a lazy array-like (an open ``h5py.Dataset``,
a ``numpy.memmap``, a dask array) of shape (Sy, Sx, H, W); nothing is read until asked for (a
dask array is computed per block of scan rows or per batch of patterns). Pattern
pixels are fftshift-ed (zero frequency at (H//2, W//2), as :mod:`phasestem.physics.optics` states).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .base.errors import ShapeError
from .detector import PixelatedDetector, centre_window
from .physics.optics import wavelength
from .scan import GridScan


@dataclass
class FourDSTEM:
    """A 4D-STEM scan.

    Attributes
    ----------
    patterns : (Sy, Sx, H, W) array-like, lazy allowed. Intensities (counts or fractions).
    energy : beam energy (eV).
    scan_step : (dy, dx) scan step in Å.
    angular_sampling : (dky, dkx) detector pixel size in mrad (sets the reconstruction pixel
        ``λ / (H · dky)``); ``None`` when unknown, then ``sampling`` must be given.
    semiangle : probe semi-angle (mrad), when known.
    aberrations : aberration coefficients (Å / rad, :class:`phasestem.physics.optics.Aberrations` keys).
    scan_origin : (y0, x0) Å of scan position (0, 0).
    positions : optional explicit probe positions (Sy·Sx, 2) Å, overriding the grid.
    metadata : free-form provenance (file, keys, detector, dose …).
    truth : optional ground truth, e.g. ``{"phase": (Ny, Nx) rad, "sampling": (dy, dx)}``.
    detector_shifts : optional (Sy·Sx, 2) px: where each pattern's zero frequency (the bright-field disk centre)
        sits relative to the central pixel (H//2, W//2), (ky, kx) in the frame of ``patterns``.
    bad_pixels : optional (H, W) bool mask of the patterns' bad pixels (True = bad; e.g. a Dectris pixel mask).
    """

    patterns: Any
    energy: float
    scan_step: tuple[float, float]
    angular_sampling: tuple[float, float] | None = None
    semiangle: float | None = None
    aberrations: dict[str, float] = field(default_factory=dict)
    scan_origin: tuple[float, float] = (0.0, 0.0)
    positions: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, Any] | None = None
    sampling_override: tuple[float, float] | None = None
    detector_shifts: np.ndarray | None = None
    bad_pixels: np.ndarray | None = None

    def __post_init__(self):
        shape = tuple(self.patterns.shape)
        if len(shape) != 4:
            src = self.metadata.get("source", "patterns")
            raise ShapeError(f"{src}: patterns must have 4 axes (scan_y, scan_x, ky, kx), got shape {shape}")
        if self.positions is not None:
            pos = np.asarray(self.positions, dtype=np.float64)
            if pos.shape != (shape[0] * shape[1], 2):
                raise ShapeError(
                    f"positions must have shape ({shape[0] * shape[1]}, 2) for a {shape[0]}×{shape[1]} scan, "
                    f"got {pos.shape}"
                )
            self.positions = pos
        if self.energy <= 0:  # NaN passes: an energy not known for a first look (io's require_calibration=False)
            raise ShapeError(f"energy must be positive (eV), got {self.energy}")
        self.scan_step = (float(self.scan_step[0]), float(self.scan_step[1]))
        if self.detector_shifts is not None:
            shifts = np.asarray(self.detector_shifts, dtype=np.float64)
            if shifts.size != shape[0] * shape[1] * 2:
                raise ShapeError(f"detector_shifts: {shifts.shape} for a {shape[0]}×{shape[1]} scan; expected "
                                 f"({shape[0] * shape[1]}, 2) px")
            self.detector_shifts = shifts.reshape(-1, 2)
        if self.bad_pixels is not None:
            mask = np.asarray(self.bad_pixels, dtype=bool)
            if mask.shape != shape[2:]:
                raise ShapeError(f"bad_pixels: mask of shape {mask.shape} for {shape[2]}×{shape[3]} patterns")
            self.bad_pixels = mask if mask.any() else None

    # ---- geometry --------------------------------------------------------------------
    @property
    def scan_shape(self) -> tuple[int, int]:
        return int(self.patterns.shape[0]), int(self.patterns.shape[1])

    @property
    def pattern_shape(self) -> tuple[int, int]:
        return int(self.patterns.shape[2]), int(self.patterns.shape[3])

    @property
    def n_patterns(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]

    @property
    def wavelength(self) -> float:
        return wavelength(self.energy)

    @property
    def sampling(self) -> tuple[float, float]:
        """Real-space pixel size (Å) of the probe window matched to the detector: λ / (N · dk)."""
        if self.sampling_override is not None:
            return self.sampling_override
        if self.angular_sampling is None:
            raise ShapeError("dataset has neither angular_sampling (mrad/px) nor an explicit real-space sampling")
        H, W = self.pattern_shape
        lam = self.wavelength
        return (lam / (H * self.angular_sampling[0] * 1e-3), lam / (W * self.angular_sampling[1] * 1e-3))

    @property
    def scan(self) -> GridScan:
        """The scan of the patterns: their grid (step, origin) or their explicit positions (Å)."""
        return GridScan(self.scan_shape, self.scan_step, origin=self.scan_origin, explicit=self.positions)

    @property
    def detector(self) -> PixelatedDetector:
        """The detector of the patterns as they are now: their frame shape, angular sampling and bad pixels (the
        zero frequency on the central pixel, up to ``detector_shifts``)."""
        return PixelatedDetector(self.pattern_shape, angular_sampling=self.angular_sampling,
                                 bad_pixels=self.bad_pixels)

    def positions_angstrom(self) -> np.ndarray:
        """Probe positions (Sy·Sx, 2) in Å, row-major over the scan: the explicit ``positions`` when given,
        else the :class:`~phasestem.scan.GridScan` of ``scan_step`` and ``scan_origin``."""
        return self.positions if self.positions is not None else self.scan.positions()

    # ---- data access -----------------------------------------------------------------
    def get_patterns(self, index=None, dtype=torch.float32, device=None) -> torch.Tensor:
        """Patterns for flat scan indices ``index`` (B,) (all when None) → (B, H, W) tensor."""
        H, W = self.pattern_shape
        if index is None:
            arr = np.asarray(self.patterns[...]).reshape(-1, H, W)
        else:
            idx = np.asarray(index).ravel()
            if isinstance(self.patterns, np.ndarray | torch.Tensor):
                arr = self.patterns.reshape(-1, H, W)[idx]
            elif hasattr(self.patterns, "vindex"):  # dask: one computation reading only the chunks asked for
                sx = self.scan_shape[1]
                arr = self.patterns.vindex[idx // sx, idx % sx].compute()
            else:  # lazy: read row by row in sorted order
                sy, sx = self.scan_shape
                order = np.argsort(idx)
                out = np.empty((len(idx), H, W), dtype=np.float32)
                for j in order:
                    out[j] = self.patterns[idx[j] // sx, idx[j] % sx]
                arr = out
        arr = np.asarray(arr)
        if not arr.flags.writeable:  # a read-only memory map (np.load(mmap_mode='r')): torch wants its own copy
            arr = arr.astype(np.float32 if dtype == torch.float32 else arr.dtype)  # one copy, already converted
        return torch.as_tensor(arr, dtype=dtype, device=device)

    def load(self) -> FourDSTEM:
        """Read lazy patterns into memory (float32)."""
        self.patterns = np.asarray(self.patterns[...], dtype=np.float32)
        return self

    def mean_pattern(self, chunk: int = 256) -> np.ndarray:
        """Mean diffraction pattern (PACBED), (H, W), read in chunks of scan rows."""
        acc = np.zeros(self.pattern_shape, dtype=np.float64)
        sy = self.scan_shape[0]
        step = max(1, chunk // max(1, self.scan_shape[1]))
        for r in range(0, sy, step):
            acc += np.asarray(self.patterns[r : r + step], dtype=np.float64).sum((0, 1))
        return (acc / self.n_patterns).astype(np.float32)

    def virtual_image(self, inner: float = 0.0, outer: float | None = None, chunk_rows: int = 8) -> np.ndarray:
        """Virtual detector image (Sy, Sx) summing pixels with inner ≤ angle < outer (mrad).

        Without ``angular_sampling`` the radii are taken in pixels.
        """
        H, W = self.pattern_shape
        ky = (np.arange(H) - H // 2) * (self.angular_sampling[0] if self.angular_sampling else 1.0)
        kx = (np.arange(W) - W // 2) * (self.angular_sampling[1] if self.angular_sampling else 1.0)
        r = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
        outer = np.inf if outer is None else outer
        mask = (r >= inner) & (r < outer)
        out = np.empty(self.scan_shape, dtype=np.float64)
        for row in range(0, self.scan_shape[0], chunk_rows):
            block = np.asarray(self.patterns[row : row + chunk_rows], dtype=np.float64)
            out[row : row + chunk_rows] = (block * mask).sum((-2, -1))
        return out

    def center_of_mass(self, chunk_rows: int = 8) -> np.ndarray:
        """Centre of mass (Sy, Sx, 2) of each pattern in pixels relative to (H//2, W//2)."""
        H, W = self.pattern_shape
        ky = np.arange(H) - H // 2
        kx = np.arange(W) - W // 2
        out = np.empty((*self.scan_shape, 2))
        for row in range(0, self.scan_shape[0], chunk_rows):
            b = np.asarray(self.patterns[row : row + chunk_rows], dtype=np.float64)
            tot = b.sum((-2, -1)) + 1e-30
            out[row : row + chunk_rows, :, 0] = (b.sum(-1) * ky).sum(-1) / tot
            out[row : row + chunk_rows, :, 1] = (b.sum(-2) * kx).sum(-1) / tot
        return out

    # ---- transforms (return new datasets; in memory) ---------------------------------
    def transformed(self, flip_y: bool = False, flip_x: bool = False, transpose: bool = False) -> FourDSTEM:
        """Flip/transpose the detector axes (for cameras mounted differently from our convention), about the
        zero frequency at pixel (H//2, W//2) as :meth:`phasestem.detector.PixelatedDetector.apply` does: it
        stays on that pixel (on an even axis the outermost row, frequency −H/2, has no mirror and becomes 0)."""
        det = PixelatedDetector(self.pattern_shape, angular_sampling=self.angular_sampling, transpose=transpose,
                                flip_y=flip_y, flip_x=flip_x)
        out = self.map_rows(det.output_shape, det.apply)
        shifts = None if self.detector_shifts is None else det.oriented_vectors(self.detector_shifts)
        mask = None if self.bad_pixels is None else det.apply(self.bad_pixels.astype(np.float32)) > 0.5
        return self._replace(patterns=out, angular_sampling=det.output_angular_sampling, detector_shifts=shifts,
                             bad_pixels=mask)

    def map_rows(self, shape: tuple[int, int], fn, rows: int = 8, dtype=np.float32) -> np.ndarray:
        """``fn`` (frames (r, Sx, H, W) → (r, Sx, h, w)) over the patterns ``rows`` scan rows at a time into one
        new array (Sy, Sx, h, w) of ``dtype``: peak memory = the result + one chunk, not the several whole-array
        copies of applying ``fn`` to everything at once (16.6 GiB for a 4 GiB transposed scan)."""
        sy, sx = self.scan_shape
        out = np.empty((sy, sx, *shape), dtype=dtype)
        for r in range(0, sy, rows):
            out[r : r + rows] = fn(np.asarray(self.patterns[r : r + rows]))
        return out

    def binned(self, factor: int) -> FourDSTEM:
        """Sum detector pixels in ``factor × factor`` bins (float32; crops the remainder), as
        :meth:`phasestem.detector.PixelatedDetector.reduce` does: the zero frequency stays in bin (h//2, w//2)."""
        if factor == 1:
            return self
        det = PixelatedDetector(self.pattern_shape, angular_sampling=self.angular_sampling, binning=factor)
        p = self.map_rows(det.output_shape, lambda block: det.reduce(block.astype(np.float32, copy=False)))
        shifts = None if self.detector_shifts is None else self.detector_shifts / factor
        mask = None if self.bad_pixels is None else det.reduce(self.bad_pixels.astype(np.float32)) > 0
        return self._replace(patterns=p, angular_sampling=det.output_angular_sampling, detector_shifts=shifts,
                             bad_pixels=mask)

    def cropped(self, shape: tuple[int, int]) -> FourDSTEM:
        """Keep the central ``shape`` detector pixels around zero frequency (:func:`phasestem.detector.centre_window`;
        the patterns' dtype, read a few scan rows at a time: :meth:`map_rows`)."""
        H, W = self.pattern_shape
        if shape[0] > H or shape[1] > W:
            raise ShapeError(f"crop {tuple(shape)} is larger than the patterns {(H, W)}")
        p = self.map_rows(tuple(shape), lambda block: centre_window(block, shape), dtype=self.patterns.dtype)
        mask = None if self.bad_pixels is None else np.ascontiguousarray(centre_window(self.bad_pixels, shape))
        return self._replace(patterns=p, bad_pixels=mask,
                             detector_shifts=self.detector_shifts)  # relative to the central pixel: unchanged

    def padded(self, shape: tuple[int, int]) -> FourDSTEM:
        """Zero-pad the patterns to ``shape`` around zero frequency (finer real-space pixels;
        :func:`phasestem.detector.centre_window`)."""
        p = np.asarray(self.patterns[...])
        H, W = p.shape[-2:]
        if shape[0] < H or shape[1] < W:
            raise ShapeError(f"pad target {tuple(shape)} is smaller than the patterns {(H, W)}")
        out = centre_window(p, shape)
        mask = None if self.bad_pixels is None else centre_window(self.bad_pixels, shape)
        return self._replace(patterns=out.copy() if np.may_share_memory(out, p) else out, bad_pixels=mask,
                             detector_shifts=self.detector_shifts)  # relative to the central pixel: unchanged

    def scan_subset(self, rows: slice, cols: slice) -> FourDSTEM:
        """A rectangular part of the scan (positions kept in the original frame; detector shifts subset alike)."""
        pos = self.positions_angstrom().reshape(*self.scan_shape, 2)[rows, cols].reshape(-1, 2)
        shifts = None if self.detector_shifts is None else \
            self.detector_shifts.reshape(*self.scan_shape, 2)[rows, cols].reshape(-1, 2)
        return self._replace(patterns=self.patterns[rows, cols], positions=pos, detector_shifts=shifts)

    def _replace(self, **changes) -> FourDSTEM:
        """A new dataset with ``changes``. Patterns of another frame shape drop the bad-pixel mask unless a new one
        is given; per-pattern detector shifts must then be given too (they cannot follow an unknown map)."""
        kw = {f: getattr(self, f) for f in self.__dataclass_fields__}
        if "patterns" in changes and tuple(changes["patterns"].shape[2:]) != self.pattern_shape:
            kw["bad_pixels"] = None
            if self.detector_shifts is not None and "detector_shifts" not in changes:
                raise ShapeError(f"detector_shifts cannot follow the patterns from {self.pattern_shape} to "
                                 f"{tuple(changes['patterns'].shape[2:])} px by this transform; give them anew")
        kw.update(changes)
        kw["metadata"] = dict(self.metadata)
        return FourDSTEM(**kw)

    def settings_table(self, given: str = "given") -> str:
        """Every calibration this dataset carries, one line each with its source (``file``, ``default`` or
        ``given``: an option of the reader), as the run log shows them
        (:func:`~phasestem.base.provenance.dataset_settings`).
        """
        from .base.provenance import dataset_settings, settings_table

        return settings_table(dataset_settings(self, given))

    def summary(self) -> str:
        sy, sx = self.scan_shape
        H, W = self.pattern_shape
        step = (f"step {self.scan_step[0]:g}×{self.scan_step[1]:g} Å" if all(np.isfinite(self.scan_step))
                else "step unknown")
        parts = [f"{sy}×{sx} scan, {step}", f"patterns {H}×{W}",
                 f"{self.energy / 1e3:g} keV" if np.isfinite(self.energy) else "energy unknown"]
        if self.angular_sampling and np.isfinite(self.energy):
            parts.append(f"{self.angular_sampling[0]:.4g} mrad/px (pixel {self.sampling[0]:.4g} Å)")
        elif self.angular_sampling:
            parts.append(f"{self.angular_sampling[0]:.4g} mrad/px")
        if self.semiangle:
            parts.append(f"α = {self.semiangle:g} mrad")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"FourDSTEM({self.summary()})"
