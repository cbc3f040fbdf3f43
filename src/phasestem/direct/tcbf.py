"""Tilt-corrected bright field (tcBF, parallax): virtual images of bright-field pixel groups and their sum.

For a probe with aberration matrix C (χ = πλ kᵀCk; C = C10·I for pure defocus) the image of the
bright-field detector pixel at angle α (rad, detector frame) is the central one shifted by
``s = −C·α`` Å (object frame): I_α(r) = I_0(r − s). Proof: the ray of the probe that reaches
pixel α crossed the specimen at ∇_kχ/2π = λ·C·k = C·α from the probe centre (stationary
phase of A(k)·exp(−iχ(k))), so pixel α sees the specimen at r + C·α. With C10 > 0 (over-focus,
phasestem's convention) the shift is antiparallel to α. In scan pixels, ``s_scan = S⁻¹·R(θ)ᵀ·s``.
"""
from __future__ import annotations

import numpy as np

from ..scan import GridScan, rotation_matrix


def bf_groups(shape: tuple[int, int], radius: float, fraction: float = 0.9, per_radius: float = 5.0
              ) -> tuple[np.ndarray, np.ndarray, int]:
    """Group the bright-field pixels of a centred (H, W) pattern into square bins.

    Pixels within ``fraction``·``radius`` px of (H//2, W//2) are binned in squares of
    b = max(1, round(radius / per_radius)) px. Returns labels (H, W) (−1 outside), the mean
    offset of each group from the centre (G, 2) px (y, x) and b.
    """
    H, W = shape
    b = max(1, int(round(radius / per_radius)))
    yy, xx = np.mgrid[0:H, 0:W]
    dy, dx = yy - H // 2, xx - W // 2
    inside = dy**2 + dx**2 <= (fraction * radius) ** 2
    key = np.floor((dy + b / 2) / b).astype(int) * 10_000 + np.floor((dx + b / 2) / b).astype(int)
    labels = np.full(shape, -1)
    _, inv = np.unique(key[inside], return_inverse=True)
    labels[inside] = inv
    n = int(inv.max()) + 1
    cnt = np.bincount(labels[inside], minlength=n)
    lab = labels[inside]
    k = np.stack([np.bincount(lab, dy[inside], n) / cnt, np.bincount(lab, dx[inside], n) / cnt], -1)
    return labels, k, b


def group_images(chunks, labels: np.ndarray, scan_shape: tuple[int, int]) -> np.ndarray:
    """Virtual images (G, Sy, Sx) of the pixel groups from (rows, centred patterns) chunks."""
    n = int(labels.max()) + 1
    flat = labels.ravel()
    sel = np.nonzero(flat >= 0)[0]
    onehot = np.zeros((len(flat), n))
    onehot[sel, flat[sel]] = 1.0
    out = np.zeros((*scan_shape, n))
    for rows, block in chunks:
        out[rows] = block.reshape(*block.shape[:2], -1) @ onehot
    return np.moveaxis(out, -1, 0)


def normalised(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contrast images I/⟨I⟩ − 1 (G, Sy, Sx) and the mean counts (G,) that weight them."""
    mean = images.mean((-2, -1))
    return images / np.maximum(mean, 1e-30)[:, None, None] - 1.0, mean


def scan_shift_per_angle(rotation: float, step: tuple[float, float]) -> np.ndarray:
    """2×2 matrix T with s_scan = T·s_obj: S⁻¹·R(θ)ᵀ (scan px per Å)."""
    return np.diag(1.0 / np.asarray(step, dtype=np.float64)) @ rotation_matrix(rotation).T


def parallax_shifts(k_px: np.ndarray, aberration_matrix: np.ndarray, dk_mrad: float, rotation: float,
                    step: tuple[float, float]) -> np.ndarray:
    """Scan-pixel shifts (G, 2) of the group images for detector offsets ``k_px`` (G, 2) px."""
    s_obj = -(k_px * dk_mrad * 1e-3) @ np.asarray(aberration_matrix).T
    return s_obj @ scan_shift_per_angle(rotation, step).T


def padded_spectra(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """FFT (G, pad·Sy, pad·Sx) of zero-padded contrast images (mean removed)."""
    G, sy, sx = images.shape
    out = np.zeros((G, pad * sy, pad * sx))
    out[:, :sy, :sx] = images - images.mean((-2, -1), keepdims=True)
    return np.fft.fft2(out)


def shifted_sum(spectra: np.ndarray, shifts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Σ_g w_g · image_g(r + s_g) in Fourier space (undoes I_g(r) = I_0(r − s_g)); (Ny, Nx) spectrum."""
    ny, nx = spectra.shape[-2:]
    qy = np.fft.fftfreq(ny)[:, None]
    qx = np.fft.fftfreq(nx)[None, :]
    w = np.ones(len(spectra)) if weights is None else weights
    ramp = np.exp(2j * np.pi * (qy * shifts[:, 0, None, None] + qx * shifts[:, 1, None, None]))
    return np.einsum("g,gyx->yx", w, spectra * ramp)


def tcbf_image(images: np.ndarray, shifts: np.ndarray, weights: np.ndarray | None = None,
               upsample: int = 1) -> np.ndarray:
    """Parallax-corrected bright field (Sy·u, Sx·u) on the scan grid from contrast images (G, Sy, Sx).

    ``upsample`` u > 1 places every shifted image on a u-times finer grid (nearest fine pixel)
    and averages, so that the many sub-pixel shifts fill in detail finer than the scan step.
    """
    G, sy, sx = images.shape
    w = np.ones(G) if weights is None else np.asarray(weights, dtype=np.float64)
    if upsample <= 1:
        spec = shifted_sum(padded_spectra(images), shifts, w)
        return np.fft.ifft2(spec).real[:sy, :sx] / w.sum()
    u = int(upsample)
    acc = np.zeros((sy * u, sx * u))
    cnt = np.zeros_like(acc)
    iy, ix = GridScan((sy, sx)).indices().T.reshape(2, sy, sx)
    for g in range(G):
        # pixel value of image g at scan index p belongs to object point p − s_g
        fy = np.rint((iy - shifts[g, 0]) * u).astype(int)
        fx = np.rint((ix - shifts[g, 1]) * u).astype(int)
        ok = (fy >= 0) & (fy < sy * u) & (fx >= 0) & (fx < sx * u)
        np.add.at(acc, (fy[ok], fx[ok]), w[g] * images[g][ok])
        np.add.at(cnt, (fy[ok], fx[ok]), w[g])
    filled = cnt > 0
    out = np.where(filled, acc / np.where(filled, cnt, 1), 0.0)
    if not filled.all():  # fill holes by normalised Gaussian smoothing
        from scipy import ndimage

        num = ndimage.gaussian_filter(acc, u / 2)
        den = ndimage.gaussian_filter(cnt, u / 2)
        out = np.where(filled, out, num / np.maximum(den, 1e-12))
    return out
