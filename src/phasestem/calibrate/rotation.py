"""Scan–detector rotation and transpose from the centre-of-mass (CoM) field.

Convention (as :mod:`phasestem.scan`): the probe at scan index g = (iy, ix) sits at
``R(θ)·S·g`` with S = diag(dy, dx) and R(θ) turning (y, x) counter-clockwise as displayed.
For a thin specimen the CoM in the detector frame is ``(1/2π)·⟨∇φ⟩`` (Ehrenfest), so the field
``v(g) = S·R(θ)ᵀ·c(g)`` is the gradient of φ over the scan indices: curl-free at the right θ and
transpose. The curl is taken spectrally on the mirror-extended field (exact for a gradient
field, unlike finite differences) with a Gaussian low-pass that keeps the frequencies where the
DPC signal lies; it is linear in (cos θ, sin θ), so the θ of least curl energy is an
eigenvector of a 2 × 2 matrix (no search). The transpose is the option with the smaller
relative curl.

That leaves θ and θ + 180° (both curl-free; a thin phase object's patterns cannot tell them
apart, as (θ, C10, φ) and (θ + 180°, −C10, −φ) give the same data). **Sign convention:** a
positive projected potential attracts electrons, so the CoM points *towards* atom columns and
the integrated CoM (iDPC) phase is high where the dark-field intensity (scattered outside the
bright-field disk) is high. Of θ and θ + 180° the one whose iDPC phase correlates positively
with the dark field is taken (the skewness of the iDPC phase, positive peaks, when the detector
records no dark field).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..base.errors import PhasestemError
from .com import to_detector_frame

#: a CoM field whose least relative curl is above this carries no usable rotation (noise gives ≈ 1)
MAX_CURL_RATIO = 0.5

#: fewest scan rows and columns for a rotation from the data (CoM curl or bright-field parallax). Measured on
#: phasestem-simulated scans (3 objects × 3 rotations × 2 defoci, 2e4 e⁻/pattern): below 8 × 8 the CoM rotation
#: was more than 10° off in 5–13 of 18 cases (transpose wrong in up to 8) while its relative curl looked excellent
#: (≤ 0.3); one-row scans have no curl at all (the mirror extension makes one up)
MIN_SCAN = 8

#: a CoM rotation whose fits on the four halves of the scan (top, bottom, left, right) differ from the whole
#: scan's by more than this (degrees, mod 180) is undetermined. Same scans: the halves' spread was 2–3× the true
#: error (median 3.4° at 16 × 16 for errors ≈ 1°); at 8 × 8 it flagged both scans that were > 10° off
MAX_SPREAD = 15.0


class NoContrastError(PhasestemError):
    """The centre-of-mass field has no specimen signal (vacuum, too few counts, or a scan step too coarse for it)."""


#: what to do where the data cannot calibrate the rotation
ROTATION_FLAG = "give the scan rotation if it is known (--rotation DEG, e.g. --rotation 0 for simulated data)"


def undersampled(step, energy: float, semiangle: float, c10: float | None = None) -> str | None:
    """Why the centre of mass is undersampled, or None: the scan step (Å) exceeds the probe's diameter, about
    λ/α + 2|C10|·α (λ Å, α = ``semiangle`` mrad, ``c10`` Å where known). Neighbouring positions then see unrelated
    parts of the specimen and the field's curl is as large as its divergence whatever the rotation (a seed-000 scan:
    2 Å step, a 0.66 Å probe)."""
    from ..physics.optics import wavelength

    alpha = float(semiangle) * 1e-3
    probe = wavelength(energy) / alpha + 2 * abs(float(c10 or 0.0)) * alpha
    coarse = float(np.max(step))
    if not coarse > probe:
        return None
    return (f"the scan step {coarse:.3g} Å is {coarse / probe:.1f}× the probe's diameter (≈ {probe:.2g} Å, λ/α"
            f"{' + 2|C10|α' if c10 else ''}): the centre of mass is undersampled")


def no_contrast_message(ratio: float, step, energy: float, semiangle: float, c10: float | None = None) -> str:
    """Why the rotation could not be calibrated, its likely cause (:func:`undersampled`, else vacuum or too few
    counts) and the flag to pass."""
    cause = undersampled(step, energy, semiangle, c10)
    cause = f"{cause}, the likely cause here" if cause else "vacuum-only data, or too few counts"
    return (f"no specimen contrast: the centre-of-mass field is nearly as curled as it is divergent at every rotation "
            f"(relative curl {ratio:.2f} > {MAX_CURL_RATIO}) and the bright-field parallax gives no shift map; "
            f"{cause}; {ROTATION_FLAG}")


@dataclass
class RotationFit:
    """Result of the curl minimisation."""

    rotation: float  # degrees, phasestem's scan.rotation
    transpose: bool
    curl_ratio: dict[bool, float]  # transpose -> least / largest curl energy over θ
    curve: dict[bool, np.ndarray]  # transpose -> (180,) relative curl energy at 0..179°
    branch: str  # how θ vs θ + 180° was decided: 'dark field' or 'skewness'
    branch_score: float  # correlation with the dark field (or skewness) at the chosen θ
    spread: float | None = None  # degrees (mod 180): largest difference of the scan halves' fits (None: too small)

    def undetermined(self, scan_shape: tuple[int, int]) -> str | None:
        """Why the data do not determine this rotation (None when they do): a scan smaller than
        :data:`MIN_SCAN` × :data:`MIN_SCAN`, or halves that disagree by more than :data:`MAX_SPREAD`."""
        if min(scan_shape) < MIN_SCAN:
            return (f"a {scan_shape[0]} × {scan_shape[1]} scan: the centre-of-mass curl and the bright-field parallax "
                    f"need at least {MIN_SCAN} × {MIN_SCAN} positions")
        if self.spread is None or self.spread > MAX_SPREAD:
            return (f"the centre-of-mass fits of the four halves of the scan differ by up to {self.spread:.0f}° "
                    f"(> {MAX_SPREAD:g}°): too little signal")
        return None

    def to_dict(self) -> dict:
        return {"rotation_deg": self.rotation, "transpose": self.transpose,
                "curl_ratio": {str(k).lower(): v for k, v in self.curl_ratio.items()},
                "branch": self.branch, "branch_score": self.branch_score, "halves_spread_deg": self.spread}


def scan_frame_field(com: np.ndarray, rotation: float, transpose: bool, step: tuple[float, float]) -> np.ndarray:
    """(Sy, Sx, 2) field S·R(θ)ᵀ·c: the CoM (file frame, px) as a gradient over scan indices."""
    c = to_detector_frame(com, transpose)
    th = math.radians(rotation)
    rt = np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])
    return (c @ rt.T) * np.asarray(step)


def _mirror(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Even extension of φ: gy odd across y edges, gx odd across x edges; (2Sy, 2Sx) each."""
    gy, gx = v[..., 0], v[..., 1]
    gy = np.concatenate([gy, -gy[::-1]], 0)
    gy = np.concatenate([gy, gy[:, ::-1]], 1)
    gx = np.concatenate([gx, gx[::-1]], 0)
    gx = np.concatenate([gx, -gx[:, ::-1]], 1)
    return gy, gx


def _curl_spectrum(v: np.ndarray, lowpass: float) -> np.ndarray:
    """Spectral curl (q × ĝ)/|q| of the mirror-extended field, low-passed (σ ``lowpass`` cycles/px)."""
    gy, gx = _mirror(v)
    qy = np.fft.fftfreq(gy.shape[0])[:, None]
    qx = np.fft.fftfreq(gy.shape[1])[None, :]
    q2 = qy**2 + qx**2
    weight = np.exp(-q2 / lowpass**2) / np.sqrt(np.where(q2 > 0, q2, 1.0))
    return weight * (qy * np.fft.fft2(gx) - qx * np.fft.fft2(gy))


def _least_curl(com: np.ndarray, transpose: bool, step, lowpass: float) -> tuple[float, float, np.ndarray]:
    a = _curl_spectrum(scan_frame_field(com, 0.0, transpose, step), lowpass)
    b = _curl_spectrum(scan_frame_field(com, 90.0, transpose, step), lowpass)
    m = np.array([[np.vdot(a, a), np.vdot(a, b)], [np.vdot(a, b), np.vdot(b, b)]]).real
    w, u = np.linalg.eigh(m)
    theta = math.degrees(math.atan2(u[1, 0], u[0, 0])) % 180.0
    g = np.radians(np.arange(180.0))
    curve = np.cos(g) ** 2 * m[0, 0] + 2 * np.cos(g) * np.sin(g) * m[0, 1] + np.sin(g) ** 2 * m[1, 1]
    if w[1] <= 1e-12 * max(float((a.real**2 + a.imag**2).sum() + (b.real**2 + b.imag**2).sum()), 1e-300) or w[1] <= 0:
        return theta, 1.0, np.ones_like(curve)  # no curl at any θ (a constant field): nothing to fit
    return theta, float(w[0] / w[1]), curve / w[1]


def _halves_spread(com: np.ndarray, theta: float, transpose: bool, step, lowpass: float) -> float | None:
    """Largest |θ_half − θ| (degrees, mod 180) of the fits on the top, bottom, left and right halves of the scan;
    90 when a half prefers the other transpose; None for scans below :data:`MIN_SCAN` rows or columns."""
    sy, sx = com.shape[:2]
    if min(sy, sx) < MIN_SCAN:
        return None
    spread = 0.0
    for part in (com[: sy // 2], com[sy // 2 :], com[:, : sx // 2], com[:, sx // 2 :]):
        fits = {t: _least_curl(part, t, step, lowpass) for t in (transpose, not transpose)}
        if fits[not transpose][1] < fits[transpose][1]:
            return 90.0
        spread = max(spread, abs((fits[transpose][0] - theta + 90.0) % 180.0 - 90.0))
    return spread


def skewness(x: np.ndarray) -> float:
    x = x - x.mean()
    return float((x**3).mean() / max((x**2).mean() ** 1.5, 1e-300))


def idpc_scan_frame(com: np.ndarray, rotation: float, transpose: bool, step) -> np.ndarray:
    """iDPC phase (Sy, Sx), arbitrary scale, on the scan grid for a given rotation and transpose."""
    from ..direct.integrate import integrate_gradient

    v = scan_frame_field(com, rotation, transpose, step)
    return integrate_gradient(v[..., 0], v[..., 1])


def choose_branch(com: np.ndarray, theta: float, transpose: bool, step, dark: np.ndarray | None
                  ) -> tuple[float, str, float]:
    """θ or θ + 180° by the sign convention of this module; returns (θ, rule, score)."""
    phase = idpc_scan_frame(com, theta, transpose, step)
    if dark is not None and np.std(dark) > 0:
        score = float(np.corrcoef(phase.ravel(), np.asarray(dark).ravel())[0, 1])
        rule = "dark field"
    else:
        score, rule = skewness(phase), "skewness"
    if score < 0:
        theta, score = theta + 180.0, -score
    return theta % 360.0, rule, score


def fit_rotation(com: np.ndarray, step: tuple[float, float], dark: np.ndarray | None = None,
                 transpose: bool | None = None, lowpass: float = 0.15, max_curl_ratio: float = MAX_CURL_RATIO,
                 strict: bool = True) -> RotationFit:
    """Rotation (degrees) and transpose of the scan relative to the detector from a CoM field (Sy, Sx, 2).

    ``dark`` (Sy, Sx) is the dark-field image that fixes θ vs θ + 180°; ``transpose`` fixes the
    transpose instead of choosing it. Raises :class:`NoContrastError` when no rotation makes the
    field notably curl-free (relative curl above ``max_curl_ratio``; pure noise gives ≈ 1), unless
    ``strict`` is False (the caller then checks ``curl_ratio`` itself).
    """
    options = [False, True] if transpose is None else [bool(transpose)]
    fits = {t: _least_curl(com, t, step, lowpass) for t in options}
    best = min(fits, key=lambda t: fits[t][1])
    theta, ratio, _ = fits[best]
    if strict and not ratio <= max_curl_ratio:
        raise NoContrastError(
            f"no specimen contrast: the centre-of-mass field is nearly as curled as it is divergent at every "
            f"rotation (relative curl {ratio:.2f} > {max_curl_ratio}); vacuum-only data, or too few counts to "
            "calibrate the rotation")
    spread = _halves_spread(com, theta, best, step, lowpass)
    theta, rule, score = choose_branch(com, theta, best, step, dark)
    return RotationFit(rotation=theta, transpose=best, curl_ratio={t: f[1] for t, f in fits.items()},
                       curve={t: f[2] for t, f in fits.items()}, branch=rule, branch_score=score, spread=spread)
