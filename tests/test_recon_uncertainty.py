"""Error bars on the phase (issue 53, phasestem.recon.uncertainty): the σ maps against the spread of independent
noise realisations of the independent NumPy multislice, significance of features below and above the noise, and
what a run writes."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
from numpy_cases import numpy_scan, tiny_params

from phasestem.io import hdf5
from phasestem.physics.optics import wavelength
from phasestem.recon import Constraints, Ptychography
from phasestem.recon.losses import COUNTED_WEIGHTS
from phasestem.recon.settings.losses import LossConfig
from phasestem.recon.uncertainty import (
    change_in_sigma,
    phase_uncertainty,
    run_uncertainty,
    significance,
    transferred_band,
    unsupported_fraction,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WINDOW, SAMPLING, SCAN, STEP, DEFOCUS = 64, 0.2, (16, 16), 1.0, 100.0


def _reconstruct(ds, epochs: int = 20) -> Ptychography:
    """The unregularised estimate (the dose's blur off) whose spread the Fisher σ bounds: the blurred default's σ
    is the bootstrap's (tests/test_sigma_bootstrap.py)."""
    model = Ptychography.from_dataset(ds, n_slices=1)
    model.set_learning_rates(positions=0.0)
    for _ in model.LSQ_optimize(epochs, ds, batch_size=32, losses=LossConfig(**COUNTED_WEIGHTS), progress=False,
                                constraints=Constraints(obj_blur={"enabled": False})):
        pass
    return model


def _in_dataset_frame(model, image: np.ndarray) -> np.ndarray:
    return model.experiment.in_dataset_frame(torch.as_tensor(image), None).numpy()


def test_the_band_of_a_round_aperture_is_the_disk_of_twice_its_semiangle():
    ds, _, _ = numpy_scan(0, WINDOW, SAMPLING, (4, 4), STEP, DEFOCUS, atoms_per_area=0.3)
    model = Ptychography.from_dataset(ds, aperture_edge="hard")
    radius = 2 * 20e-3 / wavelength(300e3)  # 1/Å
    expected = math.pi * radius**2 * SAMPLING**2  # the disk's share of the (1/SAMPLING)² frequency square
    assert transferred_band(model.get_probe()) == pytest.approx(expected, rel=0.04)


def test_sigma_predicts_the_spread_over_independent_noise_realisations():
    """8 Poisson realisations of one specimen at two doses, each reconstructed from a flat start: the per-pixel
    spread of the phase (its constant removed) is the predicted σ within 25 % in the median, and |φ_a − φ_b| /
    (√2 σ) ≤ 2 on ≥ 90 % of the constrained pixels for every pair."""
    clean, _, _ = numpy_scan(3, WINDOW, SAMPLING, SCAN, STEP, DEFOCUS, atoms_per_area=0.6)
    patterns = clean.patterns.numpy() if hasattr(clean.patterns, "numpy") else np.asarray(clean.patterns)
    fov = (slice(0, 76), slice(0, 76))  # the scanned field, 15 Å
    for dose in (1e3, 1e4):
        phases = []
        for k in range(8):
            counts = np.random.default_rng(100 + k).poisson(patterns * dose).astype(np.float32)
            model = _reconstruct(clean._replace(patterns=counts))
            phases.append(model.phase_in_dataset_frame()[fov])
        u = phase_uncertainty(model, model.counts_per_pattern)
        sigma = _in_dataset_frame(model, u.sigma_sum)[fov]
        lit = _in_dataset_frame(model, u.constrained.astype(np.float32))[fov] > 0
        p = np.array(phases)
        p -= p.mean((1, 2), keepdims=True)
        ratio = np.median((p.std(0, ddof=1) / sigma)[lit])
        assert 0.75 <= ratio <= 1.25, (dose, ratio)
        for a in range(8):
            for b in range(a + 1, 8):
                z = np.abs(p[a] - p[b])[lit] / (math.sqrt(2) * sigma[lit])
                assert (z <= 2).mean() >= 0.9, (dose, a, b, (z <= 2).mean())


def _scan_with_feature(amplitude: float, dose: float, seed: int = 7):
    """A 1-slice specimen of weak atoms with a Gaussian bump of ``amplitude`` rad (σ 0.4 Å) at the scanned field's
    pixel farthest from every atom, simulated by the independent NumPy multislice and counted at ``dose``; returns
    (dataset, the bump's pixel in the dataset frame)."""
    from numpy_multislice import atom_phase, raster, simulate_patterns
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    pad = WINDOW // 2 + 4
    shape = tuple(int((s - 1) * STEP / SAMPLING) + 2 * pad for s in SCAN)
    phase = atom_phase(shape, SAMPLING, rng, int(0.3 * shape[0] * shape[1] * SAMPLING**2), 0.5)
    field = gaussian_filter(phase, 6.0)[pad + 15:pad + 60, pad + 15:pad + 60]  # inside the field, away from its edge
    iy, ix = np.unravel_index(np.argmin(field), field.shape)
    cy, cx = iy + pad + 15, ix + pad + 15
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    phase = phase + amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) * SAMPLING**2 / (2 * 0.4**2))
    pats = simulate_patterns(phase[None], SAMPLING, raster(SCAN, STEP, (pad * SAMPLING,) * 2), WINDOW, 300e3, 20.0,
                             DEFOCUS, dose=dose, rng=rng)
    ref, _, _ = numpy_scan(0, WINDOW, SAMPLING, (1, 1), STEP, DEFOCUS, atoms_per_area=0.3)
    return ref._replace(patterns=pats.reshape(*SCAN, WINDOW, WINDOW)), (cy - pad, cx - pad)


@pytest.mark.parametrize("in_sigma, significant", [(0.5, False), (10.0, True)])
def test_a_feature_below_the_noise_is_not_significant_and_one_above_it_is(in_sigma, significant):
    """The predicted σ at 1e4 e⁻ sets the feature: 0.5 σ is reported as not significant (< 3 σ above its
    surroundings), 10 σ as significant; the same reconstruction without the feature is not significant there."""
    dose = 1e4
    ds, _ = _scan_with_feature(0.0, dose)
    base = _reconstruct(ds)
    u = phase_uncertainty(base, base.counts_per_pattern)
    ds, (cy, cx) = _scan_with_feature(0.0, dose)
    sigma_here = _in_dataset_frame(base, u.sigma_sum)[cy, cx]
    for amplitude, expect in ((0.0, False), (in_sigma * sigma_here, significant)):
        ds, (cy, cx) = _scan_with_feature(amplitude, dose)
        model = _reconstruct(ds)
        u = phase_uncertainty(model, model.counts_per_pattern)
        z = significance(model.phase_in_dataset_frame(), _in_dataset_frame(model, u.sigma_sum), 2.0 / SAMPLING)
        peak = float(np.nanmax(z[cy - 1:cy + 2, cx - 1:cx + 2]))
        assert (peak > 3.0) is expect, (amplitude, peak)


def test_a_change_is_judged_in_units_of_sigma():
    sigma = np.full((20, 20), 0.1)
    before = np.random.default_rng(0).normal(0, 0.1, (20, 20))
    after = before + 0.7  # an offset only: the data do not see it
    after[5, 5] += 0.5  # one pixel moved by 5 σ
    change = change_in_sigma(before, after, sigma)
    assert abs(change[5, 5] - 5.0) < 0.01 and np.abs(np.delete(change.ravel(), 5 * 20 + 5)).max() < 0.01
    assert unsupported_fraction(change) == pytest.approx(1 / 400)
    sigma[0] = np.inf  # unlit: no judgement
    assert np.isnan(change_in_sigma(before, after, sigma)[0]).all()


@pytest.fixture(scope="module")
def counted_scan():
    ds, _, _ = numpy_scan(5, WINDOW, SAMPLING, (12, 12), STEP, DEFOCUS, atoms_per_area=0.3, dose=1e4)
    return ds


def _run(tmp_path, data_file, **run):
    from phasestem.recon.run import run_reconstruction

    return run_reconstruction(tiny_params(data_file, STEP, tmp_path / "r", n_epochs=2, **run))


def test_a_run_on_counts_writes_sigma_maps_its_figure_and_says_what_it_leaves_out(counted_scan, tmp_path):
    from phasestem.recon.results import load_results

    model = _run(tmp_path, hdf5.write(tmp_path / "counted.h5", counted_scan))
    out = tmp_path / "r"
    log = (out / "reconstruct.log").read_text()
    assert "phase σ per pixel (shape: Fisher information of the data, Poisson counts" in log
    assert "scaled by κ = " in log and "parametric-bootstrap realisations of the scan's central" in log
    assert "leaves out model error" in log and "counts because" in log
    r = load_results(out / "results.h5")
    u = r["uncertainty"]
    assert u["phase_sigma"].shape == r["obj_phase"].shape[1:] and u["phase_sum_sigma"].shape == r["phase_sum"].shape
    assert np.array_equal(u["phase_sum_sigma"], model.uncertainty.sigma_sum.astype(np.float32))
    assert "Poisson" in r["uncertainty_attrs"]["noise"] and 0 < r["uncertainty_attrs"]["band_fraction"] < 1
    lit = u["constrained"].astype(bool)
    assert lit.any() and not lit.all() and np.isfinite(u["phase_sum_sigma"][lit]).all()
    assert (u["phase_sum_sigma"][lit] < u["phase_sum_sigma"][~lit].min()).all()  # unlit pixels: larger σ or inf
    assert (out / "uncertainty.png").stat().st_size > 10_000
    names = []
    with h5py.File(out / "results.emd", "r") as f:
        f.visit(names.append)
    assert any(n.endswith("phase_sum_sigma") for n in names)


def test_data_that_are_not_counts_need_a_stated_noise(counted_scan, tmp_path):
    ds = counted_scan._replace(patterns=np.asarray(counted_scan.patterns, dtype=np.float32) / 1e4 + 1e-6)
    path = hdf5.write(tmp_path / "floats.h5", ds)
    model = _run(tmp_path, path)
    assert model.uncertainty is None
    assert "phase σ not computed: the patterns are not counts" in (tmp_path / "r" / "reconstruct.log").read_text()
    line = run_uncertainty(model, ds, "auto", noise_sigma=1e-6)
    assert line.startswith("phase σ per pixel (shape: Fisher information of the data, Gaussian, σ 1e-06 counts")
    assert run_uncertainty(model, ds, "off") == "phase σ not computed (run.uncertainty: off)"
    assert model.uncertainty is None
