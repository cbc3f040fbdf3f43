"""Fourier integration of a gradient field on a regular grid (iDPC)."""
from __future__ import annotations

import numpy as np


def integrate_gradient(gy: np.ndarray, gx: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0),
                       pad: int = 2, regularization: float = 1e-3) -> np.ndarray:
    """φ (Sy, Sx) whose gradient (∂φ/∂y, ∂φ/∂x) best matches (gy, gx) (per unit of ``spacing``).

    The fields are mirror-padded by a factor ``pad`` to suppress the periodic wrap; the zero
    frequency (the mean of φ) is set to 0; ``regularization`` (fraction of the largest |q|²) damps
    the lowest frequencies, where the noise is amplified most.
    """
    gy, gx = np.asarray(gy, dtype=np.float64), np.asarray(gx, dtype=np.float64)
    sy, sx = gy.shape
    if pad > 1:
        # even extension keeps gy odd across the y edges (a mirrored φ has a sign-flipped ∂y)
        gy = np.concatenate([gy, -gy[::-1]], 0)
        gy = np.concatenate([gy, gy[:, ::-1]], 1)
        gx = np.concatenate([gx, gx[::-1]], 0)
        gx = np.concatenate([gx, -gx[:, ::-1]], 1)
    ny, nx = gy.shape
    qy = np.fft.fftfreq(ny, spacing[0])[:, None]
    qx = np.fft.fftfreq(nx, spacing[1])[None, :]
    q2 = qy**2 + qx**2
    denom = 2j * np.pi * (q2 + regularization * q2.max())
    spec = (qy * np.fft.fft2(gy) + qx * np.fft.fft2(gx)) / denom
    spec[0, 0] = 0.0
    phi = np.fft.ifft2(spec).real[:sy, :sx]
    return phi - phi.mean()
