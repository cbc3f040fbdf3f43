"""Measurement consistency of a phase image: does it explain the measured diffraction patterns?

A phase image (a learned prediction, or any other) becomes a single-slice object ``exp(i·φ)``
(amplitude 1) that is pushed through the scan's :class:`phasestem.physics.experiment.Experiment` (the one
forward model and detector response, as the reconstruction uses them) with the *nominal* probe of the optics
(energy, semiangle, aberrations) at the scan positions. The data residual compares model and measured
intensities in the amplitude domain, each pattern normalised to a total of 1::

    r_j = Σ_k (√(I_model,jk / Σ_k I_model,jk) − √(I_meas,jk / Σ_k I_meas,jk))²

r_j lies in [0, 2]: 0 for identical patterns, 2 for patterns with no overlap (r_j = 2 − 2·Σ√(p·q), twice
the squared Hellinger distance between the normalised patterns p and q). The residual of a scan is the
mean of r_j over its patterns, Σ(√I_model − √I_meas)² / Σ I_meas with both normalised to the same
count per pattern. It needs no ground truth, so it can be reported on real data; a phase that fits the
data better scores lower. Its floor is set by shot noise and by whatever the model leaves out (several
slices, partial coherence, a probe that differs from the nominal one).

Geometry: the phase image has pixel (0, 0) at 0 Å of the dataset frame (as the learned route's targets
and predictions do) with pixel ``phase_sampling`` (Å); it is resampled bilinearly to the model's pixel
λ/(H·Δk) when they differ (:meth:`~phasestem.physics.experiment.Experiment.image_region` resamples band-limited
since issue 48; this residual keeps bilinear so that its figures stay comparable) and placed in
the model's padded object frame. ``periodic`` (default: when the scan spans the phase image, as in the
simulated training sets whose specimen is one periodic cell) wraps it around, otherwise the object is
phase 0 outside the image.

:func:`measurement_residual` evaluates one phase image against a :class:`~phasestem.dataset.FourDSTEM`
(predict, evaluate); :class:`MeasurementModel` is the reusable, differentiable operator, and
:func:`consistency_loss` the training term on End2End batches (``loss.consistency_weight``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..base.errors import ConfigError, ShapeError
from ..dataset import FourDSTEM
from ..io import seed as seedfile
from ..io.hdf5 import open_file
from ..physics.experiment import Experiment
from ..physics.resample import resample_image
from .data import BlockGeometry, Preprocess

log = logging.getLogger("phasestem.learn")

__all__ = ["MeasurementModel", "measurement_residual", "consistency_loss", "optics_from_file",
           "normalised_amplitudes", "block_scan_indices"]

#: patterns per forward-model call (memory: a few of these × H × W complex values)
DEFAULT_CHUNK = 512


def normalised_amplitudes(intensities: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """√(I / Σ I) of (..., H, W) intensities, each pattern normalised to a total of 1 (negatives clipped)."""
    i = intensities.float().clamp_min(0)
    return (i / i.sum((-2, -1), keepdim=True).clamp_min(eps) + 1e-20).sqrt()


def unscale(patterns: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Intensities (up to one factor per pattern or block) from patterns preprocessed by ``preprocess``."""
    x = patterns.float()
    if preprocess.scale == "sqrt":
        return x.square()
    if preprocess.scale == "log":
        return torch.expm1(x) * preprocess.log_floor
    return x


@dataclass
class _Optics:
    energy: float
    semiangle: float | None
    aberrations: dict[str, float]
    angular_sampling: tuple[float, float] | None
    scan_step: tuple[float, float]
    scan_origin: tuple[float, float]


def optics_from_file(path: str | Path) -> _Optics | None:
    """Optics and scan of a seed-000 training file from its root attributes (None for files without them,
    e.g. the original generator's, whose probe is not recorded)."""
    with open_file(path, "training file") as f:
        a = f.attrs
        if "semiangle" not in a or "angular_sampling" not in a or "energy" not in a:
            return None
        return _Optics(float(a["energy"]), float(a["semiangle"]), seedfile.aberrations(a, path),
                       tuple(float(v) for v in a["angular_sampling"]), tuple(float(v) for v in a["scan_step"]),
                       tuple(float(v) for v in a.get("scan_origin", (0.0, 0.0))))


def _template(optics: _Optics, scan_shape: tuple[int, int], pattern_shape: tuple[int, int]) -> FourDSTEM:
    """A dataset carrying only the geometry (its patterns are a zero-size broadcast view)."""
    zeros = np.broadcast_to(np.zeros((), np.float32), (*scan_shape, *pattern_shape))
    return FourDSTEM(zeros, optics.energy, optics.scan_step, optics.angular_sampling, optics.semiangle,
                     dict(optics.aberrations), optics.scan_origin)


class MeasurementModel:
    """Phase image → model patterns at every scan position of ``dataset`` (differentiable in the phase).

    Parameters
    ----------
    dataset : the scan (only its geometry and optics are used: pattern shape, angular sampling, energy,
        semiangle, aberrations, positions).
    phase_shape, phase_sampling : the phase images' grid (pixels, Å/px; pixel (0, 0) at 0 Å).
    periodic : wrap the image around (a periodic specimen cell); None: when the scan spans the image.
    preprocess : compare with patterns preprocessed this way (crop/bin applied to the model patterns too,
        the intensity scaling undone on the measured ones); None: raw fftshift-ed intensities.
    phase_scale : multiplies the image first (σ for a projected-potential image in V·Å; 1 for rad).
    """

    def __init__(self, dataset: FourDSTEM, phase_shape: tuple[int, int], phase_sampling: tuple[float, float],
                 periodic: bool | None = None, preprocess: Preprocess | None = None, phase_scale: float = 1.0,
                 chunk: int = DEFAULT_CHUNK):
        if dataset.semiangle is None:
            raise ConfigError("measurement residual: the data carry no probe semiangle (mrad), so the nominal "
                              "probe is unknown")
        self.experiment = Experiment.from_dataset(dataset, n_probe_modes=1, on_band_limit="ignore")
        self.sampling = self.experiment.sampling
        self.object_shape = self.experiment.object_shape
        self.origin_px = self.experiment.origin_px
        self.scan_shape = dataset.scan_shape
        self.pattern_shape = dataset.pattern_shape
        self.phase_shape = (int(phase_shape[0]), int(phase_shape[1]))
        self.phase_sampling = (float(phase_sampling[0]), float(phase_sampling[1]))
        if periodic is None:
            span = [dataset.scan_shape[a] * dataset.scan_step[a] for a in (0, 1)]
            cell = [self.phase_shape[a] * self.phase_sampling[a] for a in (0, 1)]
            periodic = all(abs(s - c) <= 1e-3 * c for s, c in zip(span, cell, strict=True))
        self.periodic = bool(periodic)
        self.preprocess = preprocess
        self.phase_scale = float(phase_scale)
        self.chunk = int(chunk)
        self.block_selection: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_file(cls, path: str | Path, geometry: BlockGeometry, pattern_shape: tuple[int, int],
                  preprocess: Preprocess | None = None, phase_scale: float = 1.0,
                  periodic: bool | None = None) -> MeasurementModel:
        """The model of a seed-000 training file's samples (optics from its root attributes)."""
        optics = optics_from_file(path)
        if optics is None:
            raise ConfigError(f"{path}: no optics attributes (energy, semiangle, angular_sampling): the nominal "
                              "probe for the measurement residual is unknown (original-generator file?)")
        optics.scan_step, optics.scan_origin = tuple(geometry.scan_step), tuple(geometry.scan_origin)
        ds = _template(optics, tuple(geometry.scan_shape), tuple(pattern_shape))
        return cls(ds, geometry.phase_shape, geometry.phase_sampling, periodic, preprocess, phase_scale)

    def with_blocks(self, geometry: BlockGeometry) -> MeasurementModel:
        """Record the block layout of End2End batches (:func:`block_scan_indices`; used by
        :func:`consistency_loss`); returns ``self``."""
        self.block_selection = block_scan_indices(geometry)
        return self

    @property
    def n_positions(self) -> int:
        return self.experiment.n_positions

    # ---- object ------------------------------------------------------------------------------
    def object_phase(self, phase: torch.Tensor) -> torch.Tensor:
        """(Ny, Nx) phase image (rad after ``phase_scale``) → (Ny_obj, Nx_obj) phase in the model's object frame."""
        img = phase.float() * self.phase_scale
        if tuple(img.shape) != self.phase_shape:
            raise ShapeError(f"phase image {tuple(img.shape)} does not match the grid {self.phase_shape}")
        img = resample_image(img, self.phase_sampling, self.sampling)
        h, w = img.shape
        Ny, Nx = self.object_shape
        oy, ox = self.origin_px
        if self.periodic:
            iy = (torch.arange(Ny, device=img.device) - oy) % h
            ix = (torch.arange(Nx, device=img.device) - ox) % w
            return img[iy[:, None], ix[None, :]]
        img = img[: max(0, Ny - oy), : max(0, Nx - ox)]
        return F.pad(img, (ox, Nx - ox - img.shape[1], oy, Ny - oy - img.shape[0]))

    # ---- patterns ----------------------------------------------------------------------------
    def intensities(self, phase: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Model patterns (B, H, W) fftshift-ed like measured data (after ``preprocess``'s crop/bin, if any), for
        flat scan indices ``index`` (all when None); differentiable in ``phase``."""
        obj = torch.polar(torch.ones((), device=phase.device), self.object_phase(phase))[None, None]
        self.experiment.to(phase.device)
        idx = torch.arange(self.n_positions, device=phase.device) if index is None else index.to(phase.device)
        inten = self.experiment.patterns(obj, index=idx)
        if self.preprocess is not None:
            inten = self.preprocess.detector(tuple(inten.shape[-2:])).reduce(inten)
        return inten

    def residual_per_pattern(self, phase: torch.Tensor, measured: torch.Tensor, index: torch.Tensor | None = None,
                             preprocessed: bool = False) -> torch.Tensor:
        """r_j (B,) of ``phase`` against ``measured`` (B, H, W) patterns at flat scan indices ``index`` (all
        positions, in scan order, when None). ``preprocessed``: ``measured`` went through ``preprocess``."""
        if preprocessed:
            if self.preprocess is None:
                raise ConfigError("preprocessed patterns need the MeasurementModel's preprocess")
            measured = unscale(measured, self.preprocess)
        n = measured.shape[0]
        idx = torch.arange(n) if index is None else torch.as_tensor(index).reshape(-1)
        if len(idx) != n:
            raise ShapeError(f"{n} measured patterns but {len(idx)} scan indices")
        parts = []
        for a in range(0, n, self.chunk):
            sel = idx[a:a + self.chunk]
            model_amp = normalised_amplitudes(self.intensities(phase, sel))
            meas_amp = normalised_amplitudes(measured[a:a + self.chunk].to(phase.device))
            if model_amp.shape != meas_amp.shape:
                raise ShapeError(f"model patterns {tuple(model_amp.shape[-2:])} and measured patterns "
                                 f"{tuple(meas_amp.shape[-2:])} differ")
            parts.append((model_amp - meas_amp).square().sum((-2, -1)))
        return torch.cat(parts)


def measurement_residual(phase, dataset: FourDSTEM, phase_sampling: tuple[float, float] | None = None,
                         periodic: bool | None = None, phase_scale: float = 1.0,
                         model: MeasurementModel | None = None) -> dict[str, Any]:
    """Data residual of one phase image (Ny, Nx) against the measured patterns of ``dataset``.

    ``phase_sampling`` (Å/px) defaults to the model's pixel λ/(H·Δk). Returns ``{"residual": float`` (mean of
    r_j, see the module docstring), ``"map": (Sy, Sx) ndarray`` (r_j per scan position), ``"periodic": bool}``.
    Without gradients; use :class:`MeasurementModel` for a differentiable residual.
    """
    phase_t = torch.as_tensor(np.asarray(phase, dtype=np.float32)) if not isinstance(phase, torch.Tensor) \
        else phase.detach().float()
    if model is None:
        sampling = tuple(dataset.sampling) if phase_sampling is None else tuple(phase_sampling)
        model = MeasurementModel(dataset, tuple(phase_t.shape), sampling, periodic, phase_scale=phase_scale)
    with torch.no_grad():
        meas = dataset.get_patterns()
        r = model.residual_per_pattern(phase_t, meas)
    per = r.double().cpu().numpy()
    return {"residual": float(per.mean()), "map": per.reshape(dataset.scan_shape).astype(np.float32),
            "periodic": model.periodic}


def block_scan_indices(geometry: BlockGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(block, pattern-in-block, flat scan index) of each scan position the blocks cover, once each (the first
    block holding it), in order of the scan index."""
    b = geometry.block
    seen: dict[int, tuple[int, int]] = {}
    for k, (y0, x0) in enumerate(geometry.blocks()):
        for t in range(b * b):
            flat = (y0 + t // b) * geometry.scan_shape[1] + x0 + t % b
            seen.setdefault(flat, (k, t))
    flat = np.array(sorted(seen), np.int64)
    kt = np.array([seen[i] for i in flat], np.int64).reshape(-1, 2)
    return kt[:, 0], kt[:, 1], flat


def consistency_loss(pred_phase: torch.Tensor, batch: dict[str, torch.Tensor], model: MeasurementModel,
                     weight: float = 1.0) -> torch.Tensor:
    """``weight`` × mean data residual of predicted phases (B, Ny, Nx) against the batch's preprocessed patterns
    (``batch["patterns"]`` (B, n_blocks, block², H', W'), an End2End/:class:`~phasestem.learn.data.SampleDataset`
    batch); each covered scan position counts once. Differentiable in ``pred_phase``."""
    if model.preprocess is None:
        raise ConfigError("consistency_loss needs a MeasurementModel built with the training preprocess")
    if model.block_selection is None:
        raise ConfigError("consistency_loss needs a MeasurementModel with a block layout (with_blocks)")
    ks, ts, flat = model.block_selection
    pats = batch["patterns"]
    ks_t, ts_t, flat_t = (torch.as_tensor(v, device=pats.device) for v in (ks, ts, flat))
    total = pred_phase.new_zeros(())
    for j in range(pred_phase.shape[0]):
        meas = pats[j][ks_t, ts_t]
        total = total + model.residual_per_pattern(pred_phase[j], meas, flat_t.cpu(), preprocessed=True).mean()
    return weight * total / pred_phase.shape[0]

