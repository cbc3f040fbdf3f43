"""An independent 4D-STEM simulator in plain NumPy: imports nothing from phasestem.

Reference data for accuracy tests and benchmarks must not come from the code under test (no
inverse crime), so this module re-derives the physics from textbook formulas with its own
implementation choices:

* the probe is built and propagated on the **whole object grid** (no probe window, no periodic
  wrap inside a window); the exit wave is cut to a detector-sized window only at the end, around
  the probe position rounded to the nearest object pixel (half-integers round up);
* the condenser aperture has a **hard edge** (a real aperture) unless ``aperture_edge`` (mrad)
  softens it with a raised cosine;
* partial spatial coherence is an incoherent sum over probe positions jittered by a Gaussian
  source (FWHM ``source_size`` Å), not probe modes;
* specimen mistilt (``tilt``, mrad, one for all positions or one per position) tilts the
  propagation between slices: the wave moves by dz·θ across the specimen per slice;
* Poisson noise at a given dose per pattern.

Conventions (written once here, checked against abTEM in ``check_conventions.py``):
  lengths Å, energy eV, angles mrad; arrays (y, x); object pixel (0, 0) at (0 Å, 0 Å);
  ``defocus`` Δf > 0 means the probe crossover lies Δf *before* the entrance surface (abTEM's
  ``defocus = −Δf``, PtyRAD's and phasestem's ``C10 = +Δf``); free-space propagation by dz
  multiplies the spectrum by exp(−iπλk²dz); patterns are |FFT|² of the windowed exit wave with
  zero frequency at (n//2, n//2), each normalised to a total of 1 before noise (``dose`` counts
  after).
"""
from __future__ import annotations

import math

import numpy as np

_H, _ME, _QE, _C = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0


def electron_wavelength(energy: float) -> float:
    """Relativistic wavelength (Å) for a kinetic energy in eV."""
    e = energy * _QE
    return _H / math.sqrt(2 * _ME * e * (1 + e / (2 * _ME * _C**2))) * 1e10


def sigma_interaction(energy: float) -> float:
    """Interaction constant (rad / (V·Å)), Kirkland's formula."""
    lam = electron_wavelength(energy)
    mc2 = _ME * _C**2 / _QE
    return 2 * math.pi / (lam * energy) * (mc2 + energy) / (2 * mc2 + energy)


def atom_phase(shape: tuple[int, int], sampling: float, rng: np.random.Generator, n_atoms: int,
               max_phase: float, width: float = 0.4, margin: float = 0.0) -> np.ndarray:
    """A phase image (rad) of Gaussian 'atoms' (σ = ``width`` Å) at random positions, peak ≈ ``max_phase``."""
    ny, nx = shape
    y = np.arange(ny) * sampling
    x = np.arange(nx) * sampling
    out = np.zeros(shape)
    pos = rng.uniform([margin, margin], [ny * sampling - margin, nx * sampling - margin], size=(n_atoms, 2))
    amp = rng.uniform(0.4, 1.0, n_atoms)
    reach = 4 * width
    for (py, px), a in zip(pos, amp, strict=True):
        iy = slice(max(0, int((py - reach) / sampling)), min(ny, int((py + reach) / sampling) + 2))
        ix = slice(max(0, int((px - reach) / sampling)), min(nx, int((px + reach) / sampling) + 2))
        gy = np.exp(-((y[iy] - py) ** 2) / (2 * width**2))
        gx = np.exp(-((x[ix] - px) ** 2) / (2 * width**2))
        out[iy, ix] += a * gy[:, None] * gx[None, :]
    return out * (max_phase / max(out.max(), 1e-12))


def _freqs(shape: tuple[int, int], sampling: float) -> tuple[np.ndarray, np.ndarray]:
    ky = np.fft.fftfreq(shape[0], sampling)[:, None]
    kx = np.fft.fftfreq(shape[1], sampling)[None, :]
    return ky, kx


def probe_spectrum(shape: tuple[int, int], sampling: float, energy: float, semiangle: float, defocus: float,
                   aperture_edge: float = 0.0, cs: float = 0.0) -> np.ndarray:
    """Probe spectrum on a grid, centred at 0 Å, Σ|ψ(k)|² = 1 (unitary FFT).

    ``defocus`` Δf (Å): crossover Δf before the entrance surface; ``cs`` spherical aberration (Å).
    ``aperture_edge`` (mrad): width of a raised-cosine aperture edge centred at the semi-angle (0: hard).
    """
    lam = electron_wavelength(energy)
    ky, kx = _freqs(shape, sampling)
    k2 = ky**2 + kx**2
    alpha = lam * np.sqrt(k2) * 1e3  # mrad
    if aperture_edge > 0:
        t = np.clip((alpha - semiangle) / aperture_edge + 0.5, 0, 1)
        amp = 0.5 * (1 + np.cos(math.pi * t))
    else:
        amp = (alpha <= semiangle).astype(float)
    # propagate the focused probe by Δf downstream: exp(−iπλk²Δf); Cs: −i(π/2)Cs λ³k⁴
    chi = math.pi * lam * k2 * defocus + 0.5 * math.pi * cs * lam**3 * k2**2
    spec = amp * np.exp(-1j * chi)
    return spec / np.sqrt((np.abs(spec) ** 2).sum())


def simulate_patterns(
    phase_slices: np.ndarray,
    sampling: float,
    positions: np.ndarray,
    window: int,
    energy: float,
    semiangle: float,
    defocus: float,
    dz: float = 10.0,
    amplitude_slices: np.ndarray | None = None,
    aperture_edge: float = 0.0,
    cs: float = 0.0,
    source_size: float = 0.0,
    n_source: int = 5,
    dose: float | None = None,
    rng: np.random.Generator | None = None,
    detector_shift: np.ndarray | None = None,
    tilt: np.ndarray | None = None,
) -> np.ndarray:
    """4D-STEM patterns (N, window, window) float32 for probe centres ``positions`` (N, 2) Å.

    ``phase_slices`` (S, Ny, Nx) rad on pixels of ``sampling`` Å; slices ``dz`` Å apart; the probe
    propagates between slices on the whole (periodic) object grid. Each window of ``window`` px is
    centred on the probe position rounded to the nearest pixel; keep positions ≥ window/2 px from
    the object edges. Patterns are normalised to a total of 1, then Poisson-sampled at ``dose``
    electrons per pattern when given. ``tilt`` (mrad, (2,) for every position or (N, 2) one per
    position, (y, x)): specimen mistilt, the propagator between slices becomes
    exp(−iπλk²dz − 2πi dz (k_y tan θ_y + k_x tan θ_x)), i.e. the wave moves by +dz·tan θ per slice.
    """
    if phase_slices.ndim == 2:
        phase_slices = phase_slices[None]
    S, Ny, Nx = phase_slices.shape
    amp = np.ones_like(phase_slices) if amplitude_slices is None else amplitude_slices
    trans = amp * np.exp(1j * phase_slices)
    lam = electron_wavelength(energy)
    ky, kx = _freqs((Ny, Nx), sampling)
    prop = np.exp(-1j * math.pi * lam * (ky**2 + kx**2) * dz)
    spec0 = probe_spectrum((Ny, Nx), sampling, energy, semiangle, defocus, aperture_edge, cs)
    jitter, weights = source_points(source_size, n_source)
    if tilt is not None:
        tilt = np.broadcast_to(np.asarray(tilt, dtype=float), (len(positions), 2))

    def propagator(i: int) -> np.ndarray:
        if tilt is None or not tilt[i].any():
            return prop
        ty, tx = np.tan(tilt[i] * 1e-3)
        return prop * np.exp(-2j * math.pi * dz * (ky * ty + kx * tx))

    half = window // 2
    out = np.zeros((len(positions), window, window))
    wy = np.arange(window)[:, None] / window
    wx = np.arange(window)[None, :] / window
    for i, r0 in enumerate(np.asarray(positions, dtype=float)):
        cy, cx = (int(math.floor(v / sampling + 0.5)) for v in r0)
        prop_i = propagator(i) if S > 1 else prop
        for d, w in zip(jitter, weights, strict=True):
            ry, rx = r0 + d
            wave = np.fft.ifft2(spec0 * np.exp(-2j * math.pi * (ky * ry + kx * rx)), norm="ortho")
            for sl in range(S):
                wave = wave * trans[sl]
                if sl < S - 1:
                    wave = np.fft.ifft2(np.fft.fft2(wave, norm="ortho") * prop_i, norm="ortho")
            cut = np.take(np.take(wave, np.arange(cy - half, cy - half + window) % Ny, 0),
                          np.arange(cx - half, cx - half + window) % Nx, 1)
            if detector_shift is not None:
                cut = cut * np.exp(2j * math.pi * (wy * detector_shift[i][0] + wx * detector_shift[i][1]))
            far = np.fft.fftshift(np.fft.fft2(cut, norm="ortho"))
            out[i] += w * np.abs(far) ** 2
    out /= out.sum((-2, -1), keepdims=True)
    if dose is not None:
        rng = rng or np.random.default_rng(0)
        out = rng.poisson(out * dose).astype(np.float64)
    return out.astype(np.float32)


def source_points(fwhm: float, n_source: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(probe offsets (P, 2) Å, weights (P,) summing to 1) sampling a Gaussian source of ``fwhm`` Å: ``n_source``²
    points over ±2σ; one point at 0 for a coherent source (``fwhm`` ≤ 0)."""
    if fwhm <= 0:
        return np.zeros((1, 2)), np.ones(1)
    s = fwhm / (2 * math.sqrt(2 * math.log(2)))
    offs = np.linspace(-2 * s, 2 * s, n_source)
    oy, ox = np.meshgrid(offs, offs, indexing="ij")
    jitter = np.stack([oy.ravel(), ox.ravel()], -1)
    weights = np.exp(-(jitter**2).sum(-1) / (2 * s**2))
    return jitter, weights / weights.sum()


def raster(shape: tuple[int, int], step: float, origin: tuple[float, float]) -> np.ndarray:
    """(N, 2) Å probe centres of a row-major raster starting at ``origin`` (y, x)."""
    iy, ix = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return np.stack([iy.ravel() * step + origin[0], ix.ravel() * step + origin[1]], -1)
