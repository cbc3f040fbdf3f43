"""Error bars on the phase: its standard deviation per pixel from the Fisher information of the data (issue 53).

At the solution, with the probe and the positions held at their final values, a change δφ of one object pixel's
phase r changes the far field of every pattern j that lights it by i·ψ_j(r)·δφ (ψ_j the wave there). Under Poisson
counts (c counts per pattern, patterns normalised to a total of 1) the Fisher information of that pixel is

    F(r) = 4c Σ_j Σ_k Re(conj(Ψ̂_jk) ∂Ψ_jk)² = 2c Σ_j |ψ_j(r)|² + 2c Σ_j Re(−ψ_j(r)² G_j(2r)),

Ψ̂ the far field's unit phase and G_j the transform of conj(Ψ̂_j)². The second term oscillates with the position
and averages out over an overlapping scan (measured: the exact diagonal equals the first term to 0.1 % in the
median, NumPy multislice, 1 Å step, 100 Å defocus), so the diagonal is 2c Σ_j Σ_m |P_m(r − r_j)|² times the
intensity the object passes: the lsq solver's whole-scan curvature
(:func:`phasestem.recon.precondition.scan_sums`, one FFT convolution on the object grid). Gaussian noise of σ_n
counts per detector pixel (M pixels) gives 2c² Σ_j |ψ_j|² / (M σ_n²) instead.

The data carry first-order information about the phase only inside the band the probe's aperture transfers
(spatial frequencies q where the aperture overlaps itself shifted by q: |q| ≤ 2α/λ for a round one); the
reconstruction does not move outside it. The noise of the estimate is then spread over that band only, and

    σ(r) = √(b / F(r)),   b = the band's share of the pixel grid's frequencies,

per slice. The slices' errors are counted as independent: σ of the summed phase is √(Σ_s σ_s²).

That is the map's shape. Its scale for the estimate a run returns is measured (issue 65): on a defocused probe the
spread of independent noise realisations was 1.6–3.3 × this σ and grew with the epochs (the solver fits into the
noise near the band's edge, where the Fisher bound is far from what a stopped solver reaches); with the dose's blur
and the counted decay of the default recipe it was 0.13–1.5 × on nine geometries, so no one factor fits. So
``run.uncertainty: auto`` multiplies the map by κ from a parametric bootstrap of a block of the scan reconstructed
by the run's own recipe (:mod:`phasestem.recon.sigma_bootstrap`); that κ includes the probe's and positions' share
and the run's stopping. Where the realisations' spread does not follow the Fisher map's shape (a regularised
estimate at low dose or of several slices spreads alike where the data say more and where they say less), the
bootstrap also fits the power p of the Fisher σ it follows, σ = κ σ_ref (σ_F / σ_ref)^p with p in [0, 1].
``fisher`` keeps the unscaled map (fast; off by 0.13–3.3 × as above).

What it leaves out (the run log says so): the error of the model (too few slices, partial coherence, a detector the
forward model does not describe), the estimate's bias, correlations between pixels beyond the bootstrap's block and
between slices. Calibration against the spread of independent noise realisations: ``benchmarks/uncertainty/`` and
``docs/benchmarks.md``; on a user's own file: ``phasestem calibrate-sigma``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

#: pixels lit by less than this fraction of the scan's brightest illumination are "not constrained"
UNCONSTRAINED_FRACTION = 0.05
#: |phase − local mean| / σ above this is "significant" in figures and flags
SIGNIFICANT = 3.0
#: the probe spectrum's pixels above this fraction of its peak intensity make the aperture (for the band)
APERTURE_LEVEL = 1e-2

LEAVES_OUT = ("model error (slices, partial coherence, detector), the estimate's bias, correlations between pixels "
              "beyond the bootstrap's block and between slices")
#: what the Fisher σ alone is off by (docs/benchmarks.md, "σ on every geometry"): the spread of independent noise
#: realisations over it, with the default recipe (the dose's blur, the counted decay) and without the blur
UNSCALED_FACTOR = ("expect the true spread at 0.13–1.5 × this σ (nine geometries, default recipe: less on several "
                   "slices and at low dose, more on a focused probe), 1.6–3.3 × on a defocused probe without the "
                   "dose's blur")
#: LEAVES_OUT of a map the bootstrap did not scale
UNSCALED_LEAVES_OUT = ("the probe's and the positions' uncertainty (held at their final values), the solver's "
                       "stopping, " + LEAVES_OUT)


@dataclass
class PhaseUncertainty:
    """σ maps of a reconstruction's phase (object frame, pixels of the model).

    ``sigma`` (S, Ny, Nx) rad per slice; ``sigma_sum`` (Ny, Nx) rad of the phase summed over slices; ``fisher``
    (Ny, Nx) rad⁻² per slice pixel; ``constrained`` (Ny, Nx) bool: lit by at least :data:`UNCONSTRAINED_FRACTION`
    of the brightest illumination (σ is inf where nothing lights a pixel); ``noise`` the noise model in words,
    ``band_fraction`` b, ``seconds`` the time it took; ``scale`` κ the maps were multiplied by and ``scale_note`` how
    it was measured or why it was not, ``bootstrapped`` whether the bootstrap scaled them, ``shape_exponent`` p of
    the bootstrap's shape κ σ_ref (σ_F / σ_ref)^p (1: the Fisher map × κ)."""

    sigma: np.ndarray
    sigma_sum: np.ndarray
    fisher: np.ndarray
    constrained: np.ndarray
    noise: str
    band_fraction: float
    seconds: float
    scale: float = 1.0
    scale_note: str = ""
    bootstrapped: bool = False
    shape_exponent: float = 1.0

    def scaled(self, sigma_sum: np.ndarray, factor: float, exponent: float, note: str, seconds: float
               ) -> PhaseUncertainty:
        """The maps with ``sigma_sum`` (the summed phase's new σ map: κ = ``factor`` times the power ``exponent``
        of the Fisher σ) and each slice's map × the same per-pixel ratio; ``note`` saying how it was measured,
        ``seconds`` more spent."""
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(np.isfinite(self.sigma_sum), sigma_sum / self.sigma_sum, factor)
        return replace(self, sigma=self.sigma * ratio, sigma_sum=np.asarray(sigma_sum, np.float64),
                       scale=float(factor), scale_note=note, seconds=self.seconds + seconds, bootstrapped=True,
                       shape_exponent=float(exponent))

    @property
    def fisher_sigma_sum(self) -> np.ndarray:
        """The summed phase's σ from the Fisher information alone (Ny, Nx) rad, before any bootstrap scale."""
        return fisher_sigma(self.band_fraction, self.fisher) * math.sqrt(self.sigma.shape[0])

    @property
    def leaves_out(self) -> str:
        return LEAVES_OUT if self.bootstrapped else UNSCALED_LEAVES_OUT

    def describe(self) -> str:
        """One line for the run log: the model, the median σ over the constrained pixels, its scale, what it leaves
        out."""
        inside = self.sigma_sum[self.constrained]
        median = float(np.median(inside)) if inside.size else float("nan")
        n = int(self.constrained.sum())
        scale = self.scale_note or f"not scaled (the Fisher σ alone); {UNSCALED_FACTOR}"
        return (f"phase σ per pixel (shape: Fisher information of the data, {self.noise}; {scale}): median "
                f"{median:.4g} rad over the {n} constrained pixels, {self.seconds:.2f} s; leaves out "
                f"{self.leaves_out}")

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of results.h5's ``uncertainty`` group."""
        return {"phase_sigma": self.sigma.astype(np.float32), "phase_sum_sigma": self.sigma_sum.astype(np.float32),
                "fisher": self.fisher.astype(np.float32), "constrained": self.constrained.astype(np.uint8)}


def transferred_band(probe: torch.Tensor, level: float = APERTURE_LEVEL) -> float:
    """The share of the window's spatial frequencies inside the band the probe transfers: q such that the aperture
    (spectrum intensity above ``level`` × its peak, probe modes summed) overlaps itself shifted by q. ``probe``
    (M, ny, nx) complex."""
    spec = torch.fft.fft2(probe.detach().to(torch.complex64)).abs().square().sum(0)
    aperture = (spec > level * spec.max()).to(torch.float32)
    overlap = torch.fft.ifft2(torch.fft.fft2(aperture).abs().square()).real  # aperture ⋆ aperture
    return float((overlap > 0.5).float().mean())


@torch.no_grad()
def fisher_diagonal(model, counts: float, noise_sigma: float | None = None) -> torch.Tensor:
    """The Fisher information of one slice pixel's phase (Ny, Nx) rad⁻² at ``model``'s state (module docstring):
    Poisson counts with ``counts`` per pattern, or, with ``noise_sigma`` (counts per detector pixel), Gaussian."""
    from .precondition import mean_transmission, scan_sums

    lit = scan_sums(model)[0] * mean_transmission(model)  # Σ_j |ψ_j(r)|²
    if noise_sigma is None:
        return 2.0 * float(counts) * lit
    pixels = math.prod(model.detector_shape)
    return 2.0 * float(counts) ** 2 * lit / (pixels * float(noise_sigma) ** 2)


def fisher_sigma(band_fraction: float, fisher: np.ndarray) -> np.ndarray:
    """One slice pixel's phase σ (rad) from its Fisher information ``fisher`` (rad⁻²) spread over the transferred
    band's share ``band_fraction`` of the frequencies: √(b / F), inf where nothing lights the pixel."""
    with np.errstate(divide="ignore"):
        return np.sqrt(band_fraction / np.asarray(fisher, np.float64))


def phase_uncertainty(model, counts: float, noise_sigma: float | None = None) -> PhaseUncertainty:
    """σ maps of ``model``'s phase (:class:`PhaseUncertainty`) under Poisson counts (``counts`` per pattern, the
    mean total count) or Gaussian noise of ``noise_sigma`` counts per detector pixel."""
    if not (math.isfinite(counts) and counts > 0):
        raise ValueError(f"counts per pattern must be a positive number, got {counts}")
    if noise_sigma is not None and not (math.isfinite(noise_sigma) and noise_sigma > 0):
        raise ValueError(f"noise_sigma must be a positive number of counts, got {noise_sigma}")
    t0 = time.perf_counter()
    fisher = fisher_diagonal(model, counts, noise_sigma).double().cpu()
    band = transferred_band(model.get_probe())
    per_slice = fisher_sigma(band, fisher.numpy())
    S = model.n_slices
    sigma = np.broadcast_to(per_slice, (S, *per_slice.shape)).copy()
    sigma_sum = per_slice * math.sqrt(S)
    constrained = (fisher >= UNCONSTRAINED_FRACTION * fisher.max()).numpy() & np.isfinite(sigma_sum)
    noise = (f"Poisson counts, {counts:.4g} per pattern" if noise_sigma is None
             else f"Gaussian, σ {noise_sigma:.4g} counts per detector pixel, {counts:.4g} counts per pattern")
    return PhaseUncertainty(sigma, sigma_sum, fisher.numpy(), constrained, noise, band, time.perf_counter() - t0)


def significance(phase: np.ndarray, sigma: np.ndarray, scale_px: float) -> np.ndarray:
    """|φ − local mean| / σ (same shape; NaN where σ is not finite): how many standard deviations each pixel stands
    out of its surroundings, the local mean a Gaussian of ``scale_px`` pixels (σ of the Gaussian) around it."""
    from scipy.ndimage import gaussian_filter

    phase = np.asarray(phase, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    local = gaussian_filter(phase, float(scale_px), mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(phase - local) / sigma
    return np.where(np.isfinite(sigma) & (sigma > 0), z, np.nan)


def change_in_sigma(before: np.ndarray, after: np.ndarray, sigma: np.ndarray,
                    field: np.ndarray | None = None) -> np.ndarray:
    """(after − before − their median difference over ``field``) / σ: a change of the phase (by a learned restorer or
    prior) in units of the data's standard deviation; NaN where σ is not finite. The constant offset, which the
    data do not determine, is taken out first."""
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    sigma = np.asarray(sigma, np.float64)
    ok = np.isfinite(sigma) & (sigma > 0) & (np.ones(sigma.shape, bool) if field is None else np.asarray(field) > 0)
    diff = after - before
    diff -= np.median(diff[ok]) if ok.any() else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, diff / sigma, np.nan)


def unsupported_fraction(change: np.ndarray, threshold: float = SIGNIFICANT) -> float:
    """The share of the finite pixels of a :func:`change_in_sigma` map beyond ``threshold`` σ."""
    finite = np.isfinite(change)
    return float((np.abs(change[finite]) > threshold).mean()) if finite.any() else 0.0


def run_uncertainty(model, dataset, mode: Literal["auto", "fisher", "off"] = "auto", noise_sigma: float | None = None,
                    rerun=None) -> str:
    """``run.uncertainty`` at the end of a run: sets ``model.uncertainty`` (Poisson when ``dataset``'s patterns are
    counts by :func:`phasestem.io.counts.counts_decision`, the run's own decision where it made one; Gaussian with
    ``noise_sigma``) and returns the run log's line, or why it was not computed. ``auto`` with ``rerun(dataset) ->
    model`` (the run's recipe on a part of the scan) scales the maps by the bootstrap's κ
    (:mod:`phasestem.recon.sigma_bootstrap`); ``fisher`` (or no ``rerun``) leaves them unscaled."""
    from ..io.counts import counts_decision

    model.uncertainty = None
    if mode == "off":
        return "phase σ not computed (run.uncertainty: off)"
    counts = model.counts_per_pattern
    if counts is None:
        return "phase σ not computed: the run made no epoch on the data"
    decision = counts_decision(dataset) if noise_sigma is None else None
    if decision is not None and not decision.counted:
        return (f"phase σ not computed: the patterns are not counts ({decision.reason}) and run.noise_sigma is not "
                "given, so there is no noise model (data.counts: true in the parameter file if they are counts)")
    model.uncertainty = phase_uncertainty(model, counts, noise_sigma)
    if mode == "auto" and rerun is not None:
        model.uncertainty = _bootstrap_scaled(model, dataset, rerun, noise_sigma)
    elif mode == "fisher":
        model.uncertainty = replace(model.uncertainty,
                                    scale_note=f"not scaled (run.uncertainty: fisher); {UNSCALED_FACTOR}")
    return model.uncertainty.describe() + ("" if decision is None else f"; counts because {decision.reason}")


def _bootstrap_scaled(model, dataset, rerun, noise_sigma: float | None) -> PhaseUncertainty:
    """``model.uncertainty`` × the bootstrap's κ, or unscaled with the reason in its note."""
    import warnings

    from .sigma_bootstrap import NoBlock, bootstrap_scale

    u = model.uncertainty
    t0 = time.perf_counter()
    recon_log = logging.getLogger("phasestem.recon")
    level = recon_log.level
    recon_log.setLevel(logging.WARNING)  # the realisations' own epochs and settings stay out of the run log
    result, why = None, ""
    try:
        total = float(model.data_total or model.counts_per_pattern)
        with warnings.catch_warnings():  # the realisations' warnings repeat the run's (the same recipe, settings)
            warnings.simplefilter("ignore")
            result = bootstrap_scale(model, dataset, rerun, _sigma_of(noise_sigma), total, noise_sigma)
    except NoBlock as exc:
        why = f"not scaled: the bootstrap has no block to measure on ({exc}); {UNSCALED_FACTOR}"
    except (FloatingPointError, ValueError) as exc:  # a diverged realisation (recon.callbacks.DivergenceError)
        why = f"not scaled: the bootstrap failed ({exc}); {UNSCALED_FACTOR}"
    finally:
        recon_log.setLevel(level)
    if result is None:
        return replace(u, scale_note=why, seconds=u.seconds + time.perf_counter() - t0)
    return u.scaled(result.shape(u.sigma_sum), result.factor, result.exponent, result.describe(), result.seconds)


def _sigma_of(noise_sigma: float | None):
    """The bootstrap's σ of a realisation's model: its Fisher σ of the summed phase and constrained pixels."""
    def sigma_of(fitted):
        u = phase_uncertainty(fitted, fitted.counts_per_pattern, noise_sigma)
        return u.sigma_sum, u.constrained
    return sigma_of
