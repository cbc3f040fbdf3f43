"""Electron optics and THE sign conventions of phasestem.

Every other module takes its conventions from here; none restates them.

Conventions
-----------
* Units: lengths in Å, energies in eV, semi-angles in mrad, aberration coefficients in Å,
  aberration azimuths in rad, phases in rad, projected potentials in V·Å.
* Arrays are (row, col) = (y, x); pairs are always given as (y, x).
* Fourier transforms are ``torch.fft.fft2(..., norm="ortho")``: unitary, so the total
  intensity of a wave is the same in real and reciprocal space. Internally reciprocal-space
  arrays are unshifted (zero frequency at index 0, ``fftfreq`` order). Diffraction
  patterns handed to users and stored in files are ``fftshift``-ed: zero frequency at
  index ``(H // 2, W // 2)``.
* Phase factors: a shift of a wave by ``s`` (its content moves to larger coordinates),
  ``f(r - s)``, multiplies its spectrum by ``exp(-2πi k·s)``.
* Free-space propagation by ``Δz > 0`` (downstream) multiplies the spectrum by
  ``exp(-iπλ|k|²Δz)``; specimen tilt (θy, θx) adds ``exp(+2πiΔz(ky·tanθy + kx·tanθx))``.
* Aberrations (Krivanek polar notation):
  ``χ(α, φ) = (2π/λ) Σ C_nm α^(n+1)/(n+1) cos(m(φ − φ_nm))`` with ``α = λ|k|`` and
  ``φ = atan2(ky, kx)``; the probe is ``ψ(k) = A(k)·exp(−iχ(k))``.
  Hence ``C10 > 0`` (over-focus) gives the focused probe propagated downstream by ``C10``:
  the crossover lies ``C10`` Å *before* the entrance surface. abTEM's and py4DSTEM's
  ``defocus`` is ``−C10``.
* A probe window of shape (ny, nx) has the probe centre at pixel (ny // 2, nx // 2).
  Scan positions (Å) are the probe centre in object coordinates, where object pixel
  (0, 0) sits at (0 Å, 0 Å).
* The transmission function of a slice is ``exp(iσ·V_proj)`` (times an amplitude in
  reconstruction); the phase image is ``σ·V_proj`` in rad.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..base.lazy import LazyModule

torch = LazyModule("torch")  # imported on first use: the constants and wavelength() need no torch (a light CLI)

#: what a probe beyond the grid's anti-aliased band does: refuse, warn, or pass silently
BandLimitAction = Literal["raise", "warn", "ignore"]

# CODATA 2018
_H = 6.62607015e-34  # J s
_E = 1.602176634e-19  # C
_M0 = 9.1093837015e-31  # kg
_C = 299792458.0  # m/s

#: Default fraction of Nyquist kept by the anti-aliasing band limit (as abTEM).
ANTIALIAS_FRACTION = 2.0 / 3.0
#: Width of its raised-cosine edge in units of 1 / pixel size (as abTEM's default).
ANTIALIAS_TAPER = 0.01

#: Aberration symbols -> (n, m); the azimuth of C_nm (m > 0) is ``phi{n}{m}``.
ABERRATION_ORDERS: dict[str, tuple[int, int]] = {
    "C10": (1, 0), "C12": (1, 2),
    "C21": (2, 1), "C23": (2, 3),
    "C30": (3, 0), "C32": (3, 2), "C34": (3, 4),
    "C41": (4, 1), "C43": (4, 3), "C45": (4, 5),
    "C50": (5, 0), "C52": (5, 2), "C54": (5, 4), "C56": (5, 6),
}


class BandLimitError(ValueError):
    """A probe or detector angle exceeds the anti-aliased band limit of the grid."""


def wavelength(energy: float) -> float:
    """Relativistic electron wavelength (Å) for a beam energy in eV."""
    if energy <= 0:
        raise ValueError(f"energy must be positive (eV), got {energy}")
    e_j = energy * _E
    p = math.sqrt(2 * _M0 * e_j * (1 + e_j / (2 * _M0 * _C**2)))
    return _H / p * 1e10


def energy_from_wavelength(wavelength_angstrom: float) -> float:
    """Electron kinetic energy (eV) for a relativistic wavelength in Å (the inverse of :func:`wavelength`)."""
    p = _H / (wavelength_angstrom * 1e-10)
    mc2 = _M0 * _C**2
    return (math.sqrt((p * _C) ** 2 + mc2**2) - mc2) / _E


def interaction_constant(energy: float) -> float:
    """Interaction constant σ (rad / (V·Å)): phase = σ · projected potential."""
    lam = wavelength(energy)
    mc2 = _M0 * _C**2 / _E  # eV
    return 2 * math.pi / (lam * energy) * (mc2 + energy) / (2 * mc2 + energy)


def probe_radius(energy: float, semiangle: float, aberrations: Mapping[str, float]) -> tuple[float, float, float]:
    """THE probe size of phasestem: (radius, geometric part, diffraction part) in Å, radius = √(r_geo² + r_diff²).

    ``r_geo`` = max over θ ≤ α of |C10·θ + C30·θ³| + |C12|·α (the ray displacement the aberration function gives a
    ray at angle θ, α the semi-angle ``semiangle`` in mrad; other aberrations are left out), ``r_diff`` = 0.61 λ/α
    (the Airy radius). A disk of this radius holds most of the probe's intensity (84 % of an aberration-free probe,
    the Airy disk; ~98 % at 30 mrad, Cs 0.1 mm), where a threshold on the peak intensity sees only the central
    peak of an aberrated probe (3.7 Å across there, against 54 Å by this rule).
    """
    lam = wavelength(energy)
    a = semiangle * 1e-3
    c10, c30 = float(aberrations.get("C10", 0.0)), float(aberrations.get("C30", 0.0))
    angles = [a]  # |C10·θ + C30·θ³| peaks at the aperture edge or where its derivative vanishes inside
    if c10 * c30 < 0 and -c10 / (3 * c30) < a * a:
        angles.append(math.sqrt(-c10 / (3 * c30)))
    geo = max(abs(c10 * t + c30 * t**3) for t in angles) + abs(float(aberrations.get("C12", 0.0))) * a
    diff = 0.61 * lam / a
    return math.hypot(geo, diff), geo, diff


def probe_size_text(energy: float, semiangle: float, aberrations: Mapping[str, float]) -> str:
    """:func:`probe_radius` with its rule, as ``phasestem plan`` and ``phasestem probe-extent`` both print it."""
    r, geo, diff = probe_radius(energy, semiangle, aberrations)
    return (f"radius {r:.3g} Å = √(r_aberr² + r_Airy²), r_aberr = {geo:.3g} Å the aberrations' largest ray "
            f"displacement over the aperture, r_Airy = 0.61 λ/α = {diff:.3g} Å")


def spatial_frequencies(
    shape: tuple[int, int], sampling: tuple[float, float], device=None, dtype=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D spatial frequencies (ky, kx) in Å⁻¹ in ``fftfreq`` order for a (ny, nx) grid."""
    dtype = torch.float32 if dtype is None else dtype
    ky = torch.fft.fftfreq(shape[0], d=sampling[0], device=device, dtype=dtype)
    kx = torch.fft.fftfreq(shape[1], d=sampling[1], device=device, dtype=dtype)
    return ky, kx


def k_grid(shape, sampling, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D frequency grids (KY, KX), each of shape (ny, nx), in Å⁻¹."""
    ky, kx = spatial_frequencies(shape, sampling, device, dtype)
    return torch.meshgrid(ky, kx, indexing="ij")


def band_limit_mrad(sampling: tuple[float, float], energy: float, fraction: float = ANTIALIAS_FRACTION) -> float:
    """Largest scattering semi-angle (mrad) kept by the anti-aliasing mask of a grid."""
    return fraction * wavelength(energy) / (2 * max(sampling)) * 1e3


def antialias_mask(shape, sampling, fraction: float = ANTIALIAS_FRACTION, taper: float = ANTIALIAS_TAPER,
                   device=None) -> torch.Tensor:
    """Anti-aliasing aperture (ny, nx) in [0, 1], fftfreq order: 1 inside |k| ≤ fraction · k_Nyquist, with a
    raised-cosine roll-off of width ``taper / max(sampling)`` (Å⁻¹) just inside the cut (0 = hard edge)."""
    KY, KX = k_grid(shape, sampling, device)
    k = torch.sqrt(KY**2 + KX**2)
    k_max = fraction / (2 * max(sampling))
    width = taper / max(sampling)
    if width <= 0:
        return (k <= k_max).float()
    edge = 0.5 * (1 + torch.cos(math.pi * (k - k_max + width) / width))
    return torch.where(k > k_max - width, edge, torch.ones_like(k)) * (k <= k_max)


@dataclass
class Aberrations:
    """Aberration coefficients in Å (``C10`` … ``C56``) and azimuths in rad (``phi12`` …).

    ``Aberrations.from_dict({"C10": 100, "Cs": 1e6, "defocus": -100})`` also accepts the
    aliases ``Cs`` (= C30), ``defocus`` (= −C10, abTEM's convention) and ``astigmatism``
    (= C12); an unknown key raises an error naming it.
    """

    coefficients: dict[str, float] = field(default_factory=dict)

    ALIASES = {"Cs": "C30", "astigmatism": "C12", "astigmatism_angle": "phi12", "coma": "C21",
               "coma_angle": "phi21", "C5": "C50"}

    @classmethod
    def from_dict(cls, values: Mapping[str, float] | None) -> Aberrations:
        out: dict[str, float] = {}
        for key, val in (values or {}).items():
            if key == "defocus":
                out["C10"] = out.get("C10", 0.0) - float(val)
                continue
            key = cls.ALIASES.get(key, key)
            valid = key in ABERRATION_ORDERS or (
                key.startswith("phi") and f"C{key[3:]}" in ABERRATION_ORDERS and ABERRATION_ORDERS[f"C{key[3:]}"][1] > 0
            )
            if not valid:
                raise ValueError(
                    f"unknown aberration '{key}': expected one of {sorted(ABERRATION_ORDERS)}, their azimuths "
                    "phiNM (rad), or the aliases Cs, defocus, astigmatism, coma"
                )
            out[key] = out.get(key, 0.0) + float(val)
        return cls(out)

    def get(self, key: str) -> float:
        return float(self.coefficients.get(key, 0.0))

    def to_dict(self) -> dict[str, float]:
        return dict(self.coefficients)


def checked_aberrations(values: Mapping[str, float]) -> Mapping[str, float]:
    """``values`` unchanged when every key is an aberration :meth:`Aberrations.from_dict` knows (else its
    ValueError naming the key): the one validator of the ``aberrations`` field of every configuration."""
    Aberrations.from_dict(values)
    return values


def aberration_phase(
    shape, sampling, energy: float, aberrations: Aberrations | Mapping[str, float] | None, device=None,
    dtype=None,
) -> torch.Tensor:
    """Aberration function χ(k) (rad), shape (ny, nx), fftfreq order. Differentiable in no input."""
    if not isinstance(aberrations, Aberrations):
        aberrations = Aberrations.from_dict(aberrations)
    lam = wavelength(energy)
    KY, KX = k_grid(shape, sampling, device, torch.float64)
    alpha = lam * torch.sqrt(KX**2 + KY**2)
    phi = torch.atan2(KY, KX)
    chi = torch.zeros_like(alpha)
    for name, (n, m) in ABERRATION_ORDERS.items():
        c = aberrations.get(name)
        if c == 0.0:
            continue
        azimuth = aberrations.get(f"phi{n}{m}") if m > 0 else 0.0
        chi = chi + c * alpha ** (n + 1) / (n + 1) * torch.cos(m * (phi - azimuth))
    return (2 * math.pi / lam * chi).to(torch.float32 if dtype is None else dtype)


def aperture(shape, sampling, energy: float, semiangle: float, soft: bool = True, device=None) -> torch.Tensor:
    """Condenser-aperture amplitude A(k) ∈ [0, 1], shape (ny, nx), for a semi-angle in mrad.

    ``soft`` rolls the edge off linearly over one reciprocal pixel, which removes the
    grid-dependent ringing of a hard edge without changing the probe measurably.
    """
    lam = wavelength(energy)
    KY, KX = k_grid(shape, sampling, device, torch.float64)
    alpha = lam * torch.sqrt(KX**2 + KY**2) * 1e3  # mrad
    if not soft:
        return (alpha <= semiangle).float()
    dalpha = lam * 1e3 / min(shape[0] * sampling[0], shape[1] * sampling[1])  # mrad per k-pixel
    return torch.clamp((semiangle - alpha) / dalpha + 0.5, 0.0, 1.0).float()


def check_band_limit(semiangle: float, shape, sampling, energy: float, on_violation: BandLimitAction = "raise",
                     fraction: float = ANTIALIAS_FRACTION) -> None:
    """Refuse (or warn about) a probe semi-angle beyond the band a grid keeps: ``fraction`` of its Nyquist frequency
    (the anti-aliased band, 2/3, where the propagation masks the wave beyond it, as the simulator's does; 1 where
    nothing does: the grid itself, whose frequencies stop at Nyquist)."""
    limit = band_limit_mrad(sampling, energy, fraction)
    if semiangle <= limit + 1e-9:
        return
    need = wavelength(energy) * fraction / (2 * semiangle * 1e-3)
    band = "anti-aliased band limit" if fraction == ANTIALIAS_FRACTION else (
        "band limit (its Nyquist frequency)" if fraction == 1.0 else f"band limit ({fraction:.3g} × Nyquist)")
    msg = (
        f"probe semi-angle {semiangle:g} mrad exceeds the {band} {limit:.1f} mrad of a grid "
        f"with {max(sampling):.4g} Å pixels at {energy / 1e3:g} keV; the probe would be silently truncated. "
        f"Use pixels of at most {need:.4g} Å (more grid points over the same extent)"
    )
    if on_violation == "raise":
        raise BandLimitError(msg + ", or pass on_band_limit='warn'.")
    if on_violation == "warn":
        warnings.warn(msg + ".", stacklevel=3)
    elif on_violation != "ignore":
        raise ValueError(f"on_band_limit must be 'raise', 'warn' or 'ignore', got {on_violation!r}")


def probe_spectrum(
    shape, sampling, energy: float, semiangle: float, aberrations=None, soft: bool = True, device=None,
    on_band_limit: BandLimitAction = "raise", amplitude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probe in reciprocal space, complex64 (ny, nx), fftfreq order, centred at window pixel (ny//2, nx//2).

    ``amplitude`` (ny, nx, fftfreq order) replaces the aperture A(k) (e.g. one measured from the
    bright-field disk, :func:`phasestem.physics.aperture.measured_aperture`).
    Normalised so that Σ|ψ(r)|² = Σ|ψ(k)|² = 1 (unitary FFT).
    """
    check_band_limit(semiangle, shape, sampling, energy, on_band_limit)
    if amplitude is not None:
        if tuple(amplitude.shape) != tuple(shape):
            raise ValueError(f"aperture amplitude of shape {tuple(amplitude.shape)} for a {tuple(shape)} probe")
        amp = amplitude.to(device=device, dtype=torch.float64)
    else:
        amp = aperture(shape, sampling, energy, semiangle, soft, device)
    chi = aberration_phase(shape, sampling, energy, aberrations, device, torch.float64)
    # place the probe centre at the window centre: multiply by exp(-2πi k·c), c = (ny//2, nx//2) px
    KY, KX = k_grid(shape, sampling, device, torch.float64)
    centre = (shape[0] // 2 * sampling[0], shape[1] // 2 * sampling[1])
    ramp = -2 * math.pi * (KY * centre[0] + KX * centre[1])
    spec = amp.double() * torch.exp(1j * (ramp - chi))
    spec = spec / torch.sqrt((spec.abs() ** 2).sum())
    return spec.to(torch.complex64)


def make_probe(
    shape: tuple[int, int], sampling: tuple[float, float], energy: float, semiangle: float,
    aberrations=None, soft: bool = True, device=None, on_band_limit: BandLimitAction = "raise",
    amplitude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Real-space probe, complex64 (ny, nx), centre at pixel (ny//2, nx//2), Σ|ψ|² = 1 (``amplitude``:
    see :func:`probe_spectrum`)."""
    spec = probe_spectrum(shape, sampling, energy, semiangle, aberrations, soft, device, on_band_limit, amplitude)
    return torch.fft.ifft2(spec, norm="ortho")


def partial_coherence_modes(
    probe: torch.Tensor, sampling: tuple[float, float], source_size: float, n_modes: int, n_samples: int = 7
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal probe modes of a Gaussian source of FWHM ``source_size`` (Å).

    The incoherent sum of laterally shifted copies of ``probe`` (weights from the source
    distribution, ``n_samples``² shifts over ±2σ) is decomposed by SVD.
    Returns ``(modes, occupancies)``: modes (n_modes, ny, nx) complex64 with Σ_m Σ|ψ_m|² = 1
    and occupancies (n_modes,) summing to 1.
    """
    from .fourier import fourier_shift

    sigma = source_size / (2 * math.sqrt(2 * math.log(2)))
    if sigma <= 0 or n_modes < 1:
        raise ValueError("partial_coherence_modes needs source_size > 0 Å and n_modes >= 1")
    offs = torch.linspace(-2 * sigma, 2 * sigma, n_samples, dtype=torch.float64)
    oy, ox = torch.meshgrid(offs, offs, indexing="ij")
    w = torch.exp(-(oy**2 + ox**2) / (2 * sigma**2)).flatten()
    w = w / w.sum()
    shifts = torch.stack([oy.flatten() / sampling[0], ox.flatten() / sampling[1]], -1)
    copies = fourier_shift(probe.to(torch.complex128).expand(len(w), *probe.shape), shifts)
    mat = (copies * w.sqrt()[:, None, None]).reshape(len(w), -1)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    occ = s[:n_modes] ** 2
    modes = vh[:n_modes] * s[:n_modes, None]
    modes = modes / torch.sqrt(occ.sum())
    return modes.reshape(n_modes, *probe.shape).to(torch.complex64), (occ / occ.sum()).float()


def initial_probe_modes(probe: torch.Tensor, n_modes: int, power: float = 0.1) -> torch.Tensor:
    """Start guess for ``n_modes`` probe modes: the probe plus orthogonalised Hermite-like variants.

    Mode 0 is ``probe``; mode j > 0 is ``probe`` times a low-order polynomial in (y, x)
    about the probe centre, orthogonalised and scaled so that the higher modes carry a
    total fraction ``power`` of the intensity. Returns (n_modes, ny, nx) complex64, Σ|ψ|² = 1.
    """
    ny, nx = probe.shape[-2:]
    y = torch.arange(ny, dtype=torch.float32) - ny // 2
    x = torch.arange(nx, dtype=torch.float32) - nx // 2
    Y, X = torch.meshgrid(y / ny, x / nx, indexing="ij")
    polys = [torch.ones_like(X), X, Y, X * Y, X**2 - Y**2, X**2 + Y**2, X**3, Y**3]
    out = [probe]
    for j in range(1, n_modes):
        cand = probe * polys[j % len(polys)] * (1 + j // len(polys))
        for prev in out:
            cand = cand - (prev.conj() * cand).sum() / (prev.abs() ** 2).sum() * prev
        out.append(cand / torch.sqrt((cand.abs() ** 2).sum()))
    modes = torch.stack(out)
    if n_modes > 1:
        weights = torch.tensor([1 - power] + [power / (n_modes - 1)] * (n_modes - 1))
        modes = modes / torch.sqrt((modes.abs() ** 2).sum((-2, -1), keepdim=True)) * weights.sqrt()[:, None, None]
    return modes.to(torch.complex64)


def circular_support(window: tuple[int, int], radius_px: float) -> torch.Tensor:
    """1 inside a circle of ``radius_px`` pixels about the window centre (ny // 2, nx // 2), else 0."""
    y = torch.arange(window[0], dtype=torch.float32)[:, None] - window[0] // 2
    x = torch.arange(window[1], dtype=torch.float32)[None, :] - window[1] // 2
    return (y.square() + x.square() <= float(radius_px) ** 2).float()

def angular_sampling_for(energy: float, sampling: float | tuple[float, float], shape: tuple[int, int]):
    """Detector pixel (mrad) that matches a real-space pixel ``sampling`` (Å) on an (H, W) window: λ/(N·Δx)."""
    if not isinstance(sampling, tuple | list):
        sampling = (sampling, sampling)
    lam = wavelength(energy)
    return (lam / (shape[0] * sampling[0]) * 1e3, lam / (shape[1] * sampling[1]) * 1e3)
