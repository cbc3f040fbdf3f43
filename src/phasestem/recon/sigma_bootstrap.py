"""The σ map's scale measured on the run's own estimator: a parametric bootstrap of a block of the scan (issue 65).

The Fisher information (:mod:`phasestem.recon.uncertainty`) gives the shape of the σ map (where the scan lights
the object more, the phase is better known) but not its scale for the estimate a run returns: measured on
independent NumPy multislice data (20 mrad, 100 Å defocus, 1 Å step, 10⁴ e⁻), the spread of two noise
realisations was 1.6–2.9 × the Fisher σ, growing with the epochs, with the probe and positions held or refined
alike. Its spectrum shows why: the excess lies near the edge of the transferred band (1.2–2.0 Å⁻¹ at 20 mrad, 4–9 ×
the Cramér–Rao bound there), where the overlap of the aperture with its shifted self is thin and Poisson counts
are few, and it grows as the solver fits further into the noise. Neither a band share nor the exact inverse of the
Fisher matrix (the circulant inverse read 0.041 rad against the spread's 0.073) describes an estimator stopped after
a number of epochs of a given solver.

So the scale is measured where it is made: the fitted model predicts the patterns of a central block of the scan
(``block`` × ``block`` positions), ``realisations`` Poisson draws at the run's counts per pattern (or Gaussian noise
of ``run.noise_sigma``) are reconstructed by the run's own recipe (``rerun``: the same solver, losses, constraints,
refinements of the probe and positions, epochs, from the same start), and the factor

    κ = √( mean over the block's inner constrained pixels of  var_k(φ_k − mean φ_k) / σ_F² ),

σ_F the Fisher σ of each realisation's own model, scales the whole map: σ = κ · σ_F. Where the spread does not
follow σ_F over the block's pixels (a regularised estimate: four slices at 10³ e⁻ spread alike where the Fisher σ
differs 2.4 ×), the map takes the power of σ_F the spread follows (:func:`shape_exponent`), σ = κ σ_ref (σ_F /
σ_ref)^p, κ then the scale of that shape. The block's σ therefore includes the probe's and positions' share and the
regularisation of stopping where the run stops; what it leaves out is the model error (the fitted model is the
bootstrap's truth) and correlations longer than the block. The block is 16 × 16 positions: the probe is refined
from the block's patterns alone, and a smaller block's probe is noisier than the run's (12 × 12 made σ 1.2 × too large
on three slices at 10⁴ e⁻ and on a 2 Å step at 10³ e⁻, 16 × 16 and 20 × 20 within 5 %). A block spans at least
:data:`MIN_SPAN` Å (26 × 26 positions at a 0.4 Å step), and only its pixels a probe radius (at most half the model's
window: :func:`lit_radius`) and :data:`EDGE_MARGIN` inside its lit field are scored.

The cost (issue 86): two realisations (the variance of a pair is unbiased; κ is a mean over thousands of pixels),
each in :func:`block_schedule`'s steps (as many Gauss–Newton moves per epoch as the run's, in fewer, wider batches
where the lsq solver's whole-scan share allows), and, for a run whose steps decay over all its epochs, in
:func:`bootstrap_epochs`' epochs, the decay compressed to keep the realisations within :data:`BUDGET` of the run's
work, unless their spread still grew over their last epoch. On the README's first hour (the seed's 50 × 50 scan at
2 Å, 20 epochs) σ took 38 s beside the run's 38 s of epochs and left σ unscaled; now 3.5 s (7 epochs of 32 steps)
beside 41 s, κ 1.03. On six slices of 32 × 32 at 1e5 counts 117 s beside 122 s (κ 0.309), now 14.5 s beside 129 s
(4 epochs, κ 0.331); one core each, load about 1.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..detector import sum_bins

log = logging.getLogger("phasestem.recon")

#: the bootstrap's default block side (positions) and number of realisations
BLOCK, REALISATIONS = 16, 2
#: the realisations' work (positions × epochs, all together) is at most this share of the run's: a run whose steps
#: decay over all its epochs is repeated on the block in fewer epochs (its decay compressed) where the run's own
#: would exceed it, never fewer than MIN_EPOCHS (:func:`bootstrap_epochs`)
BUDGET, MIN_EPOCHS = 0.08, 4
#: the block's positions span at least this many Å (a finer step takes more positions)
MIN_SPAN = 10.0
#: pixels of the block's lit field at least the probe's radius and this far (Å) inside its edge are scored (the
#: block's own edge is lit by fewer positions than the run's field there)
EDGE_MARGIN = 2.0
#: the residual test bins BIN × BIN detector pixels (a bin holds enough counts for a χ² at low dose) and reads the
#: bins whose expectation is at least MIN_BIN_COUNTS
BIN, MIN_BIN_COUNTS = 8, 5.0
#: the shape's exponent is fitted over this many quantile bins of the Fisher σ, where their outer bins' medians
#: differ by at least this factor (:func:`shape_exponent`)
SHAPE_BINS, SHAPE_MIN_SPAN = 5, 1.15
#: the fewest scored pixels κ is measured on
MIN_PIXELS = 16
#: the shape's power holds up to this quantile of the block's Fisher σ, the Fisher shape above it
MEASURED_TOP = 0.98


class NoBlock(Exception):
    """The bootstrap cannot measure κ on this run: one line saying why (the run's σ then stays the Fisher σ)."""


@dataclass
class BootstrapScale:
    """κ (σ's scale factor) from a parametric bootstrap, with what it was measured on."""

    factor: float
    block: tuple[int, int]
    realisations: int
    epochs: int
    pixels: int
    seconds: float
    refined: tuple[str, ...]
    chi2: float = float("nan")
    residual_share: float = 0.0
    exponent: float = 1.0
    reference: float = 1.0
    measured: float = math.inf
    run_epochs: int = 0
    grew_at: int = 0

    def shape(self, fisher_sigma: np.ndarray) -> np.ndarray:
        """σ from a Fisher σ map (any shape, rad): κ · σ_ref · (σ_F / σ_ref)^p (:func:`shape_exponent`) up to the
        largest σ_F the block measured (``measured``, rad), the Fisher shape above it: pixels less lit than any the
        block represents (the scan's edges, the unlit surround) keep σ growing as their information falls; better
        lit ones spread as the regularised block does (on the development case of three slices at 10³ e⁻ the Fisher
        shape below the block's range as well read the worst pair 91.6 % within 2 σ against 92.2 %)."""
        return self.factor * power_shape(fisher_sigma, self.exponent, self.reference, self.measured)

    def describe(self) -> str:
        """The run log's words for it."""
        what = ", ".join(self.refined) if self.refined else "the object alone"
        mean = "the fitted model" if self.residual_share < 0.005 else (
            f"the fitted model + {self.residual_share:.2f} × its residual: its binned χ²/dof is {self.chi2:.3g}, "
            f"structure in the data it does not describe")
        shape = ("" if self.exponent == 1.0 else
                 f" and shaped as (σ_F / {self.reference:.3g} rad)^{self.exponent:.2f}, the power of the Fisher σ "
                 f"the realisations' spread follows, up to σ_F {self.measured:.3g} rad (the Fisher shape above)")
        epochs = f"{self.epochs} epochs" if self.run_epochs in (0, self.epochs) else (
            f"{self.epochs} epochs, its decay over the run's {self.run_epochs} compressed into them, over whose last "
            "the spread fell")
        if self.grew_at:
            epochs += (f" (compressed into {self.grew_at} their spread still grew over the last epoch: the run's own "
                       "epochs)")
        return (f"scaled by κ = {self.factor:.3g}{shape}, the spread of {self.realisations} parametric-bootstrap "
                f"realisations of the scan's central {self.block[0]} × {self.block[1]} positions (Poisson draws "
                f"from {mean}, each reconstructed by this run's recipe: {epochs}, refining "
                f"{what}) over their Fisher σ on {self.pixels} pixels, {self.seconds:.1f} s")


def central_block(scan_shape: tuple[int, int], block: int) -> tuple[slice, slice]:
    """The rows and columns of the central ``block`` × ``block`` positions (the whole scan where smaller)."""
    sy, sx = scan_shape
    ny, nx = min(block, sy), min(block, sx)
    y0, x0 = (sy - ny) // 2, (sx - nx) // 2
    return slice(y0, y0 + ny), slice(x0, x0 + nx)


def block_predictions(model, dataset, rows: slice, cols: slice) -> np.ndarray:
    """The fitted ``model``'s patterns (by, bx, H, W) of the scan block ``rows`` × ``cols``: its intensities, each
    pattern's total about 1, in the data's layout."""
    sy, sx = dataset.scan_shape
    index = np.arange(sy * sx).reshape(sy, sx)[rows, cols]
    sim = model.simulate(torch.as_tensor(index.reshape(-1), device=model.device)).double().cpu().numpy()
    return sim.reshape(*index.shape, *sim.shape[-2:])


def block_batch_size(batch_size: int | None, position_share: float) -> int | None:
    """The batch a block rerun takes: the run's ``batch_size`` × ``position_share`` (the block's positions over the
    run's), at least 1, so that every pixel is updated about as often per epoch as in the run (None: whole-scan
    batches, as the run)."""
    return batch_size and max(1, round(batch_size * position_share))


def block_schedule(batch_size: int | None, precondition_batches: int | None, n_block: int, n_total: int
                   ) -> tuple[int | None, int | None]:
    """(batch size, ``run.precondition_batches``) of a block rerun of ``n_block`` positions for a run of
    ``n_total`` in batches of ``batch_size`` with the lsq solver's whole-scan share T = ``precondition_batches``
    (:mod:`phasestem.recon.precondition`; None: none, or another solver).

    Without T: :func:`block_batch_size` (each pixel updated as often per epoch as in the run). With T an lsq epoch
    moves a pixel by T / (1 + ρ) Gauss–Newton steps of the whole data, ρ = batch × T / positions the batch's own
    curvature over the scan's share, whatever the number of steps: the block takes batches of up to
    n_block / (2 G), G = T / (1 + ρ_run) the run's steps (its own ρ at most 1), and the T that gives it the same G.
    Its steps then cost far less than the run's batches scaled down (the seed's 16 × 16 block at a 2 Å step: 32
    steps of 8 patterns per epoch instead of 128 of 2, κ 1.035 against 1.031 and 1.043 for two draws of the
    latter), where a step's fixed cost, not its patterns, set the time."""
    scaled = block_batch_size(batch_size, n_block / n_total)
    if not (batch_size and precondition_batches):
        return scaled, precondition_batches
    steps = precondition_batches / (1.0 + batch_size * precondition_batches / n_total)
    widest = min(int(batch_size), int(n_block / (2.0 * steps)))
    if widest <= scaled:
        return scaled, precondition_batches
    return widest, max(1, round(steps / (1.0 - steps * widest / n_block)))


def bootstrap_epochs(run_epochs: int, decays: bool, n_block: int, n_total: int, realisations: int) -> int:
    """The epochs of a block rerun: the run's ``run_epochs``, or, for a run whose steps decay over all its epochs
    (``decays``: counted data's default, the cosine to lr_final where the run ends), as many as keep the
    realisations' work (``realisations`` × ``n_block`` positions × epochs) within :data:`BUDGET` of the run's
    (``n_total`` × ``run_epochs``), at least :data:`MIN_EPOCHS`, the decay compressed into them. Where the decay's
    averaging sets the spread (it falls over a decayed run's last epochs), its length hardly matters: κ of the decay
    compressed into 4, 5, 7 of 20 epochs against the run's own, with the same draws, on the seed at 1e4 counts
    (unblurred: a crystal) 1.055, 1.040, 1.033 against 1.051; six slices of 32 × 32 at 1e5 (the dose's blur) 0.331,
    0.328 (10: 0.317) against 0.316; 12 × 12 at 1e4 with the blur 0.491, 0.498 (10: 0.474) against 0.459 (σ errs
    large, by 0–9 %). Where the estimate fits the noise further every epoch (no blur on a dense defocused scan: the
    spread grew to the last epoch, 0.80 → 1.84 × the Fisher σ) a compressed decay understates it (1.26 from 5):
    :func:`bootstrap_scale` sees the spread still growing over the last epoch and takes the run's own epochs."""
    if not decays or run_epochs <= MIN_EPOCHS:
        return int(run_epochs)
    fits = int(BUDGET * n_total * run_epochs / (realisations * n_block))
    return int(min(run_epochs, max(MIN_EPOCHS, fits)))


def residual_share(expected: np.ndarray, measured: np.ndarray, noise_variance: float | None = None,
                   bin_side: int = BIN) -> tuple[float, float]:
    """(binned χ²/dof of ``measured`` against ``expected``, α = max(0, 1 − 1/χ²)): α is the share of the residual's
    variance beyond the noise, the truth's structure the fitted model misses. Patterns (…, H, W): Poisson counts
    (``noise_variance`` None; bins expecting at least :data:`MIN_BIN_COUNTS` counts), or data units with Gaussian
    noise of ``noise_variance`` per pixel (every bin); bins of ``bin_side`` × ``bin_side`` pixels. The draws' mean
    ``expected + α (measured − expected)`` is the usual shrinkage estimate of the truth's patterns: the model where it
    explains the data to their noise (α ≈ 0), the data where it does not (α → 1)."""
    def binned(a: np.ndarray) -> np.ndarray:  # whole bins from pixel (0, 0); the rest of the frame dropped
        h, w = (n - n % bin_side for n in a.shape[-2:])
        return sum_bins(a[..., :h, :w], (bin_side, bin_side))

    e, m = binned(np.asarray(expected, np.float64)), binned(np.asarray(measured, np.float64))
    if noise_variance is None:
        use, var = e >= MIN_BIN_COUNTS, e
    else:
        use, var = np.ones(e.shape, bool), np.full(e.shape, float(noise_variance) * bin_side**2)
    if not use.any():
        return float("nan"), 0.0
    chi2 = float(((m - e) ** 2 / var)[use].mean())
    return chi2, (max(0.0, 1.0 - 1.0 / chi2) if chi2 > 0 else 0.0)


def noise_realisation(predicted: np.ndarray, counts: float, data_total: float, noise_sigma: float | None,
                      rng: np.random.Generator) -> np.ndarray:
    """One noise realisation (float32, the data's units) of a fitted model's patterns ``predicted`` (each total about
    1): Poisson draws at ``counts`` per pattern scaled to the data's mean total ``data_total`` (whole counts stay
    whole where the two are equal), or with ``noise_sigma`` Gaussian noise of that many data units per pixel."""
    expected = np.clip(np.asarray(predicted, dtype=np.float64), 0, None)
    if noise_sigma is None:
        return (rng.poisson(expected * counts) * (data_total / counts)).astype(np.float32)
    return (expected * data_total + rng.normal(0.0, noise_sigma, expected.shape)).astype(np.float32)


def bootstrap_scale(model, dataset, rerun: Callable, sigma_of: Callable, data_total: float,
                    noise_sigma: float | None = None, block: int = BLOCK, realisations: int = REALISATIONS,
                    seed: int = 0) -> BootstrapScale:
    """κ of the σ map (module docstring) for ``model`` fitted to ``dataset``.

    ``rerun(sub_dataset, position_share) -> model``: a fresh model reconstructed by the run's recipe, each object
    pixel moved as far per epoch as in the run (its batches ``position_share``, the block's positions over the
    run's, of the run's, or :func:`block_schedule`'s: a block run in the run's batches of 32 would take a fraction
    of the run's steps and stop short of where the run stopped). A recipe whose ``decays`` attribute is true (its
    steps decay over all its ``epochs``) is called ``rerun(sub_dataset, position_share, epochs=E, on_epoch=f)``
    with :func:`bootstrap_epochs`' E and ``f(model)`` after every epoch: where the realisations' spread still grew
    over their last epoch (the estimate fits the noise further with every epoch, as an unregularised one on a
    dense scan does), the compressed decay would understate it, and they are reconstructed again over the run's
    own epochs. ``sigma_of(model) -> (sigma (Ny, Nx), constrained (Ny, Nx) bool)`` the Fisher σ of a model's
    summed phase (object frame); ``data_total`` the data's mean pattern total (data units) and
    ``model.counts_per_pattern`` the counts it stands for. :class:`NoBlock` (saying why) when the scan or the
    model's patterns leave nothing to measure on."""
    if realisations < 2:
        raise ValueError(f"the bootstrap needs at least 2 realisations, got {realisations}")
    t0 = time.perf_counter()
    rows, cols = central_block(dataset.scan_shape, block_side(dataset, block))
    _check_span(dataset, rows, cols, model)
    expected = block_predictions(model, dataset, rows, cols)
    if tuple(expected.shape[-2:]) != tuple(dataset.pattern_shape):
        raise NoBlock(f"the model's patterns {tuple(expected.shape[-2:])} are not the data's "
                      f"{tuple(dataset.pattern_shape)}")
    counts = float(model.counts_per_pattern)
    sub = dataset.scan_subset(rows, cols)
    share = sub.n_patterns / dataset.n_patterns
    measured = np.asarray(sub.patterns, np.float64).reshape(expected.shape)
    expected, chi2, alpha = shrunk_towards_data(expected, measured, counts,
                                                float(data_total), noise_sigma)
    draws = [sub._replace(patterns=noise_realisation(expected, counts, float(data_total), noise_sigma,
                                                     np.random.default_rng(seed + k))) for k in range(realisations)]
    run_epochs = int(getattr(rerun, "epochs", 0) or 0)
    shorter = bootstrap_epochs(run_epochs, getattr(rerun, "decays", False), sub.n_patterns, dataset.n_patterns,
                               realisations)
    grew = False
    if 0 < shorter < run_epochs:
        fits = _realisations(rerun, draws, share, sigma_of, dataset, epochs=shorter)
        grew = fits.grew
    if not 0 < shorter < run_epochs or grew:
        fits = _realisations(rerun, draws, share, sigma_of, dataset)
    var, sigma, inner = fits.var, fits.sigma, fits.inner
    exponent, reference = shape_exponent(var[inner], sigma[inner])
    factor = math.sqrt(float(np.mean(var[inner] / power_shape(sigma[inner], exponent, reference) ** 2)))
    top = float(np.quantile(sigma[inner], MEASURED_TOP))
    return BootstrapScale(factor, (rows.stop - rows.start, cols.stop - cols.start), realisations, fits.epochs,
                          int(inner.sum()), time.perf_counter() - t0, fits.refined, chi2, alpha, exponent, reference,
                          top, run_epochs or fits.epochs, shorter if grew else 0)


@dataclass
class _Fits:
    """The realisations' per-pixel variance of the summed phase (each one's constant removed), mean Fisher σ and
    scored pixels (:func:`_realisations`), their epochs, what they refined, and whether their spread grew over their
    last epoch."""

    var: np.ndarray
    sigma: np.ndarray
    inner: np.ndarray
    epochs: int
    refined: tuple[str, ...]
    grew: bool


def _realisations(rerun: Callable, draws: list, share: float, sigma_of: Callable, dataset,
                  epochs: int | None = None) -> _Fits:
    """``draws`` reconstructed by ``rerun`` (over ``epochs``, its decay compressed into them; None: the run's own),
    measured over the block's scored pixels (:class:`NoBlock` when too few)."""
    phases, before, sigmas, masks = [], [], [], []
    fitted = None
    for draw in draws:
        seen: list[np.ndarray] = []

        def keep(m, seen=seen):  # the summed phase after each epoch: the last two are kept
            with torch.no_grad():
                seen[:] = seen[-1:] + [m.obj_phase[0].sum(0).double().cpu().numpy()]
        fitted = rerun(draw, share) if epochs is None else rerun(draw, share, epochs=epochs, on_epoch=keep)
        sigma, lit = sigma_of(fitted)
        with torch.no_grad():
            phases.append(fitted.obj_phase[0].sum(0).double().cpu().numpy())
        before.append(seen[0] if len(seen) == 2 else None)
        sigmas.append(sigma)
        masks.append(lit)
    inner = _inner(np.logical_and.reduce(masks), fitted, EDGE_MARGIN + lit_radius(dataset, fitted))
    if inner.sum() < MIN_PIXELS:
        raise NoBlock(f"{int(inner.sum())} pixels of the block's constrained field lie {EDGE_MARGIN:g} Å and a probe "
                      f"radius inside its edge, fewer than the {MIN_PIXELS} it scores")
    sigma = np.mean(sigmas, axis=0)
    var = _variance(phases, inner)
    grew = False
    if epochs is not None and all(b is not None for b in before):
        grew = bool(np.mean(var[inner] / sigma[inner] ** 2) > np.mean(_variance(before, inner)[inner] /
                                                                       sigma[inner] ** 2))
    refined = tuple(name for name in ("probe", "positions") if _was_refined(fitted, name))
    return _Fits(var, sigma, inner, int(fitted.epoch), refined, grew)


def _variance(phases: list[np.ndarray], inner: np.ndarray) -> np.ndarray:
    """The per-pixel variance (ddof 1) over ``phases``, each one's mean over ``inner`` removed."""
    stack = np.stack(phases)
    stack -= np.array([p[inner].mean() for p in stack])[:, None, None]
    return stack.var(0, ddof=1)


def power_shape(fisher_sigma: np.ndarray, exponent: float, reference: float, top: float = math.inf) -> np.ndarray:
    """The σ map's shape from a Fisher σ map (any shape, rad): σ_ref (σ_F / σ_ref)^p up to σ_F = ``top``, growing
    as σ_F above it (p = 1: σ_F itself; inf stays inf)."""
    sigma = np.asarray(fisher_sigma, np.float64)
    if exponent == 1.0:
        return sigma
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = np.minimum(sigma, top)
        return reference * (inside / reference) ** exponent * (sigma / inside)


def shape_exponent(variance: np.ndarray, sigma: np.ndarray, bins: int = SHAPE_BINS) -> tuple[float, float]:
    """(p, σ_ref): the exponent of the σ map's shape σ ∝ σ_F^p that the bootstrap's per-pixel ``variance`` follows
    against the Fisher ``sigma`` (flat arrays over the scored pixels), and the median of ``sigma`` it is referred to.

    The pixels are cut into ``bins`` quantile bins of σ_F; p is the least-squares slope of log √(mean variance) on
    log (median σ_F) over the bins, clipped to [0, 1]. An estimator at the Fisher bound follows it (p = 1); a
    regularised one (low dose, few slices fitted, the dose's blur) spreads alike where the data say more and where
    they say less (p → 0: measured on four slices at 10³ e⁻, the spread 1.9 × the Fisher shape at the field's centre
    and 1.5 × at its edge). p is 1 where σ_F spans less than :data:`SHAPE_MIN_SPAN` between its outer bins (too
    narrow a lever: the slope would be noise)."""
    sigma = np.asarray(sigma, np.float64)
    variance = np.asarray(variance, np.float64)
    reference = float(np.median(sigma))
    edges = np.quantile(sigma, np.linspace(0.0, 1.0, bins + 1))
    which = np.clip(np.searchsorted(edges, sigma, side="right") - 1, 0, bins - 1)
    centres, spreads = [], []
    for b in range(bins):
        members = which == b
        if members.sum() >= 4:
            centres.append(float(np.median(sigma[members])))
            spreads.append(math.sqrt(float(variance[members].mean())))
    if len(centres) < 3 or centres[-1] < SHAPE_MIN_SPAN * centres[0] or min(spreads) <= 0:
        return 1.0, reference
    slope = float(np.polyfit(np.log(centres), np.log(spreads), 1)[0])
    return float(np.clip(slope, 0.0, 1.0)), reference


def shrunk_towards_data(predicted: np.ndarray, measured: np.ndarray, counts: float, data_total: float,
                        noise_sigma: float | None) -> tuple[np.ndarray, float, float]:
    """(the draws' mean, each pattern's total about 1; the binned χ²/dof; α) for the fitted model's ``predicted``
    patterns (totals about 1) and the ``measured`` ones (data units, mean total ``data_total``) of the block, by
    :func:`residual_share`. A low-dose multislice fit can leave most of the specimen's structure out of its model
    (measured: binned χ²/dof 23 on 4 slices at 10³ e⁻); draws from it are smoother than the data and their
    reconstructions spread less than the run's own did (κ 0.19 against 0.29 with draws from the truth's patterns)."""
    if noise_sigma is None:
        model_counts, data_counts = predicted * counts, measured * (counts / data_total)
        chi2, alpha = residual_share(model_counts, data_counts)
    else:
        chi2, alpha = residual_share(predicted * data_total, measured, float(noise_sigma) ** 2)
    if not alpha > 0:
        return predicted, chi2, 0.0
    mean = predicted + alpha * (measured / data_total - predicted)
    return np.clip(mean, 0.0, None), chi2, alpha


def block_side(dataset, block: int) -> int:
    """The block's side in positions: ``block``, or more where that spans less than :data:`MIN_SPAN` Å."""
    step = float(min(dataset.scan_step))
    return max(int(block), int(math.ceil(MIN_SPAN / step)) + 1) if step > 0 else int(block)


def _check_span(dataset, rows: slice, cols: slice, model) -> None:
    """:class:`NoBlock` before any rerun where the block's positions span too little for a scored field: its
    pixels lie :data:`EDGE_MARGIN` inside the outermost positions (the lit field eroded by a probe radius and the
    margin), at least 2 pixels of the model across."""
    step = np.asarray(dataset.scan_step, np.float64)
    span = np.array([rows.stop - rows.start - 1, cols.stop - cols.start - 1]) * step
    pixel = float(max(model.experiment.sampling))
    if float(span.min()) - 2 * EDGE_MARGIN < 2 * pixel:
        raise NoBlock(f"the scan's central {rows.stop - rows.start} × {cols.stop - cols.start} positions span "
                      f"{span[0]:.3g} × {span[1]:.3g} Å; the scored field lies {EDGE_MARGIN:g} Å inside them")


def lit_radius(dataset, model) -> float:
    """How far (Å) a probe of ``model`` lights the object from its centre: the probe's radius
    (:func:`phasestem.physics.optics.probe_radius`; 0 when the semi-angle is unknown), at most half the model's
    window, beyond which the model's probe lights nothing. The seed's 30 mrad probe at Gaussian focus with Cs 0.1 mm
    has a radius of 27 Å by the rays at its aperture's edge, its window 20 Å: an erosion by the ray radius removed the
    whole lit field of a 16 × 16 block at its 2 Å step (30 Å across), and σ went unscaled."""
    from ..physics.optics import probe_radius

    half_window = 0.5 * max(n * float(s) for n, s in zip(model.window, model.experiment.sampling, strict=True))
    if not dataset.semiangle:
        return 0.0
    return min(probe_radius(float(dataset.energy), float(dataset.semiangle), dataset.aberrations or {})[0],
               half_window)


def _inner(mask: np.ndarray, model, margin: float) -> np.ndarray:
    """``mask`` eroded by ``margin`` Å (the model's pixel)."""
    from scipy.ndimage import binary_erosion

    px = float(min(model.experiment.sampling))
    return binary_erosion(mask, iterations=max(1, int(round(margin / px))))


def _was_refined(model, name: str) -> bool:
    schedule = model.schedules.get(name)
    return schedule is not None and not (schedule.lr is not None and schedule.lr == 0)
