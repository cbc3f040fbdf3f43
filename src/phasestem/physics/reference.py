"""The forward model in one plain function: the reference the fast operator is tested against, and the place to read
what a pattern is.

:class:`phasestem.physics.operator.ForwardModel` computes the same patterns through the fused operator (one autograd
node, chunked, with a hand-written backward); this function does it position by position in NumPy, with nothing
shared but the electron wavelength, so that a change to the fast path that alters a pattern fails
``tests/test_physics_reference.py``.
"""
from __future__ import annotations

import numpy as np

from .optics import wavelength


def multislice_intensity(transmission: np.ndarray, probe: np.ndarray, positions: np.ndarray,
                         sampling: tuple[float, float], energy: float, dz: float) -> np.ndarray:
    """Far-field diffraction intensities of a probe scanned over a sliced object.

    ``transmission`` (S, Ny, Nx) complex: each slice's transmission function exp(iφ)·a, pixel (0, 0) at 0 Å, periodic.
    ``probe`` (M, ny, nx) complex: the incident probe's modes, centred at pixel (ny // 2, nx // 2) of the window.
    ``positions`` (B, 2) Å: the probe centres (y, x) on the object. ``sampling`` (dy, dx) Å of object and probe;
    ``energy`` eV; ``dz`` Å from one slice to the next. Returns (B, ny, nx) float: Σ_m |FFT(exit wave_m)|² with the
    unitary FFT (each pattern sums to the probe's intensity where |transmission| = 1), zero frequency at
    (ny // 2, nx // 2).

    For each position: the window of the object under the probe (corner = round(centre px) − window // 2), the
    probe shifted by the rest (a sub-pixel Fourier ramp exp(−2πi k·s)), then per slice: multiply by the slice's
    transmission and, except after the last, propagate by exp(−iπ λ |k|² dz) (the Fresnel propagator; the sign
    convention of docs/conventions.md).
    """
    n_slices, big_y, big_x = transmission.shape
    _, ny, nx = probe.shape
    ky = np.fft.fftfreq(ny, d=sampling[0])[:, None]  # Å⁻¹
    kx = np.fft.fftfreq(nx, d=sampling[1])[None, :]
    propagate = np.exp(-1j * np.pi * wavelength(energy) * (ky**2 + kx**2) * dz)
    out = np.zeros((len(positions), ny, nx))
    for b, (y, x) in enumerate(np.asarray(positions, np.float64) / np.asarray(sampling)):
        cy, cx = np.round(y), np.round(x)
        rows = (int(cy) - ny // 2 + np.arange(ny)) % big_y
        cols = (int(cx) - nx // 2 + np.arange(nx)) % big_x
        window = transmission[:, rows][:, :, cols]  # (S, ny, nx)
        ramp = np.exp(-2j * np.pi * (np.fft.fftfreq(ny)[:, None] * (y - cy) + np.fft.fftfreq(nx)[None, :] * (x - cx)))
        wave = np.fft.ifft2(np.fft.fft2(probe, norm="ortho") * ramp, norm="ortho")  # (M, ny, nx)
        for s in range(n_slices):
            wave = wave * window[s]
            if s < n_slices - 1:
                wave = np.fft.ifft2(np.fft.fft2(wave, norm="ortho") * propagate, norm="ortho")
        out[b] = np.fft.fftshift((np.abs(np.fft.fft2(wave, norm="ortho")) ** 2).sum(0))
    return out
