"""Physics core: probes, propagation, multislice, forward model, gradients."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from phasestem.physics import fourier, multislice, operator, optics


def test_wavelength_and_interaction_constant_known_values():
    # Kirkland, Advanced Computing in EM, table 2.2: 300 kV → 0.019687 Å, σ = 6.5259e-4 rad/(V·Å)
    assert optics.wavelength(300e3) == pytest.approx(0.0196875, rel=1e-4)
    assert optics.wavelength(200e3) == pytest.approx(0.0250793, rel=1e-4)
    assert optics.interaction_constant(300e3) == pytest.approx(6.5259e-4, rel=1e-3)
    assert optics.interaction_constant(200e3) == pytest.approx(7.2883e-4, rel=1e-3)


def test_band_limit_of_seed_grid():
    s = (100 / 256, 100 / 256)
    assert optics.band_limit_mrad(s, 300e3) == pytest.approx(16.8, abs=0.1)
    assert optics.band_limit_mrad(s, 200e3) == pytest.approx(21.4, abs=0.1)


def test_probe_beyond_band_limit_is_refused_or_warned():
    s = (100 / 256, 100 / 256)
    with pytest.raises(optics.BandLimitError, match="exceeds the anti-aliased band limit"):
        optics.make_probe((256, 256), s, 300e3, 30.0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        optics.make_probe((256, 256), s, 300e3, 30.0, on_band_limit="warn")
    assert any("band limit" in str(x.message) for x in w)
    # the default training grid (512² over 100 Å) holds a 30 mrad probe
    optics.make_probe((512, 512), (100 / 512, 100 / 512), 300e3, 30.0)


def test_probe_is_normalised_and_centred():
    p = optics.make_probe((64, 64), (0.25, 0.25), 200e3, 25.0)
    assert float((p.abs() ** 2).sum()) == pytest.approx(1.0, abs=1e-5)
    i = p.abs() ** 2
    assert tuple(divmod(int(i.argmax()), 64)) == (32, 32)


def test_defocused_probe_equals_propagated_focused_probe():
    shape, s, E = (128, 128), (0.2, 0.2), 300e3
    for df in (50.0, -120.0):
        focused = optics.make_probe(shape, s, E, 20.0, {"C30": 2e4})
        defocused = optics.make_probe(shape, s, E, 20.0, {"C30": 2e4, "C10": df})
        propagated = fourier.ifft2(fourier.fft2(focused) * multislice.propagator(shape, s, E, df))
        err = (propagated - defocused).abs().max() / defocused.abs().max()
        assert float(err) < 1e-4


def test_abtem_defocus_alias_is_minus_c10():
    ab = optics.Aberrations.from_dict({"defocus": 100.0, "Cs": 1e6})
    assert ab.get("C10") == -100.0 and ab.get("C30") == 1e6
    with pytest.raises(ValueError, match="unknown aberration 'C99'"):
        optics.Aberrations.from_dict({"C99": 1.0})


def test_aberration_phase_matches_polar_formula():
    shape, s, E = (32, 32), (0.3, 0.3), 200e3
    ab = {"C10": 30.0, "C12": 20.0, "phi12": 0.4, "C21": 500.0, "phi21": 1.1, "C30": 1e5}
    chi = optics.aberration_phase(shape, s, E, ab, dtype=torch.float64).numpy()
    lam = optics.wavelength(E)
    ky = np.fft.fftfreq(32, 0.3)[:, None]
    kx = np.fft.fftfreq(32, 0.3)[None, :]
    a = lam * np.hypot(ky, kx)
    ph = np.arctan2(ky, kx)
    ref = 2 * np.pi / lam * (30 * a**2 / 2 + 20 * a**2 / 2 * np.cos(2 * (ph - 0.4))
                             + 500 * a**3 / 3 * np.cos(ph - 1.1) + 1e5 * a**4 / 4)
    np.testing.assert_allclose(chi, ref, rtol=1e-10, atol=1e-10)


def test_propagation_conserves_intensity_and_vacuum_multislice_is_free_propagation():
    shape, s, E = (64, 64), (0.25, 0.25), 300e3
    probe = optics.make_probe(shape, s, E, 20.0)
    tilt = torch.tensor([3.0, -2.0])
    prop = multislice.propagator(shape, s, E, 7.0, tilt)
    out = fourier.ifft2(fourier.fft2(probe) * prop)
    assert float((out.abs() ** 2).sum()) == pytest.approx(1.0, abs=1e-5)
    n = 5
    vacuum = torch.ones((1, 1, n, *shape), dtype=torch.complex64)
    exit_ = multislice.multislice(probe[None, None], vacuum, prop, propagate_last=True)[0, 0, 0]
    once = fourier.ifft2(fourier.fft2(probe) * multislice.propagator(shape, s, E, n * 7.0, tilt))
    assert float((exit_ - once).abs().max() / once.abs().max()) < 1e-5


def test_a_tilt_moves_the_wave_by_depth_times_tan_theta_as_abtem_does():
    """Through a specimen tilted by θ = (θy, θx) the wave moves by +Δz·tanθ per slice (its intensity centroid,
    here after 200 Å), and the propagator's tilt factor is abTEM's, exp(−2πiΔz k·tanθ), with abTEM's first
    axis as phasestem's y (abTEM's tilt (θ_first, θ_second) = phasestem's (θy, θx))."""
    shape, s, E, dz = (128, 128), (0.25, 0.25), 300e3, 200.0
    tilt = torch.tensor([3.0, -2.0], dtype=torch.float64)
    probe = optics.make_probe(shape, s, E, 20.0).to(torch.complex128)
    out = fourier.ifft2(fourier.fft2(probe) * multislice.propagator(shape, s, E, dz, tilt))

    def centroid(wave):
        w = (wave.abs() ** 2).numpy()
        yy, xx = np.meshgrid(np.arange(shape[0]) * s[0], np.arange(shape[1]) * s[1], indexing="ij")
        return np.array([(w * yy).sum(), (w * xx).sum()]) / w.sum()

    moved = centroid(out) - centroid(probe)
    np.testing.assert_allclose(moved, dz * np.tan(tilt.numpy() * 1e-3), atol=0.005)  # +(0.6, −0.4) Å
    abtem_multislice = pytest.importorskip("abtem.multislice")
    flat = np.ones(shape, dtype=np.complex128)
    theirs = abtem_multislice._apply_tilt_to_fresnel_propagator_array(flat, s, dz, tuple(tilt.tolist()))
    untilted = multislice.propagator(shape, s, E, dz, dtype=tilt.dtype)
    ours = (multislice.propagator(shape, s, E, dz, tilt) / untilted).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


def test_a_global_tilt_gives_the_same_patterns_as_untilted_slices_sheared_by_depth():
    """A global specimen tilt is not in the patterns alone: slice s of a specimen tilted by θ gives the same far-field
    intensities as the untilted specimen whose slice s is moved by −s·Δz·tanθ (the wave's walk, taken into the
    object). Here the walk is a whole number of pixels per slice, so the sheared object is exact (a periodic roll);
    sheared the other way the patterns differ. This is why a refined global tilt is a choice between equally good
    fits, not a measurement (benchmarks/independent/README.md, "Mistilt is a choice the data leave open")."""
    shape, s, E, dz, n = (64, 64), (0.25, 0.25), 300e3, 50.0, 4
    walk_px = (1, -2)  # per slice
    tilt = torch.tensor([math.atan(w * p / dz) * 1e3 for w, p in zip(walk_px, s, strict=True)],
                        dtype=torch.float64)  # mrad: tan θ = walk · pixel / Δz
    rng = np.random.default_rng(3)
    phase = torch.as_tensor(rng.uniform(0.0, 0.6, (n, *shape)), dtype=torch.float64)
    trans = torch.polar(torch.ones_like(phase), phase)
    probe = optics.make_probe(shape, s, E, 20.0, aberrations={"C10": -60.0}).to(torch.complex128)

    def patterns(transmission, tilt_mrad):
        prop = multislice.propagator(shape, s, E, dz, tilt_mrad, dtype=torch.float64)
        return fourier.fft2(multislice.multislice(probe[None, None], transmission[None, None], prop)).abs() ** 2

    tilted = patterns(trans, tilt)
    sheared = torch.stack([torch.roll(trans[k], (-k * walk_px[0], -k * walk_px[1]), (0, 1)) for k in range(n)])
    wrong = torch.stack([torch.roll(trans[k], (k * walk_px[0], k * walk_px[1]), (0, 1)) for k in range(n)])
    scale = tilted.abs().max()
    assert float((patterns(sheared, None) - tilted).abs().max() / scale) < 1e-10
    assert float((patterns(wrong, None) - tilted).abs().max() / scale) > 1e-2
    # the tilt does change the patterns of a given specimen: it trades against the shear, it is not invisible
    assert float((patterns(trans, None) - tilted).abs().max() / scale) > 1e-2


def _slab_exit(phase, n, thickness, shape, s, E, probe):
    t = torch.polar(torch.ones_like(phase), phase / n).to(torch.complex128)
    trans = t.expand(1, 1, n, *shape)
    prop = multislice.propagator(shape, s, E, torch.tensor(thickness / n, dtype=torch.float64))
    return multislice.multislice(probe[None, None], trans, prop)[0, 0, 0]


def test_thin_slices_converge_and_approach_projection_as_thickness_vanishes():
    shape, s, E = (64, 64), (0.2, 0.2), 300e3
    rng = np.random.default_rng(0)
    from phasestem.physics.specimen import synthetic_phase

    phase = torch.as_tensor(synthetic_phase(shape, rng, "atoms", 1.0, width=1.5), dtype=torch.float64)
    probe = optics.make_probe(shape, s, E, 25.0).to(torch.complex128)
    # (a) fixed 20 Å slab: N-slice results converge as N grows
    ref = _slab_exit(phase, 256, 20.0, shape, s, E, probe)
    errs = [float((_slab_exit(phase, n, 20.0, shape, s, E, probe) - ref).abs().norm()) for n in (1, 2, 4, 16, 64)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs
    # (b) as the slab gets thinner, N slices approach the projection approximation
    proj = probe * torch.polar(torch.ones_like(phase), phase)
    gaps = [float((_slab_exit(phase, 16, t, shape, s, E, probe) - proj).abs().norm()) for t in (40.0, 10.0, 2.5, 0.5)]
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[-1] < 0.02 * gaps[0]


def _numpy_forward(obj, probe, positions, sampling, energy, dz, tilt, weights):
    """Independent reference: loops over positions, modes and slices; explicit phase factors."""
    K, S, Ny, Nx = obj.shape
    M, ny, nx = probe.shape
    lam = optics.wavelength(energy)
    ky = np.fft.fftfreq(ny, sampling[0])[:, None]
    kx = np.fft.fftfreq(nx, sampling[1])[None, :]
    prop = np.exp(-1j * np.pi * lam * (ky**2 + kx**2) * dz
                  - 2j * np.pi * dz * (ky * np.tan(tilt[0] * 1e-3) + kx * np.tan(tilt[1] * 1e-3)))
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.fftfreq(nx)[None, :]
    out = np.zeros((len(positions), ny, nx))
    for b, (py, px) in enumerate(positions):
        cy, cx = py / sampling[0], px / sampling[1]
        ry, rx = round(cy), round(cx)
        top, left = ry - ny // 2, rx - nx // 2
        rows = [(top + i) % Ny for i in range(ny)]
        cols = [(left + j) % Nx for j in range(nx)]
        ramp = np.exp(-2j * np.pi * (fy * (cy - ry) + fx * (cx - rx)))
        for m in range(M):
            psi0 = np.fft.ifft2(np.fft.fft2(probe[m]) * ramp)
            for k in range(K):
                psi = psi0
                for sl in range(S):
                    psi = psi * obj[k, sl][np.ix_(rows, cols)]
                    if sl < S - 1:
                        psi = np.fft.ifft2(np.fft.fft2(psi) * prop)
                out[b] += weights[k] * np.abs(np.fft.fft2(psi) / math.sqrt(ny * nx)) ** 2
    return np.fft.fftshift(out, axes=(-2, -1))


def test_forward_model_matches_independent_numpy():
    rng = np.random.default_rng(1)
    K, S, Ny, Nx, M, n = 2, 3, 40, 36, 2, 16
    sampling, E, dz = (0.3, 0.25), 200e3, 4.0
    obj = np.exp(1j * rng.uniform(0, 1, (K, S, Ny, Nx))) * rng.uniform(0.8, 1.0, (K, S, Ny, Nx))
    probe = optics.initial_probe_modes(optics.make_probe((n, n), sampling, E, 30.0, {"C10": 20.0},
                                                         on_band_limit="ignore"), M).numpy()
    positions = rng.uniform(0, 12, (5, 2)) + [-2.0, 9.0]  # includes windows that wrap around
    tilt = np.array([2.0, -3.5])
    weights = np.array([0.7, 0.3])
    ref = _numpy_forward(obj, probe, positions, sampling, E, dz, tilt, weights)
    fm = operator.ForwardModel((n, n), sampling, E)
    got = fm(torch.as_tensor(obj, dtype=torch.complex64), torch.as_tensor(probe), torch.as_tensor(positions),
             dz=dz, tilt=torch.as_tensor(tilt, dtype=torch.float32),
             object_weights=torch.as_tensor(weights, dtype=torch.float32)).double().numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


def test_forward_model_gradcheck_float64():
    torch.manual_seed(0)
    n, Ny, S, M = 6, 10, 2, 2
    sampling, E = (0.4, 0.4), 200e3
    fm = operator.ForwardModel((n, n), sampling, E)
    obj = (torch.randn(1, S, Ny, Ny, dtype=torch.complex128) * 0.2 + 1).requires_grad_()
    probe = torch.randn(M, n, n, dtype=torch.complex128, requires_grad=True)
    positions = torch.tensor([[1.13, 1.32], [2.07, 0.61]], dtype=torch.float64, requires_grad=True)
    tilt = torch.tensor([1.5, -2.0], dtype=torch.float64, requires_grad=True)
    dz = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)

    def f(o, p, pos, t, d):
        return fm(o, p, pos, dz=d, tilt=t)

    assert torch.autograd.gradcheck(f, (obj, probe, positions, tilt, dz), eps=1e-6, atol=1e-6, fast_mode=True)


def test_patterns_sum_to_probe_intensity_for_pure_phase_object():
    fm = operator.ForwardModel((32, 32), (0.3, 0.3), 300e3)
    probe = optics.make_probe((32, 32), (0.3, 0.3), 300e3, 25.0, on_band_limit="ignore")
    obj = torch.polar(torch.ones(1, 3, 50, 50), torch.rand(1, 3, 50, 50))
    pats = fm(obj, probe, torch.rand(7, 2) * 10, dz=2.0)
    np.testing.assert_allclose(pats.sum((-2, -1)).numpy(), 1.0, rtol=1e-5)


def test_fourier_shift_matches_integer_roll_and_composes():
    x = torch.randn(3, 16, 20, dtype=torch.complex64)
    s = torch.tensor([[2.0, -3.0]] * 3)
    np.testing.assert_allclose(fourier.fourier_shift(x, s).numpy(), torch.roll(x, (2, -3), (-2, -1)).numpy(), atol=1e-5)
    half = fourier.fourier_shift(fourier.fourier_shift(x, s / 2), s / 2)
    np.testing.assert_allclose(half.numpy(), torch.roll(x, (2, -3), (-2, -1)).numpy(), atol=1e-4)


def test_partial_coherence_modes_are_orthogonal_and_normalised():
    probe = optics.make_probe((48, 48), (0.25, 0.25), 300e3, 25.0, on_band_limit="ignore")
    modes, occ = optics.partial_coherence_modes(probe, (0.25, 0.25), source_size=0.8, n_modes=4)
    assert modes.shape == (4, 48, 48) and float(occ.sum()) == pytest.approx(1.0, abs=1e-6)
    gram = torch.einsum("aij,bij->ab", modes.conj(), modes)
    off = gram - torch.diag(torch.diagonal(gram))
    assert float(off.abs().max()) < 1e-5
    assert float((modes.abs() ** 2).sum()) == pytest.approx(1.0, abs=1e-5)
    assert (occ[:-1] >= occ[1:]).all()


def test_the_scanned_field_is_the_centres_bounding_box_and_whole_pixel_rasters_keep_their_edges():
    from phasestem.physics.experiment import scanned_field

    # a 5 × 4 raster of 3 px steps from pixel (10, 20): rows 10…22, columns 20…29, both ends included
    yy, xx = np.meshgrid(10 + 3 * np.arange(5), 20 + 3 * np.arange(4), indexing="ij")
    centres = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float64)
    assert scanned_field(centres, (1.0, 1.0), (64, 64)) == (slice(10, 23), slice(20, 30))
    # the same raster in Å as float32 (a model's positions) leaves the centres a rounding error off whole pixels
    sampling = (0.23554166666666665, 0.23554166666666665)
    positions = torch.as_tensor(centres * sampling[0], dtype=torch.float32)
    assert np.abs(positions.double().numpy() / sampling[0] - centres).max() > 0  # the rounding is there ...
    assert scanned_field(positions, sampling, (64, 64)) == (slice(10, 23), slice(20, 30))  # ... and moves no edge
    # off whole pixels: the pixels that hold the box; clipped to the object
    assert scanned_field(centres + 0.5, (1.0, 1.0), (64, 64)) == (slice(10, 24), slice(20, 31))
    assert scanned_field(centres - 15, (1.0, 1.0), (12, 64)) == (slice(0, 8), slice(5, 15))
