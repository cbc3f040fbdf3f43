"""``constraints.obj_band`` (issue 69, item 1): an object on a grid finer than the detector's is held to that grid's
anti-aliased band. Data from the independent NumPy multislice that the model cannot explain exactly (a partially
coherent source, two slices reconstructed as one) at the seed detector: without the band the run fills the
frequencies the detector barely sees and its phase drifts from the truth; with it (the default) it does not."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy_cases import atom_phase, raster, simulate_patterns
from test_upsampled_grid import ENERGY, SEED_PIXEL, _dataset, _r_against_truth

from phasestem.physics.optics import band_limit_mrad, wavelength
from phasestem.recon import Ptychography
from phasestem.recon.constraints import Constraints, apply_constraints, band_limit_object
from phasestem.recon.object_band import obj_band_rule, resolve_obj_band

FINE = SEED_PIXEL / 2


def test_the_rule_is_on_only_where_the_object_grid_is_finer_than_the_detectors():
    on, why = obj_band_rule(2, (FINE, FINE), ENERGY)
    assert on and "model.upsampling 2" in why and "42 mrad" in why, why
    off, why = obj_band_rule(1, (SEED_PIXEL, SEED_PIXEL), ENERGY)
    assert not off and why.startswith("off: ") and "0.3125 Å" in why, why
    assert Constraints().obj_band.enabled == "auto" and not Constraints().obj_band.due(1)


def _fine_model() -> Ptychography:
    ds = _dataset(np.ones((3, 3, 64, 64), np.float32), 2.0, {"C10": 40.0})
    return Ptychography.from_dataset(ds, upsampling=2)


def _cosine(shape, period_px: float) -> torch.Tensor:
    x = torch.arange(shape[1], dtype=torch.float64)
    return torch.cos(2 * np.pi * x / period_px)[None, :].expand(shape).float()


def test_the_band_keeps_what_is_inside_it_removes_what_is_beyond_and_leaves_a_held_amplitude_alone():
    model = _fine_model()
    shape = model.object_shape
    band = band_limit_mrad(model.sampling, ENERGY)
    assert band == pytest.approx(42.0, abs=0.1)
    nx = shape[1]
    inside = nx / round(nx * 20.0e-3 / wavelength(ENERGY) * FINE)  # a period (px) at about 20 mrad, on the grid
    beyond = nx / round(nx * 55.0e-3 / wavelength(ENERGY) * FINE)  # about 55 mrad
    with torch.no_grad():
        model.obj_phase.copy_((0.3 * _cosine(shape, inside) + 0.2 * _cosine(shape, beyond))[None, None])
    amplitude = model.obj_amplitude.detach().clone()
    resolved = resolve_obj_band(model, Constraints())
    assert resolved.obj_band.enabled is True and model.history.notes["obj_band"].startswith("on: ")
    assert "obj_band" in apply_constraints(model, resolved, 1)
    got = model.obj_phase.detach()[0, 0]
    assert torch.allclose(got, 0.3 * _cosine(shape, inside), atol=1e-5)
    assert torch.equal(model.obj_amplitude.detach(), amplitude)  # constant: bit-exact
    off = resolve_obj_band(model, Constraints(obj_band={"enabled": False}))
    assert off.obj_band.enabled is False and "obj_band" not in apply_constraints(model, off, 1)
    band_limit_object(model)  # its own band: unchanged
    assert torch.allclose(model.obj_phase.detach()[0, 0], got, atol=1e-6)


def _mismatched_scan():
    """An 8 × 8 scan at 1 Å on the seed detector from the independent NumPy multislice: two slices 8 Å apart of
    Gaussian atoms (σ 0.25 Å) on 0.156 Å pixels, a 0.6 Å source (3 × 3 points), 60 Å defocus; 128-px windows
    cropped to the central 64. (dataset, projected phase (dataset frame, 0.156 Å))."""
    scan, step, defocus, pad = 8, 1.0, 60.0, 68
    rng = np.random.default_rng(3)
    n = int((scan - 1) * step / FINE) + 2 * pad
    slices = np.stack([atom_phase((n, n), FINE, rng, int(0.025 * (n * FINE) ** 2), 0.4, width=0.25)
                       for _ in range(2)])
    patterns = simulate_patterns(slices, FINE, raster((scan, scan), step, (pad * FINE, pad * FINE)), 128, ENERGY,
                                 30.0, defocus, dz=8.0, source_size=0.6, n_source=3)
    fov = int((scan - 1) * step / FINE) + 1
    ds = _dataset(patterns[:, 32:96, 32:96].reshape(scan, scan, 64, 64), step, {"C10": defocus})
    return ds, slices.sum(0)[pad:pad + fov, pad:pad + fov]


def _beyond(model: Ptychography, mrad: float) -> float:
    """Share of the phase's spectral power (mean removed) beyond ``mrad``."""
    ph = model.obj_phase.detach()[0, 0].double().numpy()
    power = np.abs(np.fft.fft2(ph - ph.mean())) ** 2
    ky, kx = (np.fft.fftfreq(n, FINE) for n in ph.shape)
    q = np.hypot(ky[:, None], kx[None, :]) * wavelength(ENERGY) * 1e3
    return float(power[q > mrad].sum() / power.sum())


def test_without_the_band_a_run_fills_the_frequencies_the_detector_barely_sees():
    ds, truth = _mismatched_scan()
    r, beyond = {}, {}
    for enabled in ("auto", False):
        torch.manual_seed(0)
        model = Ptychography.from_dataset(ds, upsampling=2)
        for _ in model.LSQ_optimize(20, ds, batch_size=16, seed=0, progress=False, lr_decay="none",
                                    constraints=Constraints(obj_band={"enabled": enabled})):
            pass
        r[enabled], beyond[enabled] = _r_against_truth(model, truth, FINE), _beyond(model, 45.0)
    assert beyond["auto"] < 1e-8 and beyond[False] > 0.03, beyond  # measured: 1e-14 and 0.09
    assert r["auto"] > r[False] + 0.01 and r["auto"] > 0.93, r  # measured: 0.946 and 0.923
