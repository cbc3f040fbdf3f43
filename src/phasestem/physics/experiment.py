"""THE experiment of one scan: probe, object frame, positions, forward model and detector response.

An :class:`Experiment` says what a measured pattern is, given an object: the nominal probe (from the optics, or one
given), the object frame (the scanned field plus a margin of half a window and ``object_padding`` pixels, with
the dataset's 0 Å at ``origin``), the scan positions in that frame, the multislice forward model
(:class:`~phasestem.physics.operator.ForwardModel`) and the detector response (the model's far field binned onto
the detector by the one bin rule when the window is ``oversampling`` times the detector, its central detector pixels
kept when the object pixel is ``upsampling`` times finer than the detector's (:mod:`.upsampling`), the detector's
blur, and the descan: a sub-pixel shift of each pattern). :meth:`Experiment.from_dataset` builds it from a
:class:`~phasestem.dataset.FourDSTEM`; :meth:`Experiment.intensities` computes model patterns.

Used by the reconstruction (:class:`phasestem.recon.model.Ptychography` optimises an object, probe and positions
over one), by the learned route's measurement check (:mod:`phasestem.learn.consistency`) and by the small
simulators of tests and demos. Intensities are in normalised units: the nominal probe has Σ|ψ|² = 1.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field
from torch import nn

from ..base.configfile import FiniteModel, validate
from ..base.errors import ConfigError, ShapeError
from ..detector import detector_response
from . import optics
from .operator import ForwardModel
from .optics import BandLimitAction
from .resample import BAND_LIMITED, resample_image
from .upsampling import choose_upsampling, finer_probe, padded_spectrum

#: the probe aperture's edge: soft, hard, or the edge measured from the data's mean pattern (physics.aperture)
ApertureEdge = Literal["soft", "hard", "measured"]


class ExperimentSettings(FiniteModel):
    """The experiment's settings a parameter file's ``model`` section names: declared here once, the section
    (:class:`phasestem.recon.settings.model.ModelConfig`) extends it and :class:`ExperimentOptions` adds what a
    program gives beside them."""

    n_probe_modes: int = Field(1, ge=1, le=64, description="number of probe modes M (mixed state), at most 64")
    source_size: float | None = Field(None, gt=0, description="source FWHM in Å to seed the probe modes")
    mode_power: float = Field(0.02, ge=0, lt=1, description="start intensity fraction of the higher probe modes")
    object_padding: int | None = Field(None, ge=0, description="object pixels beyond every window (default ⌈N/8⌉)")
    antialias: bool = Field(False, description="apply the 2/3 band limit in the propagator")
    detector_blur: float = Field(0.0, ge=0, description="Gaussian σ (detector pixels) of the detector blur")
    upsampling: Annotated[int, Field(ge=1, le=4)] | Literal["auto"] = Field(
        "auto", description="object pixels this many times finer than the detector's λ/(N·Δk), over the same window "
        "extent: the model's far field on as many times the detector's grid at the same Δk, of which the detector "
        "measures the central part (scattering beyond it is computed and dropped). auto (default): the smallest "
        "factor whose anti-aliased band (2/3 Nyquist) holds the probe's semi-angle (at most 4; 300 keV, 30 mrad, "
        "64 px of 0.984 mrad: 2, so scattering past the detector is dropped, not wrapped back in; the probe itself "
        "fits the detector's grid up to its Nyquist 31.5 mrad), logged with its reason and recorded in results.h5's "
        "geometry; 1 keeps the detector's grid (a program's default: Ptychography.from_dataset(ds) keeps it unless "
        "told). A restorer trained at another pixel refuses the run")


class ExperimentOptions(ExperimentSettings):
    """How an :class:`Experiment` is built from a dataset (:meth:`Experiment.from_dataset`): the settings, and a
    ``probe`` (M, ny, nx) to start from instead of the nominal one, what a band-limited probe does
    (``on_band_limit``), the aperture's edge, a window ``oversampling`` × the detector and the per-pattern descan
    ``detector_shifts`` (N, 2) px. Frozen; a program's default pixel is the detector's (``upsampling`` 1)."""

    model_config = ConfigDict(frozen=True)

    upsampling: Annotated[int, Field(ge=1, le=4)] | Literal["auto"] = 1
    probe: Any = None
    on_band_limit: BandLimitAction = "warn"
    aperture_edge: ApertureEdge = "soft"
    oversampling: int = Field(1, ge=1)
    detector_shifts: Any = None

    def replaced(self, **keywords):
        """These options with ``keywords`` replacing fields: an unknown name is a TypeError naming it (as a call's
        is), a bad value one ConfigError line."""
        unknown = sorted(set(keywords) - set(type(self).model_fields))
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r} (the options: "
                            f"{', '.join(type(self).model_fields)})")
        return validate(type(self), {**dict(self), **keywords}, "model options") if keywords else self


def _oversampling(value, name: str = "oversampling") -> int:
    if int(value) < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value}")
    return int(value)


def nominal_probe(dataset, window: tuple[int, int], n_probe_modes: int = 1, probe=None,
                  source_size: float | None = None, mode_power: float = 0.02, on_band_limit: BandLimitAction = "warn",
                  aperture_edge: ApertureEdge = "soft", upsampling: int = 1, antialias: bool = False
                  ) -> torch.Tensor:
    """Probe modes (M, ny, nx) complex64, Σ|ψ|² = 1, on a ``window`` at the dataset's real-space sampling divided
    by ``upsampling``.

    ``on_band_limit`` says what a semi-angle beyond the band the model keeps does (:func:`model_band`: the grid's
    Nyquist frequency, 2/3 of it with ``antialias``, whose propagator masks the wave beyond): only there is the
    probe truncated. The 30 mrad probe on the 0.3125 Å pixel of 64 px of 0.984 mrad at 300 keV lies inside the
    grid's 31.5 mrad and is whole; its scattering beyond the detector is what ``upsampling`` adds
    (:mod:`.upsampling`), not the probe.

    From the dataset optics (``optics.make_probe``; semiangle, aberrations) unless ``probe`` (M, ny, nx) is given
    (on the ``window``, or on the detector's pixel: ``window`` / ``upsampling``, then interpolated onto the finer
    pixels by :func:`~phasestem.physics.upsampling.finer_probe`); more modes from ``source_size`` (Å FWHM,
    ``optics.partial_coherence_modes``) or ``optics.initial_probe_modes`` (``mode_power``). ``aperture_edge``:
    'soft', 'hard' or 'measured' (:mod:`phasestem.physics.aperture`).
    """
    u = int(upsampling)
    sampling = tuple(float(s) / u for s in dataset.sampling)
    if probe is not None:
        probe_t = torch.as_tensor(probe)
        if probe_t.dim() == 2:
            probe_t = probe_t[None]
        coarse = (window[0] // u, window[1] // u)
        if u > 1 and tuple(probe_t.shape[-2:]) == coarse:
            probe_t = finer_probe(probe_t, u)
        if tuple(probe_t.shape[-2:]) != tuple(window):
            f = coarse[0] // dataset.pattern_shape[0]
            what = "the pattern shape" if f == 1 else f"{f} × the pattern shape"
            also = f" (or {coarse}, the detector's pixel, with upsampling {u})" if u > 1 else ""
            raise ShapeError(f"probe window {tuple(probe_t.shape[-2:])} must equal {what} {window}{also}")
        probe_t = probe_t.to(torch.complex64)
        if probe_t.shape[0] < n_probe_modes:
            extra = optics.initial_probe_modes(probe_t[0], n_probe_modes - probe_t.shape[0] + 1, mode_power)[1:]
            probe_t = torch.cat([probe_t, extra * probe_t.abs().square().sum().sqrt()])
        return probe_t / probe_t.abs().square().sum().sqrt()
    if dataset.semiangle is None:
        raise ConfigError("dataset has no semiangle (mrad): give optics.semiangle or an explicit probe")
    amplitude = None
    if aperture_edge == "measured":
        from .aperture import measured_aperture

        ang = optics.angular_sampling_for(dataset.energy, sampling, window)
        amplitude = measured_aperture(dataset.mean_pattern(), dataset.semiangle / float(np.mean(ang)))
        if u > 1:  # the detector's k-grid inside the finer window's (the same Δk)
            amplitude = padded_spectrum(amplitude, window)
    elif aperture_edge not in ("soft", "hard"):
        raise ConfigError(f"aperture_edge must be 'soft', 'hard' or 'measured', got {aperture_edge!r}")
    optics.check_band_limit(dataset.semiangle, window, sampling, dataset.energy, on_band_limit,
                            model_band(antialias))
    nominal = optics.make_probe(window, sampling, dataset.energy, dataset.semiangle, dataset.aberrations,
                                soft=aperture_edge == "soft", on_band_limit="ignore", amplitude=amplitude)
    if n_probe_modes > 1 and source_size:
        return optics.partial_coherence_modes(nominal, sampling, source_size, n_probe_modes)[0]
    return optics.initial_probe_modes(nominal, n_probe_modes, mode_power)


def model_band(antialias: bool) -> float:
    """The share of the grid's Nyquist frequency a model's probe must lie in to be whole: all of it (the grid holds
    every frequency up to Nyquist, and nothing in the model masks the wave), 2/3 with ``antialias`` (the propagator
    masks the wave beyond :data:`~phasestem.physics.optics.ANTIALIAS_FRACTION` of Nyquist)."""
    return optics.ANTIALIAS_FRACTION if antialias else 1.0


def object_frame(positions: np.ndarray, sampling: tuple[float, float], window: tuple[int, int],
                 padding: int | None = None) -> tuple[tuple[int, int], tuple[float, float]]:
    """The object frame of a scan: ``(object_shape (Ny, Nx) px, origin (y, x) Å)``.

    Every probe window fits with ``padding`` px to spare (default ⌈window/8⌉); ``origin`` is a whole number of
    pixels: object-frame position = dataset position + origin.
    """
    pad = int(math.ceil(max(window) / 8)) if padding is None else int(padding)
    pos_px = torch.as_tensor(positions, dtype=torch.float32) / torch.tensor(sampling)
    lo = torch.floor(pos_px.min(0).values)
    hi = torch.ceil(pos_px.max(0).values)
    half = torch.tensor([window[0] // 2, window[1] // 2], dtype=torch.float32)
    origin_px = half + pad - lo
    shape = (int(hi[0] - lo[0]) + window[0] + 2 * pad + 1, int(hi[1] - lo[1]) + window[1] + 2 * pad + 1)
    return shape, (float(origin_px[0]) * sampling[0], float(origin_px[1]) * sampling[1])


#: :func:`scanned_field`: a probe centre this close to a whole pixel (px) is on it
ON_PIXEL = 1e-3


def scanned_field(positions, sampling: tuple[float, float], object_shape: tuple[int, int]) -> tuple[slice, slice]:
    """The object pixels (rows, columns) inside the bounding box of the probe centres ``positions`` (N, 2) Å in the
    object frame (NumPy or torch; a model's ``positions``), on pixels of ``sampling`` Å, within an object of
    ``object_shape`` (Ny, Nx): what the scan determines. A centre within :data:`ON_PIXEL` px of a whole pixel counts
    as on it, so that float rounding of a raster on whole pixels (float32 positions) moves no edge by a pixel."""
    if isinstance(positions, torch.Tensor):
        positions = positions.detach().cpu().double().numpy()
    centres_px = np.asarray(positions, dtype=np.float64).reshape(-1, 2) / np.asarray(sampling, dtype=np.float64)
    lo = np.clip(np.floor(centres_px.min(0) + ON_PIXEL).astype(int), 0, None)
    hi = np.minimum(np.ceil(centres_px.max(0) - ON_PIXEL).astype(int) + 1, object_shape)
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))


class Experiment(nn.Module):
    """Probe, object frame, positions, forward model and detector response of one scan (see the module docstring).

    Parameters
    ----------
    probe : (M, ny, nx) or (ny, nx) complex nominal probe modes; (ny, nx) is the window, ``oversampling`` ×
        ``upsampling`` times the detector's pattern shape.
    positions : (N, 2) probe centres in Å in the object frame (object pixel (0, 0) at 0 Å).
    object_shape : (Ny, Nx) object pixels (periodic: a cell may be smaller than the window); sampling : (dy, dx)
        Å; energy : eV.
    origin : (y, x) Å of the dataset's 0 Å in the object frame.
    antialias : band-limit each propagator (2/3 Nyquist).
    oversampling : the far field is binned by this factor onto the detector (the one bin rule).
    upsampling : the object pixel ``sampling`` is this many times finer than the detector's (λ/(N·Δk)): the binned
        far field is this many times the detector's extent, of which the detector measures the central part.
    upsampling_reason : why (one line for the run log: :func:`~phasestem.physics.upsampling.choose_upsampling`).
    detector_blur : σ of the detector's Gaussian point spread, detector pixels (0: none).
    detector_shifts : (N, 2) detector px each measured pattern's zero frequency lies off the central pixel
        (the descan left in the data); the model's patterns are displaced alike (None: none).
    """

    def __init__(self, probe, positions, object_shape: tuple[int, int], sampling: tuple[float, float],
                 energy: float, origin: tuple[float, float] = (0.0, 0.0), antialias: bool = False,
                 oversampling: int = 1, detector_blur: float = 0.0, detector_shifts=None, *, upsampling: int = 1,
                 upsampling_reason: str = ""):
        super().__init__()
        probe = torch.as_tensor(probe)
        if probe.dim() == 2:
            probe = probe[None]
        if not probe.is_complex():
            raise ShapeError(f"probe must be complex (M, ny, nx), got dtype {probe.dtype}")
        self.window = (int(probe.shape[-2]), int(probe.shape[-1]))
        self.sampling = (float(sampling[0]), float(sampling[1]))
        self.energy = float(energy)
        self.origin = (float(origin[0]), float(origin[1]))
        self.object_shape = (int(object_shape[0]), int(object_shape[1]))
        positions = torch.as_tensor(positions, dtype=torch.float32)
        if positions.dim() != 2 or positions.shape[1] != 2:
            raise ShapeError(f"positions must be (N, 2) Å, got shape {tuple(positions.shape)}")
        self.oversampling = _oversampling(oversampling)
        self.upsampling = _oversampling(upsampling, "upsampling")
        self.upsampling_reason = str(upsampling_reason)
        if self.window[0] % (self.oversampling * self.upsampling) or self.window[1] % (self.oversampling *
                                                                                        self.upsampling):
            raise ShapeError(f"probe window {self.window} is not a whole multiple of oversampling × upsampling "
                             f"{self.oversampling} × {self.upsampling}")
        self.detector_blur = float(detector_blur)
        self.forward_model = ForwardModel(self.window, self.sampling, self.energy, antialias=antialias, centred=False)
        self.register_buffer("probe", probe, persistent=False)
        self.register_buffer("positions", positions.clone(), persistent=False)
        self.register_buffer("detector_shifts", None, persistent=False)
        self.set_detector_shifts(detector_shifts)

    @classmethod
    def from_dataset(cls, dataset, options: ExperimentOptions | None = None, **keywords) -> Experiment:
        """The experiment of ``dataset`` (a :class:`~phasestem.dataset.FourDSTEM`) built as ``options`` say
        (:class:`ExperimentOptions`; its fields may also be given as keywords, which replace those of ``options``):
        the probe of :func:`nominal_probe` on a window ``oversampling`` × ``upsampling`` × the pattern shape, the
        frame of :func:`object_frame` (``object_padding``), the dataset's positions moved into it, and the detector
        response. Object pixels are the dataset's divided by u = ``upsampling`` ('auto': the optics decide,
        :func:`~phasestem.physics.upsampling.choose_upsampling`), the window u × as many over the same extent."""
        o = (options or ExperimentOptions()).replaced(**keywords)
        oversampling = o.oversampling
        u, why = choose_upsampling(o.upsampling, dataset.semiangle, tuple(dataset.sampling), dataset.energy)
        window = tuple(int(n) * oversampling * u for n in dataset.pattern_shape)
        sampling = tuple(float(s) / u for s in dataset.sampling)
        probe_t = nominal_probe(dataset, window, o.n_probe_modes, o.probe, o.source_size, o.mode_power,
                                o.on_band_limit, o.aperture_edge, u, o.antialias)
        pos = torch.as_tensor(dataset.positions_angstrom(), dtype=torch.float32)
        shape, origin = object_frame(pos, sampling, window, o.object_padding)
        return cls(probe_t, pos + torch.tensor(origin), shape, sampling, dataset.energy, origin, o.antialias,
                   oversampling, o.detector_blur, o.detector_shifts, upsampling=u, upsampling_reason=why)

    # ---- geometry ------------------------------------------------------------------------------
    @property
    def n_positions(self) -> int:
        return int(self.positions.shape[0])

    @property
    def detector_shape(self) -> tuple[int, int]:
        """Pattern shape on the detector: the window divided by :attr:`oversampling` and :attr:`upsampling`."""
        f = self.oversampling * self.upsampling
        return (self.window[0] // f, self.window[1] // f)

    @property
    def detector_sampling(self) -> tuple[float, float]:
        """The real-space pixel (Å) the detector's grid gives, λ/(N·Δk): :attr:`sampling` × :attr:`upsampling`."""
        return (self.sampling[0] * self.upsampling, self.sampling[1] * self.upsampling)

    @property
    def origin_px(self) -> tuple[int, int]:
        """The dataset's pixel (0, 0) in object pixels."""
        return round(self.origin[0] / self.sampling[0]), round(self.origin[1] / self.sampling[1])

    def set_detector_shifts(self, shifts) -> None:
        """Displace the model pattern of position j by ``shifts[j]`` (N, 2) detector px (row, col), toward larger
        indices: the descan of data whose patterns were not resampled to a common centre (None: no shifts)."""
        if shifts is None:
            self.detector_shifts = None
            return
        t = torch.as_tensor(np.asarray(shifts, dtype=np.float32) if not torch.is_tensor(shifts) else shifts,
                            dtype=torch.float32)
        if t.shape != (self.n_positions, 2) or not bool(torch.isfinite(t).all()):
            raise ShapeError(f"detector shifts must be finite (N, 2) = ({self.n_positions}, 2) px, got "
                             f"{tuple(t.shape)}")
        self.detector_shifts = t.to(self.positions.device)

    # ---- images in the dataset frame -------------------------------------------------------------
    def image_region(self, image, sampling: tuple[float, float] | None = None, order: str = BAND_LIMITED
                     ) -> tuple[torch.Tensor, tuple[slice, slice]]:
        """A 2-D image (rad) in the dataset frame (pixel (0, 0) at 0 Å), resampled to the object pixel when
        ``sampling`` (Å) differs (:func:`phasestem.physics.resample.resize` of ``order``, band-limited by default: a
        phase image keeps its lattice) and cut to the object: (image (h, w) float32, (y, x) slices of the
        object it covers)."""
        img = torch.as_tensor(np.asarray(image, dtype=np.float32)) if not torch.is_tensor(image) else image.float()
        if img.dim() != 2:
            raise ShapeError(f"phase image must be 2-D (y, x), got shape {tuple(img.shape)}")
        if sampling is not None and tuple(sampling) != self.sampling:
            img = resample_image(img, sampling, self.sampling, order=order)
        oy, ox = self.origin_px
        Ny, Nx = self.object_shape
        # image pixels before the object frame's first pixel (origin < 0: the dataset's 0 Å lies outside it)
        sy, sx = max(0, -oy), max(0, -ox)
        h, w = min(img.shape[0], Ny - oy), min(img.shape[1], Nx - ox)
        h, w = max(h, sy), max(w, sx)  # no overlap with the object: an empty region
        return img[sy:h, sx:w], (slice(oy + sy, oy + h), slice(ox + sx, ox + w))

    def in_dataset_frame(self, planes: torch.Tensor, shape: tuple[int, int] | None = None) -> torch.Tensor:
        """Object-frame planes (..., Ny, Nx) cropped to the dataset frame (pixel (0, 0) at the dataset's 0 Å), at
        most ``shape`` pixels; dataset pixels before the object frame (a negative origin) are 0."""
        oy, ox = self.origin_px
        Ny, Nx = planes.shape[-2:]
        h, w = (Ny - oy, Nx - ox) if shape is None else (min(shape[0], Ny - oy), min(shape[1], Nx - ox))
        if oy >= 0 and ox >= 0:
            return planes[..., oy : oy + h, ox : ox + w]
        sy, sx = max(0, -oy), max(0, -ox)  # dataset pixels before the object frame
        out = torch.zeros((*planes.shape[:-2], max(h, 0), max(w, 0)), dtype=planes.dtype)
        out[..., sy:, sx:] = planes[..., oy + sy : oy + h, ox + sx : ox + w]
        return out

    # ---- patterns ------------------------------------------------------------------------------
    def intensities(self, obj: torch.Tensor, probe: torch.Tensor | None = None,
                    positions: torch.Tensor | None = None, index: torch.Tensor | None = None,
                    dz: float | torch.Tensor = 1.0, tilt: torch.Tensor | None = None,
                    object_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Model patterns (B, h, w) on the detector, fftfreq order (unshifted); differentiable.

        ``obj`` (K, S, Ny, Nx) or (S, Ny, Nx) complex transmission in the object frame; ``probe`` (M, ny, nx)
        (default: the nominal one); ``index`` (B,) flat scan indices, whose descan shifts apply (all when None);
        ``positions`` (B, 2) Å in the object frame (default: the experiment's at ``index``); ``dz`` slice
        thickness (Å), ``tilt`` (2,) or (B, 2) mrad, ``object_weights`` (K,) object-mode occupancies.
        """
        probe = self.probe if probe is None else probe
        if positions is None:
            positions = self.positions if index is None else self.positions[index]
        shifts = None
        if self.detector_shifts is not None:
            rows = self.detector_shifts if index is None else self.detector_shifts[index]
            shifts = rows * self.oversampling
        inten = self.forward_model(obj, probe, positions, dz, tilt, object_weights, shifts)
        shape = self.detector_shape if self.upsampling > 1 else None
        return detector_response(inten, self.oversampling, self.detector_blur, shape)

    def patterns(self, obj: torch.Tensor, **options) -> torch.Tensor:
        """:meth:`intensities` fftshift-ed like measured data (zero frequency at (h//2, w//2))."""
        return torch.fft.fftshift(self.intensities(obj, **options), dim=(-2, -1))
