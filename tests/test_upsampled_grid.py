"""The whole band (issue 69, item 1): where the probe's semi-angle exceeds the anti-aliased band of the detector's
pixel λ/(N·Δk), the model reconstructs on pixels u times finer, its far field on u × the detector's grid at the
same Δk, the detector measuring the central N × N. The rule, the shapes, the forward pass against NumPy FFTs, and a
reconstruction of data from the independent NumPy multislice (simulated finer and cropped to the detector) that the
finer grid reconstructs better."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from numpy_cases import pearson
from numpy_multislice import atom_phase, raster, simulate_patterns

from phasestem.base.errors import ConfigError, ShapeError
from phasestem.dataset import FourDSTEM
from phasestem.physics.optics import angular_sampling_for, wavelength
from phasestem.physics.resample import resample_image
from phasestem.physics.upsampling import choose_upsampling
from phasestem.recon import Ptychography

ENERGY = 300e3
#: the user's seed-000 detector: 64 px of 0.984 mrad at 300 keV, a 0.3125 Å pixel (21 mrad anti-aliased band)
SEED_PIXEL = 0.3125
SEED_MRAD = angular_sampling_for(ENERGY, SEED_PIXEL, (64, 64))


def _dataset(patterns: np.ndarray, step: float, aberrations: dict, semiangle: float = 30.0) -> FourDSTEM:
    """Patterns (Sy, Sx, 64, 64) on the seed detector (0.984 mrad pixels)."""
    return FourDSTEM(patterns=patterns, energy=ENERGY, scan_step=(step, step), angular_sampling=SEED_MRAD,
                     semiangle=semiangle, aberrations=aberrations)


def _model(ds: FourDSTEM, **options) -> Ptychography:
    """The model of ``ds``, any warning an error (a truncated probe warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return Ptychography.from_dataset(ds, **options)


def test_the_rule_chooses_the_smallest_factor_whose_band_holds_the_probe():
    assert np.allclose(_dataset(np.zeros((2, 2, 64, 64), np.float32), 2.0, {}).sampling, SEED_PIXEL)
    u, why = choose_upsampling("auto", 30.0, (SEED_PIXEL, SEED_PIXEL), ENERGY)
    assert u == 2 and "30 mrad exceeds the 21 mrad" in why and "0.1562 Å" in why, why
    assert choose_upsampling("auto", 20.0, (SEED_PIXEL, SEED_PIXEL), ENERGY)[0] == 1
    assert choose_upsampling("auto", 50.0, (SEED_PIXEL, SEED_PIXEL), ENERGY)[0] == 3
    assert choose_upsampling("auto", None, (SEED_PIXEL, SEED_PIXEL), ENERGY)[0] == 1
    assert choose_upsampling(1, 30.0, (SEED_PIXEL, SEED_PIXEL), ENERGY)[0] == 1
    with pytest.raises(ConfigError, match="model.upsampling"):
        choose_upsampling(5, 30.0, (SEED_PIXEL, SEED_PIXEL), ENERGY)


def test_at_the_seed_geometry_auto_doubles_the_grid_without_a_truncation_warning(caplog):
    ds = _dataset(np.ones((3, 3, 64, 64), np.float32), 2.0, {"C10": 0.0, "C30": 1e6})
    with caplog.at_level("INFO", logger="phasestem.recon"):
        model = _model(ds, upsampling="auto")
    assert model.upsampling == 2 and np.allclose(model.sampling, SEED_PIXEL / 2) and model.window == (128, 128)
    assert "model.upsampling auto: 2" in caplog.text
    assert model.optics_record["upsampling"] == 2 and np.allclose(model.optics_record["sampling"], SEED_PIXEL / 2)
    assert tuple(model.simulate().shape) == (9, 64, 64) and model.detector_shape == (64, 64)
    kept = _model(ds, upsampling=1)  # the 30 mrad aperture fits the grid's 31.5 mrad: no truncation, no warning
    assert kept.upsampling == 1 and kept.window == (64, 64)
    fine = torch.fft.fftshift(torch.fft.fft2(model.experiment.probe[0].to(torch.complex128), norm="ortho"))
    assert float(fine[32:96, 32:96].abs().square().sum()) > 1 - 1e-6  # all of the probe lies on the detector's grid
    narrow = _model(_dataset(np.ones((3, 3, 64, 64), np.float32), 2.0, {"C10": 50.0}, semiangle=20.0),
                    upsampling="auto")
    assert narrow.upsampling == 1 and np.allclose(narrow.sampling, SEED_PIXEL)


def test_the_truncation_warning_comes_only_where_the_model_cuts_the_probe(recwarn):
    """On the detector's grid (u = 1) the model's band is the grid's Nyquist frequency, 31.5 mrad at the seed's
    pixel: a 30 mrad probe is whole (no warning), a 33 mrad one loses its aperture's edge (one warning saying so).
    With ``antialias`` the propagator keeps 2/3 of Nyquist (21 mrad): there the 30 mrad probe is cut (one warning)."""
    ones = np.ones((3, 3, 64, 64), np.float32)
    _model(_dataset(ones, 2.0, {"C30": 1e6}), upsampling=1)
    with pytest.warns(UserWarning, match=r"33 mrad exceeds the band limit \(its Nyquist frequency\) 31\.5 mrad"):
        Ptychography.from_dataset(_dataset(ones, 2.0, {"C30": 1e6}, semiangle=33.0), upsampling=1)
    with pytest.warns(UserWarning, match=r"30 mrad exceeds the anti-aliased band limit 21\.0 mrad") as caught:
        Ptychography.from_dataset(_dataset(ones, 2.0, {"C30": 1e6}), upsampling=1, antialias=True, n_slices=2)
    assert len([w for w in caught if "silently truncated" in str(w.message)]) == 1
    _model(_dataset(ones, 2.0, {"C30": 1e6}), upsampling=2, antialias=True, n_slices=2)  # 42 mrad hold it


def test_a_probe_given_on_the_detector_grid_is_carried_onto_the_finer_one():
    ds = _dataset(np.ones((2, 2, 64, 64), np.float32), 2.0, {"C10": 40.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector_probe = Ptychography.from_dataset(ds, upsampling=1).experiment.probe
    fine = _model(ds, upsampling=2, probe=detector_probe.numpy()).experiment.probe
    assert tuple(fine.shape) == (1, 128, 128)
    spectrum = torch.fft.fftshift(torch.fft.fft2(fine[0].to(torch.complex128), norm="ortho"))
    given = torch.fft.fftshift(torch.fft.fft2(detector_probe[0].to(torch.complex128), norm="ortho"))
    assert torch.allclose(spectrum[32:96, 32:96], given, atol=1e-5)  # the same spectrum, zero beyond it
    assert float(spectrum.abs().square().sum() - spectrum[32:96, 32:96].abs().square().sum()) < 1e-10
    with pytest.raises(ShapeError, match="probe window"):
        _model(ds, upsampling=2, probe=np.ones((1, 100, 100), np.complex64))


def _numpy_patterns(obj: np.ndarray, probe: np.ndarray, corners: np.ndarray, prop: np.ndarray | None,
                    detector: int) -> np.ndarray:
    """|FFT|² (unitary) of probe × object windows through the slices of ``obj`` (S, Ny, Nx) (``prop`` between
    them), zero frequency at the centre, the central ``detector`` px kept: (N, detector, detector)."""
    n = probe.shape[-1]
    out = []
    for y0, x0 in corners:
        wave = probe.astype(np.complex128)
        for s, plane in enumerate(obj):
            wave = wave * plane[y0:y0 + n, x0:x0 + n]
            if s < len(obj) - 1:
                wave = np.fft.ifft2(np.fft.fft2(wave, norm="ortho") * prop, norm="ortho")
        far = np.fft.fftshift(np.abs(np.fft.fft2(wave, norm="ortho")) ** 2)
        lo = n // 2 - detector // 2
        out.append(far[lo:lo + detector, lo:lo + detector])
    return np.stack(out)


@pytest.mark.parametrize("n_slices", [1, 2])
def test_the_upsampled_forward_pass_equals_numpy_ffts_on_the_finer_grid_cropped_to_the_detector(n_slices):
    ds = _dataset(np.ones((3, 3, 64, 64), np.float32), 1.25, {"C10": 30.0})  # 1.25 Å: 8 fine pixels
    model = _model(ds, upsampling=2, n_slices=n_slices, slice_thickness=5.0)
    rng = np.random.default_rng(1)
    phase = rng.uniform(-0.4, 0.4, model.obj_phase.shape[1:]).astype(np.float32)
    amplitude = rng.uniform(0.8, 1.0, phase.shape).astype(np.float32)
    with torch.no_grad():
        model.obj_phase.copy_(torch.from_numpy(phase)[None])
        model.obj_amplitude.copy_(torch.from_numpy(amplitude)[None])
    got = model.simulate().numpy().astype(np.float64)
    centres = model.positions.detach().numpy() / np.asarray(model.sampling)
    assert np.allclose(centres, np.round(centres), atol=1e-4)
    corners = np.round(centres).astype(int) - 64  # window 128, centred at pixel 64
    k = np.fft.fftfreq(128, model.sampling[0])
    prop = np.exp(-1j * np.pi * wavelength(ENERGY) * (k[:, None] ** 2 + k[None, :] ** 2) * 5.0)
    want = _numpy_patterns(amplitude * np.exp(1j * phase), model.get_probe().detach().numpy()[0], corners, prop,
                           64)
    assert got.shape == want.shape == (9, 64, 64)
    assert want.sum() < 0.999 * 9  # scattering beyond the detector is dropped, not wrapped back in
    assert np.abs(got - want).max() < 2e-6 * want.max()


def _sharp_atom_scan(seed: int, scan: int = 8, step: float = 1.0, defocus: float = 60.0):
    """A scan on the seed detector from the independent NumPy multislice: sharp Gaussian atoms (σ 0.15 Å, 0.5 rad)
    on pixels of 0.15625 Å, 128-px windows (the same 0.984 mrad) cropped to the central 64 px. (dataset, truth
    (rad, dataset frame, 0.15625 Å))."""
    fine, pad = SEED_PIXEL / 2, 68
    rng = np.random.default_rng(seed)
    n = int((scan - 1) * step / fine) + 2 * pad
    phase = atom_phase((n, n), fine, rng, int(0.05 * (n * fine) ** 2), 0.5, width=0.15)
    patterns = simulate_patterns(phase[None], fine, raster((scan, scan), step, (pad * fine, pad * fine)), 128,
                                 ENERGY, 30.0, defocus)
    fov = int((scan - 1) * step / fine) + 1
    ds = _dataset(patterns[:, 32:96, 32:96].reshape(scan, scan, 64, 64), step, {"C10": defocus})
    return ds, phase[pad:pad + fov, pad:pad + fov]


def _r_against_truth(model: Ptychography, truth: np.ndarray, truth_sampling: float) -> float:
    """Pearson r of the model's phase with the truth on the model's pixel, over the scanned field."""
    t = resample_image(torch.as_tensor(truth, dtype=torch.float32), (truth_sampling,) * 2, model.sampling).numpy()
    rec = model.phase_in_dataset_frame(t.shape)
    h, w = min(t.shape[0], rec.shape[0]), min(t.shape[1], rec.shape[1])
    return pearson(rec[:h, :w].astype(np.float64), t[:h, :w].astype(np.float64))


def test_a_reconstruction_on_the_finer_grid_is_closer_to_the_truth():
    ds, truth = _sharp_atom_scan(3)
    r = {}
    for u in (1, 2):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # u = 1 holds the 30 mrad probe whole: no warning either
            model = Ptychography.from_dataset(ds, upsampling=u)
        for _ in model.LSQ_optimize(4, ds, batch_size=16, seed=0, progress=False, lr_decay="cosine"):
            pass
        r[u] = _r_against_truth(model, truth, SEED_PIXEL / 2)
    assert r[2] > r[1] + 0.1 and r[2] > 0.85, r  # measured: 0.92 against 0.58 (4 epochs)


def test_a_default_parameter_file_run_chooses_it_records_it_and_one_flag_keeps_the_detector_grid():
    from phasestem.recon.params import build_model, parse_params
    from phasestem.recon.report import auto_settings

    ds = _dataset(np.ones((3, 3, 64, 64), np.float32), 2.0, {"C10": 0.0, "C30": 1e6})
    params = parse_params({"data": {"file": "in-memory.h5"}})
    assert params.model.upsampling == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncated probe on a default run at the seed geometry
        model = build_model(params, ds)
    assert model.upsampling == 2
    row = next(s for s in auto_settings(model, params) if s.field == "model.upsampling")
    assert row.value == 2 and row.source == "default" and "exceeds the 21 mrad" in row.note, row
    kept = parse_params({"data": {"file": "in-memory.h5"}, "model": {"upsampling": 1}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the README's first hour (model.upsampling=1): the probe is whole, no warning
        kept_model = build_model(kept, ds)
    assert kept_model.upsampling == 1
    assert not any(s.field == "model.upsampling" for s in auto_settings(kept_model, kept))
    with pytest.raises(ConfigError):
        parse_params({"data": {"file": "in-memory.h5"}, "model": {"upsampling": 0}})


def test_a_restorer_trained_on_the_detector_pixel_refuses_an_upsampled_run_saying_why():
    from phasestem.learn.apply.restorer import check_geometry

    geometry = {"energy": ENERGY, "semiangle": 30.0, "aberrations": {"C30": 1e6},
                "angular_sampling": [SEED_MRAD[0]] * 2, "scan_step": [2.0, 2.0], "sampling": [SEED_PIXEL / 2] * 2,
                "upsampling": 2}
    card = {"data": {"optics": {**geometry, "sampling": [SEED_PIXEL] * 2}}}
    with pytest.raises(ShapeError) as refused:
        check_geometry(card, geometry, "restore-seed", "run/results.h5")
    words = str(refused.value)
    assert "model.upsampling: 1" in words and "2 × finer" in words and "(trained on 0.3125 Å)" in words, words
    check_geometry({"data": {"optics": geometry}}, geometry, "restore-fine", "run/results.h5")  # its own pixel


def test_a_finished_run_is_rebuilt_on_the_pixel_it_ran_at():
    from phasestem.recon.params import parse_params
    from phasestem.recon.results import keep_recorded_upsampling

    for geometry, named, want in (({"upsampling": 2}, None, 2), ({}, None, 1), (None, None, 1),
                                  ({"upsampling": 2}, 1, 1)):
        params = parse_params({"data": {"file": "in-memory.h5"},
                               "model": {} if named is None else {"upsampling": named}})
        keep_recorded_upsampling(params, {"geometry": geometry})  # no record: a run of the detector's pixel
        assert params.model.upsampling == want, (geometry, named)
