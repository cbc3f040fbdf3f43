"""The σ map's scale from a parametric bootstrap of a block of the scan (issue 65, phasestem.recon.sigma_bootstrap):
on a defocused probe the Fisher σ alone is about twice too small against independent noise realisations of the
independent NumPy multislice; scaled by the bootstrap's κ it predicts their spread."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from numpy_cases import numpy_scan

from phasestem.recon import Constraints, Ptychography
from phasestem.recon.settings.losses import LossConfig
from phasestem.recon.sigma_bootstrap import (
    BUDGET,
    MIN_EPOCHS,
    REALISATIONS,
    BootstrapScale,
    block_batch_size,
    block_schedule,
    bootstrap_epochs,
    bootstrap_scale,
    central_block,
    lit_radius,
    noise_realisation,
    residual_share,
    shape_exponent,
    shrunk_towards_data,
)
from phasestem.recon.uncertainty import phase_uncertainty, run_uncertainty

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EPOCHS, DOSE = 30, 1e4


def _recipe(ds, position_share: float = 1.0, blur: bool | str = False) -> Ptychography:
    """The run under test: flat start, Poisson term alone, the solver's defaults (the probe refined), 30 epochs, in
    batches of 32 (× ``position_share`` for the bootstrap's block); ``blur``: ``constraints.obj_blur.enabled`` (off:
    the estimator that fits the noise, which the Fisher σ alone undercounts; 'auto': the default, the dose's blur)."""
    model = Ptychography.from_dataset(ds, n_slices=1)
    losses = LossConfig(gaussian=0.0, poisson=1.0)
    for _ in model.LSQ_optimize(EPOCHS, ds, batch_size=block_batch_size(32, position_share), losses=losses,
                                constraints=Constraints(obj_blur={"enabled": blur}), progress=False):
        pass
    return model


def _sigma_of(model):
    u = phase_uncertainty(model, model.counts_per_pattern)
    return u.sigma_sum, u.constrained


def _four_realisations(recipe):
    """12 × 12 positions at 1 Å, 100 Å defocus, 10⁴ e⁻: four Poisson realisations of the NumPy multislice, each
    reconstructed by ``recipe``. The first's model, the four phases (mean over the lit field removed), the first's
    Fisher σ and lit field in the dataset's frame, and its bootstrap scale (block 8)."""
    clean, truth, _ = numpy_scan(3, 64, 0.2, (12, 12), 1.0, 100.0, atoms_per_area=0.6)
    expected = np.asarray(clean.patterns, dtype=np.float64)
    phases = []
    for k in range(4):
        ds = clean._replace(patterns=np.random.default_rng(100 + k).poisson(expected * DOSE).astype(np.float32))
        model = recipe(ds)
        phases.append(model.phase_in_dataset_frame(truth.shape))
        if k == 0:
            first = model
            u = phase_uncertainty(model, model.counts_per_pattern)
            frame = model.experiment.in_dataset_frame
            sigma = frame(torch.as_tensor(u.sigma_sum), truth.shape).numpy()
            lit = (frame(torch.as_tensor(u.constrained.astype(np.float32)), truth.shape).numpy() > 0) & \
                np.isfinite(sigma)
            scale = bootstrap_scale(model, ds, recipe, _sigma_of, float(model.data_total), block=8)
    p = np.array(phases)
    return first, p - p[:, lit].mean(1)[:, None, None], sigma, lit, scale


@pytest.mark.parametrize("blur", [False, "auto"])
def test_the_bootstrap_scale_makes_sigma_predict_the_spread_of_independent_realisations(blur):
    """12 × 12 positions at 1 Å, 100 Å defocus, 20 mrad, 10⁴ e⁻: four independent Poisson realisations of the NumPy
    multislice, each reconstructed for 30 epochs. The Fisher σ alone is more than 1.5 × too small (rms of spread /
    σ over the constrained field); × κ from three bootstrap realisations of the central 11 × 11 positions (10 Å:
    the smallest block) it is within 0.8–1.25, and |φ_a − φ_b| / (√2 σ) ≤ 2 on ≥ 90 % of the pixels for every pair.
    With the dose's blur (the default) the estimate no longer fits the noise and the Fisher σ is no longer too
    small: κ follows it there too."""
    recipe = functools.partial(_recipe, blur=blur)
    model, p, sigma, lit, scale = _four_realisations(recipe)
    assert scale.block == (11, 11) and scale.epochs == EPOCHS and scale.realisations == REALISATIONS == 2
    assert "probe" in scale.refined and "κ = " in scale.describe()
    spread = p.std(0, ddof=1)[lit]

    def rms_ratio(s: np.ndarray) -> float:
        return float(np.sqrt(np.mean((spread / s[lit]) ** 2)))

    if not blur:
        assert rms_ratio(sigma) > 1.5, "the Fisher σ alone was expected to be too small on this defocused probe"
    assert 0.8 <= rms_ratio(sigma * scale.factor) <= 1.25, (rms_ratio(sigma), scale.factor)
    for a in range(4):
        for b in range(a + 1, 4):
            z = np.abs(p[a] - p[b])[lit] / (np.sqrt(2) * sigma[lit] * scale.factor)
            assert (z <= 2).mean() >= 0.9


def _decaying_recipe(ds, position_share: float = 1.0, epochs: int | None = None, on_epoch=None,
                     blur: bool | str = False) -> Ptychography:
    """A parameter file's defaults on counted data: the Poisson term, lsq with the whole scan's share (T = 16) and
    the decay over the run's 20 epochs (``lr_decay: auto``, where the run ends), the block's steps by
    :func:`block_schedule`; ``epochs`` fewer, the decay compressed into them; ``on_epoch(model)`` after each."""
    model = Ptychography.from_dataset(ds, n_slices=1)
    batch, share = block_schedule(32, 16, ds.n_patterns, round(ds.n_patterns / position_share))
    for _ in model.LSQ_optimize(epochs or 20, ds, batch_size=batch, precondition_batches=share, lr_decay="auto",
                                losses=LossConfig(gaussian=0.0, poisson=1.0), progress=False,
                                constraints=Constraints(obj_blur={"enabled": blur})):
        if on_epoch is not None:
            on_epoch(model)
    return model


@pytest.mark.parametrize("blur", ["auto", False])
def test_a_decaying_run_is_repeated_in_fewer_epochs_only_where_its_spread_stops_growing(blur):
    """12 × 12 positions at 1 Å, 100 Å defocus, 10⁴ e⁻, counted data's decay over 20 epochs. With the dose's blur
    the realisations' spread falls over the decay's last epochs: they take 4, the decay compressed into them (κ
    0.49 against 0.46 over 20 with the same draws). Without it the estimate fits the noise further every epoch (the
    compressed spread 1.26 × the Fisher σ, the run's 1.84): the spread still grows over the last compressed epoch
    and the realisations take the run's 20. Either way σ predicts the spread of four independent realisations
    (measured rms ratio 0.92 and 1.05; pairs ≥ 94 % within 2 σ)."""
    recipe = functools.partial(_decaying_recipe, blur=blur)
    recipe.epochs, recipe.decays = 20, True
    model, p, sigma, lit, scale = _four_realisations(recipe)
    assert model.epoch == 20 and scale.run_epochs == 20
    if blur:
        assert scale.epochs == MIN_EPOCHS and not scale.grew_at and "compressed into them" in scale.describe()
    else:
        assert scale.epochs == 20 and scale.grew_at == MIN_EPOCHS and "still grew" in scale.describe()
    spread = p.std(0, ddof=1)[lit]
    rms = float(np.sqrt(np.mean((spread / (sigma[lit] * scale.factor)) ** 2)))
    assert 0.8 <= rms <= 1.25, (rms, scale.factor)
    for a in range(4):
        for b in range(a + 1, 4):
            z = np.abs(p[a] - p[b])[lit] / (np.sqrt(2) * sigma[lit] * scale.factor)
            assert (z <= 2).mean() >= 0.9


def test_a_run_scales_its_sigma_maps_and_fisher_mode_does_not():
    """run_uncertainty with the run's recipe multiplies both σ maps by κ and says so; ``fisher`` keeps the Fisher
    map and says it is unscaled; a recipe that diverges leaves the map unscaled with the reason."""
    clean, _, _ = numpy_scan(1, 64, 0.2, (10, 10), 1.0, 100.0, atoms_per_area=0.6)
    ds = clean._replace(patterns=np.random.default_rng(0).poisson(np.asarray(clean.patterns) * DOSE)
                        .astype(np.float32))
    model = _recipe(ds)
    line = run_uncertainty(model, ds, "fisher", rerun=_recipe)
    fisher = model.uncertainty
    assert fisher.scale == 1.0 and not fisher.bootstrapped and "not scaled (run.uncertainty: fisher)" in line
    assert "the solver's stopping" in line  # what an unscaled map leaves out
    line = run_uncertainty(model, ds, "auto", rerun=_recipe)
    scaled = model.uncertainty
    assert scaled.bootstrapped and scaled.scale > 1 and f"κ = {scaled.scale:.3g}" in line
    lit = fisher.constrained
    assert np.allclose(scaled.fisher_sigma_sum, fisher.sigma_sum)
    # σ = κ σ_ref (σ_F / σ_ref)^p (BootstrapScale.shape): a power of the Fisher map, never falling where it rises,
    # each slice × alike
    p = scaled.shape_exponent
    assert 0.0 <= p <= 1.0 and (p == 1.0) == ("shaped as" not in line)
    order = np.argsort(fisher.sigma_sum[lit])
    assert (np.diff(scaled.sigma_sum[lit][order]) >= -1e-9).all()
    if p == 1.0:
        assert np.allclose(scaled.sigma_sum[lit], fisher.sigma_sum[lit] * scaled.scale, rtol=1e-6)
    assert np.allclose(scaled.sigma[:, lit], fisher.sigma[:, lit] * (scaled.sigma_sum[lit] / fisher.sigma_sum[lit]),
                       rtol=1e-6)

    def diverges(sub, share):
        raise FloatingPointError("the loss became NaN")

    line = run_uncertainty(model, ds, "auto", rerun=diverges)
    assert model.uncertainty.scale == 1.0 and "not scaled: the bootstrap failed (the loss became NaN)" in line
    assert "expect the true spread at 0.13–1.5 × this σ" in line  # the factor an unscaled σ is off by


def test_a_scan_too_small_for_a_block_says_so_before_any_rerun_with_the_factor_to_expect():
    """A 3 × 3 scan at 1 Å spans 2 Å, less than the scored field's 2 Å margins on either side: σ stays the Fisher σ,
    the line says why and by how much the truth may differ, and no realisation is reconstructed."""
    clean, _, _ = numpy_scan(1, 64, 0.2, (3, 3), 1.0, 100.0, atoms_per_area=0.6)
    ds = clean._replace(patterns=np.random.default_rng(0).poisson(np.asarray(clean.patterns) * DOSE)
                        .astype(np.float32))
    model = Ptychography.from_dataset(ds, n_slices=1)
    for _ in model.LSQ_optimize(1, ds, batch_size=9, progress=False):
        pass

    def never(sub, share):
        raise AssertionError("no realisation should run")

    line = run_uncertainty(model, ds, "auto", rerun=never)
    assert not model.uncertainty.bootstrapped and model.uncertainty.scale == 1.0
    assert "not scaled: the bootstrap has no block to measure on (the scan's central 3 × 3 positions span 2 × 2 Å" \
        in line and "expect the true spread at 0.13–1.5 × this σ" in line, line


def test_the_seed_probe_lights_no_further_than_its_window():
    """The seed's 30 mrad probe with Cs 0.1 mm at Gaussian focus: 27 Å by the rays at its aperture's edge, but the
    model's probe lives on its 20 Å window (64 px of 0.3125 Å): the bootstrap's scored field lies half a window, not
    27 Å, inside the block's lit field, which left nothing of the 16 × 16 block at its 2 Å step (30 Å across)."""
    from phasestem.dataset import FourDSTEM
    from phasestem.physics.optics import angular_sampling_for, probe_radius

    seed = FourDSTEM(patterns=np.ones((4, 4, 64, 64), np.float32), energy=300e3, scan_step=(2.0, 2.0),
                     angular_sampling=angular_sampling_for(300e3, 0.3125, (64, 64)), semiangle=30.0,
                     aberrations={"C30": 1e6})
    model = Ptychography.from_dataset(seed, upsampling=1)
    assert probe_radius(300e3, 30.0, {"C30": 1e6})[0] == pytest.approx(27.0, rel=0.01)
    assert lit_radius(seed, model) == pytest.approx(10.0, rel=1e-4)
    defocused, _, _ = numpy_scan(1, 64, 0.2, (2, 2), 1.0, 100.0, atoms_per_area=0.6)  # 2.2 Å inside a 12.8 Å window
    assert lit_radius(defocused, Ptychography.from_dataset(defocused)) == pytest.approx(
        probe_radius(300e3, 20.0, {"C10": 100.0})[0])


def test_the_block_takes_fewer_wider_steps_that_move_each_pixel_as_far_as_the_run():
    """lsq with the whole scan's share T: an epoch moves a pixel by T / (1 + ρ) Gauss–Newton steps, ρ = batch × T /
    positions. The seed's 16 × 16 block (256 of 2500 positions, batches of 16, T 16): 8 patterns a step with T 27
    (32 steps, ρ 0.84) instead of 2 (128 steps); the same moves per epoch. Without T (or another solver) the batch
    scaled to the block, as before; a block as large as the scan the run's batch."""
    batch, share = block_schedule(16, 16, 256, 2500)
    assert (batch, share) == (8, 27)
    run_steps = 16 / (1 + 16 * 16 / 2500)
    assert share / (1 + batch * share / 256) == pytest.approx(run_steps, rel=0.03)
    assert block_schedule(16, None, 256, 2500) == (block_batch_size(16, 256 / 2500), None) == (2, None)
    assert block_schedule(32, 16, 256, 1024) == (12, 21)  # the 6-slice case of 32 × 32: ρ_run 0.5
    assert block_schedule(32, 16, 576, 576) == (32, 16)  # the block is the scan: the run's own steps
    assert block_schedule(None, 16, 256, 2500) == (None, 16)


def test_a_decaying_run_is_repeated_in_fewer_epochs_within_the_budget():
    """Counted data's decay (cosine to lr_final over the run): as many epochs as keep 2 realisations of the block
    within 8 % of the run's positions × epochs, at least 4; steps held (no decay) or a block that fits: the run's."""
    assert (BUDGET, MIN_EPOCHS) == (0.08, 4)
    assert bootstrap_epochs(20, True, 256, 2500, 2) == 7  # the seed: 50 × 50
    assert bootstrap_epochs(20, True, 256, 1024, 2) == 4  # 32 × 32
    assert bootstrap_epochs(20, True, 256, 128 * 128, 2) == 20  # 128 × 128: the run's own
    assert bootstrap_epochs(20, False, 256, 1024, 2) == 20
    assert bootstrap_epochs(3, True, 256, 1024, 2) == 3


def test_a_noise_realisation_keeps_whole_counts_and_the_data_units():
    """Counts data (mean total = counts per pattern): whole Poisson counts with the right mean and variance;
    intensities with a recorded dose (mean total 1, 10⁴ counts): the same draws in the data's units; Gaussian: the
    stated σ in data units."""
    predicted = np.full((4000, 4), 0.25)
    rng = np.random.default_rng(5)
    counts = noise_realisation(predicted, 400.0, 400.0, None, rng)
    assert counts.dtype == np.float32 and np.array_equal(counts, np.round(counts))
    assert counts.mean() == pytest.approx(100, rel=0.01) and counts.var() == pytest.approx(100, rel=0.05)
    intensities = noise_realisation(predicted, 1e4, 1.0, None, rng)
    assert intensities.mean() == pytest.approx(0.25, rel=0.01)
    assert intensities.var() == pytest.approx(0.25 / 1e4, rel=0.05)  # Poisson at 2500 counts, in units of 1e4
    gauss = noise_realisation(predicted, 1.0, 8.0, 0.5, rng)
    assert gauss.mean() == pytest.approx(2.0, abs=0.01) and gauss.std() == pytest.approx(0.5, rel=0.03)


def test_the_block_is_central_and_never_larger_than_the_scan():
    assert central_block((20, 30), 12) == (slice(4, 16), slice(9, 21))
    assert central_block((6, 40), 12) == (slice(0, 6), slice(14, 26))


def test_the_draws_mean_moves_towards_the_data_only_where_the_model_misses_structure():
    """Poisson counts of a pattern set against the very patterns they were drawn from: binned χ²/dof ≈ 1 and the
    draws' mean stays the model's (α < 0.15); against a model that lost all of the structure (flat patterns for
    structured ones): χ² ≫ 1 and the mean is close to the data (α > 0.9). Gaussian noise of a stated σ alike."""
    rng = np.random.default_rng(3)
    truth = np.kron(rng.gamma(2.0, 1.0, (6, 6, 8, 8)), np.ones((8, 8)))  # structure on the scale of a bin
    truth /= truth.sum((-2, -1), keepdims=True)
    counts = 2e4
    data = rng.poisson(truth * counts).astype(np.float64)
    chi2, alpha = residual_share(truth * counts, data)
    assert 0.9 < chi2 < 1.15 and alpha < 0.15, (chi2, alpha)
    flat = np.full_like(truth, truth.mean())
    chi2, alpha = residual_share(flat * counts, data)
    assert chi2 > 10 and alpha > 0.9, (chi2, alpha)
    mean, _, a = shrunk_towards_data(flat, data, counts, counts, None)
    assert a == alpha and np.abs(mean - data / counts).mean() < 0.1 * np.abs(flat - data / counts).mean()
    noisy = truth * counts + rng.normal(0.0, 3.0, truth.shape)
    assert residual_share(truth * counts, noisy, 9.0)[1] < 0.15
    assert residual_share(flat * counts, noisy, 9.0)[1] > 0.9


@pytest.mark.parametrize("exponent", [0.0, 0.3, 1.0])
def test_the_shape_exponent_is_the_power_of_the_fisher_sigma_the_spread_follows(exponent):
    """Per-pixel variances of three draws (χ² with 2 degrees of freedom) around σ ∝ σ_F^p over σ_F spanning 2 ×:
    the fitted p is within 0.1 of the truth; a slope beyond [0, 1] is clipped; σ_F spanning less than 15 % keeps
    the Fisher shape (p = 1), too short a lever to fit."""
    rng = np.random.default_rng(3)
    sigma_f = rng.uniform(0.1, 0.2, 4000)
    variance = (0.5 * sigma_f**exponent) ** 2 * rng.chisquare(2, sigma_f.size) / 2
    p, reference = shape_exponent(variance, sigma_f)
    assert abs(p - exponent) < 0.1 and reference == pytest.approx(np.median(sigma_f))
    assert shape_exponent(sigma_f**3, sigma_f)[0] == 1.0 and shape_exponent(sigma_f**-1, sigma_f)[0] == 0.0
    narrow = rng.uniform(0.1, 0.11, 4000)
    assert shape_exponent(narrow**0, narrow)[0] == 1.0


def test_the_shape_holds_up_to_the_least_lit_pixels_the_block_measured_and_the_fisher_shape_above():
    """p = 0.2, the block's σ_F up to 0.2 rad: κ σ_ref (σ_F / σ_ref)^p below it; above, σ grows with σ_F as the Fisher
    σ does (an unlit pixel's inf stays inf), so the scan's edges and its surround never read as well known as its
    centre."""
    result = BootstrapScale(0.5, (16, 16), 3, 20, 100, 1.0, ("probe",), exponent=0.2, reference=0.15, measured=0.2)
    sigma_f = np.array([0.05, 0.1, 0.15, 0.2, 0.4, np.inf])
    shaped = result.shape(sigma_f)
    at = 0.5 * 0.15 * (sigma_f[:4] / 0.15) ** 0.2
    assert np.allclose(shaped[:4], at)
    assert shaped[4] == pytest.approx(at[3] * 2) and shaped[5] == np.inf
    assert "up to σ_F 0.2 rad" in result.describe()
    assert np.allclose(BootstrapScale(0.5, (16, 16), 3, 20, 100, 1.0, ()).shape(sigma_f), 0.5 * sigma_f)
