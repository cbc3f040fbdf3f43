"""Single side-band (SSB) ptychography with aberration correction, for (near-)focused data.

Weak phase object, probe P(k) = A(k)·exp(−iχ(k)), positions R: the Fourier transform over R of
the intensity at detector frequency k is, for Q ≠ 0,
``G(k, Q) = φ̂(Q)·i·[P*(k)·P(k − Q) − P(k)·P*(k + Q)]``. Where only k − Q lies inside the aperture
(one side-band), G = i·φ̂(Q)·P*(k)P(k − Q); where only k + Q does, G = −i·φ̂(Q)·P(k)P*(k + Q).
φ̂(Q) is the least-squares combination of both side-bands over the detector pixels.
"""
from __future__ import annotations

import numpy as np

from .frame import PhaseImage, scan_map, to_dataset_frame


def _probe(ky: np.ndarray, kx: np.ndarray, radius: float, chi_coeffs: tuple[float, float, float, float]
           ) -> np.ndarray:
    """P(k) on arbitrary pixel coordinates (px about the disk centre)."""
    c10, c12, phi12, scale = chi_coeffs  # scale: π·λ·dk² (Å⁻² per px²)·Å
    amp = (ky**2 + kx**2) <= radius**2
    phi = np.arctan2(ky, kx)
    k2 = ky**2 + kx**2
    chi = scale * k2 * (c10 + c12 * np.cos(2 * (phi - phi12)))
    return amp * np.exp(-1j * chi)


def ssb_phase(dataset, sampling: tuple[float, float] | None = None, eps: float = 1e-3) -> PhaseImage:
    """SSB phase (rad) of a calibrated dataset (phasestem frame), in the dataset frame."""
    from ..physics.optics import Aberrations, wavelength

    sy, sx = dataset.scan_shape
    H, W = dataset.pattern_shape
    dk_mrad = float(np.mean(dataset.angular_sampling))
    radius = float(dataset.semiangle / dk_mrad)
    lam = wavelength(dataset.energy)
    dk = dk_mrad * 1e-3 / lam  # Å⁻¹ per detector px
    ab = Aberrations.from_dict(dataset.aberrations)
    coeffs = (ab.get("C10"), ab.get("C12"), ab.get("phi12"), np.pi * lam * dk**2)
    yy, xx = np.mgrid[0:H, 0:W]
    ky, kx = (yy - H // 2).ravel().astype(float), (xx - W // 2).ravel().astype(float)
    bf = ky**2 + kx**2 <= radius**2
    ky, kx = ky[bf], kx[bf]
    pats = np.empty((sy, sx, int(bf.sum())), dtype=np.float32)  # bright-field pixels only, read by rows
    for r in range(0, sy, 8):
        pats[r : r + 8] = np.asarray(dataset.patterns[r : r + 8], dtype=np.float32).reshape(-1, sx, H * W)[..., bf]
    norm = float(pats.mean(dtype=np.float64))
    G = (np.fft.fft2(pats, axes=(0, 1)) / (norm * sy * sx)).astype(np.complex64)  # (Sy, Sx, Npix)
    L, _ = scan_map(dataset)
    fy, fx = np.meshgrid(np.fft.fftfreq(sy), np.fft.fftfreq(sx), indexing="ij")
    Q = np.linalg.solve(L.T, np.stack([fy.ravel(), fx.ravel()])).T / dk  # (Sy·Sx, 2) detector px
    P0 = _probe(ky, kx, radius, coeffs)
    spec = np.zeros(sy * sx, complex)
    for i, (qy, qx) in enumerate(Q):
        if i == 0:
            continue
        in_m = (ky - qy) ** 2 + (kx - qx) ** 2 <= radius**2
        in_p = (ky + qy) ** 2 + (kx + qx) ** 2 <= radius**2
        g = G.reshape(sy * sx, -1)[i]
        left = in_m & ~in_p
        right = in_p & ~in_m
        t_left = 1j * np.conj(P0[left]) * _probe(ky[left] - qy, kx[left] - qx, radius, coeffs)
        t_right = -1j * P0[right] * np.conj(_probe(ky[right] + qy, kx[right] + qx, radius, coeffs))
        num = (np.conj(t_left) * g[left]).sum() + (np.conj(t_right) * g[right]).sum()
        den = (np.abs(t_left) ** 2).sum() + (np.abs(t_right) ** 2).sum()
        spec[i] = num / (den + eps * len(ky))
    phi = np.fft.ifft2(spec.reshape(sy, sx)).real * (sy * sx)
    sampling = tuple(dataset.sampling) if sampling is None else sampling
    return PhaseImage(to_dataset_frame(phi, dataset, sampling), sampling, "ssb", phi)
