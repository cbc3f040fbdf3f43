"""Defocus, astigmatism and a rotation check from the parallax of bright-field pixel images (tcBF).

Model (:mod:`phasestem.direct.tcbf`): the image of bright-field group g (detector offset k_g px,
angle α_g = k_g·dk) is shifted by s_g = −C·α_g Å (object frame), S⁻¹R(θ)ᵀ·s_g in scan pixels.

1. A search over C10 (rotation θ from the CoM) for the sharpest parallax-corrected sum.
2. Each group image is cross-correlated with that sum (up-sampled, near the predicted shift).
3. A linear map s_g = M·k_g + b is fitted. Its polar decomposition S·M = U·P gives the rotation
   (U = ∓R(θ)ᵀ, θ mod 180°; det U = −1 flags a wrong transpose) and C = −R(θ)·S·M / dk the
   aberration matrix: C10 = tr C / 2, C12 and φ12 from its traceless part
   (C = C10·I + C12·[[−cos 2φ12, sin 2φ12], [sin 2φ12, cos 2φ12]], χ's Krivanek convention).
Steps 2–3 are repeated with the fitted shifts.

θ vs θ + 180° (same data with −C): :func:`phase_skewness` of the parallax phase (atoms are positive peaks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..direct.tcbf import padded_spectra, parallax_shifts, shifted_sum, tcbf_image
from ..physics.optics import wavelength


@dataclass
class ParallaxFit:
    """Aberrations and rotation from the bright-field parallax."""

    C10: float  # Å
    C12: float  # Å
    phi12: float  # rad
    rotation: float  # degrees, mod 180 branch nearest the rotation given
    determinant: float  # det of the fitted map's orthogonal factor (+1 expected)
    k: np.ndarray  # (G, 2) group offsets, detector px
    measured: np.ndarray  # (G, 2) measured shifts, scan px
    fitted: np.ndarray  # (G, 2) shifts of the linear fit, scan px
    matrix: np.ndarray  # (2, 2) M, scan px per detector px
    search: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))  # (2, n): C10 grid Å, sharpness
    coherence: float = 0.0  # mean Pearson r of each aligned group image with the sum of the others
    skewness: float | None = None  # of the parallax phase at this C10 (> 0: atoms come out as positive peaks)

    @property
    def residual(self) -> float:
        """RMS misfit of the linear model (scan px)."""
        return float(np.sqrt(((self.measured - self.fitted) ** 2).sum(-1).mean()))

    @property
    def max_shift(self) -> float:
        return float(np.linalg.norm(self.fitted, axis=-1).max())

    def aberrations(self) -> dict[str, float]:
        return {"C10": self.C10, "C12": self.C12, "phi12": self.phi12}

    def to_dict(self) -> dict:
        return {"C10": self.C10, "C12": self.C12, "phi12": self.phi12, "rotation_deg": self.rotation,
                "determinant": self.determinant, "residual_px": self.residual, "max_shift_px": self.max_shift,
                "coherence": self.coherence, "phase_skewness": self.skewness}

    def flip_branch(self) -> None:
        """Take θ + 180°: the same data with C → −C (C10, and φ12 turned by 90°)."""
        self.rotation, self.C10, self.phi12 = (self.rotation + 180.0) % 360.0, -self.C10, self.phi12 + math.pi / 2
        if self.skewness is not None:
            self.skewness = -self.skewness


def _xcorr_peak(spec_a: np.ndarray, spec_ref: np.ndarray, guess: np.ndarray, radius: float,
                upsample: int = 4) -> np.ndarray:
    """Shift s (scan px) with a(r) ≈ ref(r − s), searched within ``radius`` of ``guess``, sub-pixel."""
    ny, nx = spec_a.shape
    prod = np.fft.fftshift(spec_a * np.conj(spec_ref))
    big = np.zeros((ny * upsample, nx * upsample), complex)
    y0, x0 = (ny * upsample - ny) // 2, (nx * upsample - nx) // 2
    big[y0 : y0 + ny, x0 : x0 + nx] = prod
    xc = np.fft.ifft2(np.fft.ifftshift(big)).real
    sy = np.fft.fftfreq(ny * upsample, 1 / ny)  # shift in original pixels per index
    sx = np.fft.fftfreq(nx * upsample, 1 / nx)
    SY, SX = np.meshgrid(sy, sx, indexing="ij")
    near = (SY - guess[0]) ** 2 + (SX - guess[1]) ** 2 <= radius**2
    xc = np.where(near, xc, -np.inf)
    iy, ix = np.unravel_index(np.argmax(xc), xc.shape)
    out = np.array([sy[iy], sx[ix]], dtype=np.float64)
    for axis, (i, n) in enumerate(((iy, ny * upsample), (ix, nx * upsample))):
        idx = [iy, ix]
        vals = []
        for d in (-1, 0, 1):
            idx[axis] = (i + d) % n
            vals.append(xc[tuple(idx)])
        lo, mid, hi = vals
        den = lo - 2 * mid + hi
        if np.isfinite(den) and den < 0:
            out[axis] += 0.5 * (lo - hi) / den / upsample
    return out


def _gaussian_lowpass(shape, step, q_c: float) -> np.ndarray:
    """exp(−q²/2q_c²) on the padded scan grid, q in Å⁻¹."""
    qy = np.fft.fftfreq(shape[0], step[0])[:, None]
    qx = np.fft.fftfreq(shape[1], step[1])[None, :]
    return np.exp(-(qy**2 + qx**2) / (2 * q_c**2))


def _coherence(spectra: np.ndarray, shifts: np.ndarray, weights: np.ndarray, shape: tuple[int, int]) -> float:
    """Weighted mean Pearson r of every group image, shifted back, with the sum of the others (scan area only).

    Near 1 when the images are shifted copies of one image (parallax); near 0 or below when they
    differ in contrast rather than position (a focused probe: pixels at ±k see opposite DPC contrast).
    """
    ny, nx = spectra.shape[-2:]
    qy = np.fft.fftfreq(ny)[:, None]
    qx = np.fft.fftfreq(nx)[None, :]
    ramp = np.exp(2j * np.pi * (qy * shifts[:, 0, None, None] + qx * shifts[:, 1, None, None]))
    aligned = np.fft.ifft2(spectra * ramp).real
    m = int(np.ceil(np.abs(shifts).max()))
    sy, sx = shape
    core = aligned[:, m : max(m + 1, sy - m), m : max(m + 1, sx - m)].reshape(len(spectra), -1)
    if core.shape[1] < 2:  # the shifts exceed the scan: no common area to compare (no usable parallax)
        return 0.0
    total = (weights[:, None] * core).sum(0)
    rs = []
    for g in range(len(spectra)):
        other = total - weights[g] * core[g]
        a, b = core[g] - core[g].mean(), other - other.mean()
        rs.append(float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-30)))
    return float(np.average(rs, weights=weights))


def _fit_map(k: np.ndarray, s: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    design = np.concatenate([k, np.ones((len(k), 1))], 1) * np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(design, s * np.sqrt(w)[:, None], rcond=None)
    return coef[:2].T, coef[2]


def _decompose(M: np.ndarray, step, dk_mrad: float, rotation_hint: float) -> tuple[float, float, np.ndarray]:
    """Rotation (deg, branch nearest ``rotation_hint``), det of the orthogonal factor, and C (2×2, Å)."""
    B = np.diag(np.asarray(step, dtype=np.float64)) @ M  # Å of scan displacement per detector px
    u, _, vt = np.linalg.svd(B)
    U = u @ vt
    det = float(np.linalg.det(U))
    theta = math.degrees(math.atan2(U.T[1, 0], U.T[0, 0]))
    # U = ∓R(θ)ᵀ: θ and θ + 180° are both candidates; take the one nearest the hint
    cands = [theta % 360, (theta + 180) % 360]
    theta = min(cands, key=lambda t: abs((t - rotation_hint + 180) % 360 - 180))
    th = math.radians(theta)
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    C = -R @ B / (dk_mrad * 1e-3)
    return theta, det, 0.5 * (C + C.T)


def _sharpness(wspec: np.ndarray, unit: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Energy of the shift-corrected sum for every C10 of a uniform ``grid`` (shifts = C10 · ``unit`` scan px)."""
    ny, nx = wspec.shape[-2:]
    qy = np.fft.fftfreq(ny)[:, None]
    qx = np.fft.fftfreq(nx)[None, :]
    keep = np.abs(wspec).sum(0) > 1e-6 * np.abs(wspec).sum(0).max()  # frequencies the low-pass left
    qs = (qy * unit[:, 0, None, None] + qx * unit[:, 1, None, None])[:, keep].astype(np.float32)  # (G, n_q)
    w = wspec[:, keep].astype(np.complex64) * np.exp(2j * np.pi * grid[0] * qs).astype(np.complex64)
    if len(grid) < 2:
        return np.array([(np.abs(w.sum(0)) ** 2).sum()])
    advance = np.exp(2j * np.pi * (grid[1] - grid[0]) * qs).astype(np.complex64)  # uniform grid: one product a step
    out = np.empty(len(grid))
    for i in range(len(grid)):
        out[i] = (np.abs(w.sum(0)) ** 2).sum()
        w *= advance
    return out


def fit_parallax(images: np.ndarray, weights: np.ndarray, k_px: np.ndarray, dk_mrad: float, rotation: float | None,
                 step: tuple[float, float], c10_range: float | None = None, iterations: int = 2,
                 lowpass: float | None = 0.5, energy: float | None = None, rotation_step: float = 10.0
                 ) -> ParallaxFit:
    """Fit the parallax of contrast images (G, Sy, Sx) of groups at offsets ``k_px`` (G, 2) px.

    ``rotation`` (degrees) comes from the CoM fit; None searches it too (every ``rotation_step``
    degrees over 180°: θ + 180° is the same as −C10). The C10 search covers ±``c10_range`` Å
    (default: shifts up to half the scanned field). A group image is a pure shift of the central
    one only at frequencies that both side-bands of the pixel transmit (q < k_aperture − |k|), so
    the images are weighted by a Gaussian of σ = ``lowpass`` · α_max/λ (α_max: the outermost group;
    needs ``energy`` in eV; None: no weighting).
    """
    G, sy, sx = images.shape
    spectra = padded_spectra(images)
    alpha_max = float(np.linalg.norm(k_px, axis=-1).max()) * dk_mrad * 1e-3
    if lowpass and energy:
        spectra = spectra * _gaussian_lowpass(spectra.shape[-2:], step, lowpass * alpha_max / wavelength(energy))
    fov = min((sy - 1) * step[0], (sx - 1) * step[1])
    c_max = c10_range if c10_range is not None else 0.5 * fov / max(alpha_max, 1e-9)
    dc = 0.2 * min(step) / max(alpha_max, 1e-9)
    grid = np.arange(-c_max, c_max + dc / 2, dc)
    # relative weights (the sharpness is compared between C10s only): counts of 1e34 would overflow its squares
    wspec = spectra * (weights / max(float(np.max(np.abs(weights))), 1e-300))[:, None, None]
    coarse = grid[::3]  # 0.6 scan px apart at the outermost group; the peak is ≈ 1 px wide
    angles = [rotation] if rotation is not None else list(np.arange(0.0, 180.0, rotation_step))
    best_score = -np.inf
    for angle in angles:
        s = _sharpness(wspec, parallax_shifts(k_px, np.eye(2), dk_mrad, angle, step), coarse)
        if s.max() > best_score:
            best_score, rotation, centre, curve = s.max(), angle, coarse[int(np.argmax(s))], s
    unit = parallax_shifts(k_px, np.eye(2), dk_mrad, rotation, step)  # scan px per Å of C10
    near = np.abs(grid - centre) <= 3 * dc
    score = np.full(len(grid), np.nan)
    score[near] = _sharpness(wspec, unit, grid[near])
    best = int(np.nanargmax(score))
    c10 = float(grid[best])
    if 0 < best < len(grid) - 1 and near[best - 1] and near[best + 1]:
        lo, mid, hi = score[best - 1 : best + 2]
        den = lo - 2 * mid + hi
        if den < 0:
            c10 += 0.5 * (lo - hi) / den * dc
    shifts = c10 * unit
    theta, C, M = rotation, c10 * np.eye(2), None
    measured = shifts
    for _ in range(iterations):
        ref = shifted_sum(spectra, shifts, weights)
        measured = np.stack([_xcorr_peak(spectra[g], ref, shifts[g], radius=1.5) for g in range(G)])
        M, b = _fit_map(k_px, measured, weights)
        theta, det, C = _decompose(M, step, dk_mrad, rotation)
        shifts = k_px @ M.T + b
    fitted = shifts
    coherence = _coherence(spectra, fitted, weights, (sy, sx))
    c10 = float(np.trace(C) / 2)
    d11, d12 = C[0, 0] - c10, C[0, 1]
    c12 = float(math.hypot(d11, d12))
    phi12 = float(0.5 * math.atan2(d12, -d11)) if c12 > 0 else 0.0
    return ParallaxFit(C10=c10, C12=c12, phi12=phi12, rotation=theta, determinant=det, k=k_px,
                       measured=measured, fitted=fitted, matrix=M, search=np.stack([coarse, curve]),
                       coherence=coherence)


def phase_skewness(images: np.ndarray, weights: np.ndarray, shifts: np.ndarray, c10: float,
                   step: tuple[float, float], energy: float, semiangle: float, upsample: int = 2,
                   wiener: float = 0.1) -> float:
    """Skewness of the parallax phase of contrast images (G, Sy, Sx) aligned by ``shifts`` (G, 2) scan px.

    The tcBF contrast of a weak phase object is 2·sin χ(q)·φ̂(q) (:mod:`phasestem.direct.parallax`), so the
    same images give −φ with −C10: of θ and θ + 180° the right one makes the projected potential positive
    peaks on a lower background, a positive skewness. Taken inside the area every shifted image covers.
    """
    from .rotation import skewness

    img = tcbf_image(images, shifts, weights, upsample)
    fine = np.asarray(step, dtype=np.float64) / upsample
    qy = np.fft.fftfreq(img.shape[0], fine[0])[:, None]
    qx = np.fft.fftfreq(img.shape[1], fine[1])[None, :]
    lam = wavelength(energy)
    q2 = qy**2 + qx**2
    transfer = 2 * np.sin(np.pi * lam * c10 * q2)
    transfer[q2 > (2 * semiangle * 1e-3 / lam) ** 2] = 0.0
    phi = np.fft.ifft2(np.fft.fft2(img - img.mean()) * transfer / (transfer**2 + wiener)).real
    m = (int(math.ceil(np.abs(shifts).max())) + 1) * upsample
    core = phi[m:-m, m:-m] if min(phi.shape) > 4 * m else phi
    return skewness(core)


def group_contrast(dataset, radius: float, chunks=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tcBF input of a dataset: contrast images (G, Sy, Sx) of the bright-field pixel groups within 0.7 of the
    disk ``radius`` (px), their weights (G,) (mean counts) and detector offsets k (G, 2) px
    (:func:`phasestem.direct.tcbf.bf_groups`). ``chunks``: (rows, centred patterns) blocks (e.g. bad pixels filled
    and descan removed, :func:`phasestem.calibrate.correct.corrected_chunks`); None: the dataset's patterns as
    they are, one scan row at a time."""
    from ..direct.tcbf import bf_groups, group_images, normalised

    labels, k, _ = bf_groups(dataset.pattern_shape, radius, fraction=0.7)
    if chunks is None:
        chunks = ((slice(r, r + 1), np.asarray(dataset.patterns[r : r + 1], dtype=np.float64))
                  for r in range(dataset.scan_shape[0]))
    con, weights = normalised(group_images(chunks, labels, dataset.scan_shape))
    return con, weights, k


def fit_defocus(dataset) -> ParallaxFit:
    """The tcBF parallax fit (C10, C12, φ12) of a dataset in phasestem's frame (detector transposed, every disk
    on the central pixel), its rotation and step taken from the dataset's positions."""
    from ..direct.frame import scan_map

    L, _ = scan_map(dataset)
    step = tuple(float(v) for v in np.sqrt((L**2).sum(0)))
    rotation = math.degrees(math.atan2(L[1, 0], L[0, 0]))
    dk = float(np.mean(dataset.angular_sampling))
    con, w, k = group_contrast(dataset, dataset.semiangle / dk)
    return fit_parallax(con, w, k, dk, rotation, step, energy=dataset.energy)
