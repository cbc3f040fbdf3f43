"""Acceptance of the AD ptychography engine on tiny simulated data (issue 3, physics lines)."""
import numpy as np
import pytest
import torch

from phasestem.metrics import pearson
from phasestem.recon import Constraints, Ptychography
from phasestem.recon.constraints import apply_constraints
from phasestem.recon.synthetic import synthetic_scan

SCANNED = (slice(0, 18), slice(0, 18))  # dataset-frame pixels covered by an 8×8 scan of 1 Å at 0.4 Å/px


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(model, ds, epochs, batch_size=16, **kw):
    if model.schedules["obj_phase"].lr == 3e-3:  # the default suits ~30 updates per epoch; these runs have ~4
        model.set_learning_rates(obj_phase=1e-2, obj_amplitude=1e-2)
    losses = list(model.Adam_optimize(epochs, ds, batch_size=batch_size, progress=False, **kw))
    assert len(losses) == epochs
    return losses


def test_single_slice_phase_correlates_with_truth():
    ds = synthetic_scan(scan_shape=(8, 8), seed=1, max_phase=0.5)
    model = Ptychography.from_dataset(ds)  # nominal probe from the dataset optics
    model.set_learning_rates(probe={"lr": 0.005, "start": 10})
    losses = _run(model, ds, 30)
    assert losses[-1] < 0.05 * losses[0]
    rec = model.phase_in_dataset_frame(ds.truth["phase"].shape)
    r = pearson(rec[SCANNED], ds.truth["phase"][SCANNED])
    assert r >= 0.95, r


def test_multislice_beats_single_slice_on_three_slice_data():
    ds = synthetic_scan(scan_shape=(8, 8), n_slices=3, slice_thickness=30.0, max_phase=0.6, seed=2)
    result = {}
    for S in (1, 3):
        model = Ptychography.from_dataset(ds, n_slices=S, slice_thickness=30.0 if S == 3 else 1.0)
        model.probe.requires_grad_(False)
        _run(model, ds, 30)
        rec = model.phase_in_dataset_frame(ds.truth["phase"].shape)
        result[S] = (model.loss_history[-1]["gaussian"], pearson(rec[SCANNED], ds.truth["phase"][SCANNED]))
    assert result[3][0] < result[1][0], result  # lower data error
    assert result[3][1] > result[1][1], result  # better phase


def test_position_correction_cuts_error_threefold():
    ds = synthetic_scan(scan_shape=(8, 8), position_noise=0.3, seed=3, max_phase=0.5)  # ~1 px RMS (0.4 Å px)
    model = Ptychography.from_dataset(ds)
    model.probe.requires_grad_(False)
    # Å per step of optimizers.RowAdam: a position steps once an epoch (when its pattern is in the batch)
    model.set_learning_rates(positions={"lr": 0.03, "start": 5})
    true = ds.truth["positions"]

    def rms():  # the global offset of all positions is unobservable: remove it
        d = model.dataset_positions().numpy() - true
        d = d - d.mean(0)
        return float(np.sqrt((d**2).sum(1).mean()))

    before = rms()
    assert 0.3 < before < 0.6
    _run(model, ds, 40)
    assert rms() * 3 <= before, (before, rms())


def test_three_probe_modes_fit_partially_coherent_data_better():
    ds = synthetic_scan(scan_shape=(6, 6), seed=4, max_phase=0.4, source_size=1.5, n_modes=6)
    err = {}
    for M in (1, 3):
        model = Ptychography.from_dataset(ds, n_probe_modes=M)  # default mode_power 0.02
        model.set_learning_rates(probe={"lr": 0.02, "start": 1})
        _run(model, ds, 40, batch_size=12, constraints=Constraints(ortho_probe={"enabled": True}))
        err[M] = model.loss_history[-1]["gaussian"]
    assert err[3] < 0.9 * err[1], err


def _known_object_model(ds, **kw):
    """Model holding the true object and probe (frozen) so only the geometry is refined."""
    model = Ptychography.from_dataset(ds, n_slices=3, **kw)
    full = torch.as_tensor(ds.truth["object_phase"])  # (S, Ny, Nx) whole simulated object
    origins = zip(model.origin, ds.truth["object_origin"], model.sampling, strict=True)
    d = [round((mo - so) / s) for mo, so, s in origins]
    assert min(d) >= 0
    h = min(full.shape[1], model.object_shape[0] - d[0])
    w = min(full.shape[2], model.object_shape[1] - d[1])
    with torch.no_grad():
        model.obj_phase[0, :, d[0] : d[0] + h, d[1] : d[1] + w] = full[:, :h, :w]
    for p in (model.obj_phase, model.obj_amplitude, model.probe, model.positions):
        p.requires_grad_(False)
    return model


def test_thickness_refinement_recovers_true_value():
    ds = synthetic_scan(scan_shape=(6, 6), n_slices=3, slice_thickness=30.0, max_phase=0.6, seed=5)
    model = _known_object_model(ds, slice_thickness=22.0)
    model.set_learning_rates(slice_thickness=0.5)
    _run(model, ds, 20, batch_size=12)
    dz = float(model.slice_thickness.detach())
    assert abs(dz - 30.0) < 3.0, dz


def test_tilt_refinement_recovers_true_value():
    ds = synthetic_scan(scan_shape=(6, 6), n_slices=3, slice_thickness=30.0, max_phase=0.6, seed=6,
                          tilt=(8.0, -5.0))
    model = _known_object_model(ds, slice_thickness=30.0)
    model.set_learning_rates(tilt=0.5)
    _run(model, ds, 20, batch_size=12)
    tilt = model.tilt.detach().numpy()
    assert np.all(np.abs(tilt - np.array([8.0, -5.0])) < 0.1 * np.abs([8.0, -5.0])), tilt


def test_phase_ramp_moves_into_the_probe_without_changing_the_intensities():
    from phasestem.recon.constraints import transfer_phase_ramp

    # 0.8 Å steps of 0.4 Å pixels: whole-pixel positions, where the symmetry is exact (a sub-pixel position shifts
    # the tilted probe in its periodic window: 0.2 % of the intensity here, invisible in the loss at 256 px)
    ds = synthetic_scan(window=(64, 64), sampling=0.4, scan_shape=(8, 8), scan_step=0.8, energy=300e3,
                          semiangle=15.0, c10=50.0, max_phase=0.4, seed=2)
    model = Ptychography.from_dataset(ds)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        model.obj_phase.copy_(torch.as_tensor(rng.normal(0, 0.05, model.obj_phase.shape), dtype=torch.float32))
        ny, nx = model.object_shape
        yy, xx = torch.meshgrid(torch.arange(ny, dtype=torch.float32), torch.arange(nx, dtype=torch.float32),
                                indexing="ij")
        model.obj_phase.add_(0.01 * yy - 0.007 * xx)  # 0.1 / −0.07 px of pattern shift
    before = model.simulate()
    gy, gx = transfer_phase_ramp(model)
    assert gy == pytest.approx(0.01, abs=1e-3) and gx == pytest.approx(-0.007, abs=1e-3)
    after = model.simulate()
    assert float((after - before).abs().max() / before.abs().max()) < 1e-5  # the same intensities
    assert transfer_phase_ramp(model) == pytest.approx((0.0, 0.0), abs=1e-5)  # nothing left to move


def _columns(shape, rng, n_atoms=40, sigma_px=2.0):
    """Smooth random 'atom columns' (one slice's phase, rad): Gaussians of ``sigma_px`` at random places."""
    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    out = np.zeros(shape)
    for cy, cx in rng.uniform(0, shape, (n_atoms, 2)):
        out += 0.3 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma_px**2))
    return out


def test_slice_shear_of_straight_columns_moves_into_the_tilt_without_changing_the_intensities():
    """A model at zero tilt whose slices hold the same columns, slice k moved by −k·w, is a specimen tilted by
    tanθ = w·px/Δz (tests/test_physics.py): the constraint straightens the slices, puts that tilt in the model and
    leaves every pattern as it was (a wrong sign would change them)."""
    from phasestem.metrics import apply_shift
    from phasestem.recon.shear import transfer_slice_shear

    S, dz, walk = 6, 40.0, (0.35, -0.25)  # px per slice
    ds = synthetic_scan(window=(64, 64), sampling=0.4, scan_shape=(8, 8), scan_step=0.8, energy=300e3,
                          semiangle=15.0, c10=-80.0, max_phase=0.4, seed=2)
    model = Ptychography.from_dataset(ds, n_slices=S, slice_thickness=dz)
    columns = _columns(model.object_shape, np.random.default_rng(4))
    sheared = np.stack([apply_shift(columns, (-k * walk[0], -k * walk[1])) for k in range(S)])
    with torch.no_grad():
        model.obj_phase.copy_(torch.as_tensor(sheared[None], dtype=torch.float32))
    before = model.simulate()
    dty, dtx = transfer_slice_shear(model)
    want = [np.arctan(w * 0.4 / dz) * 1e3 for w in walk]  # mrad
    assert (dty, dtx) == pytest.approx(want, rel=0.03), ((dty, dtx), want)
    assert model.tilt.detach().numpy() == pytest.approx(want, rel=0.03)
    straight = model.obj_phase.detach().numpy()[0]
    assert np.abs(straight - columns).max() < 0.02 * columns.max()  # every slice holds the columns unmoved
    after = model.simulate()
    # the same intensities (to the probe's wrap-around in its periodic window: 0.7 %), where the mirrored tilt
    # changes them by half their peak
    assert float((after - before).abs().max() / before.abs().max()) < 1.5e-2
    with torch.no_grad():
        model.tilt.neg_()
    mirrored = model.simulate()
    assert float((mirrored - before).abs().max() / before.abs().max()) > 0.2
    with torch.no_grad():
        model.tilt.neg_()
    assert transfer_slice_shear(model) == pytest.approx((0.0, 0.0), abs=0.05 * abs(want[0]))  # nothing left


def test_slice_shear_leaves_independent_slices_alone():
    """Independent atoms in every slice have no column to straighten: nothing moves."""
    from phasestem.recon.shear import slice_shear, transfer_slice_shear

    ds = synthetic_scan(window=(64, 64), sampling=0.4, scan_shape=(8, 8), scan_step=0.8, energy=300e3,
                          semiangle=15.0, c10=-80.0, max_phase=0.4, seed=2)
    model = Ptychography.from_dataset(ds, n_slices=6, slice_thickness=40.0)
    rng = np.random.default_rng(5)
    slices = np.stack([_columns(model.object_shape, rng) for _ in range(6)])
    with torch.no_grad():
        model.obj_phase.copy_(torch.as_tensor(slices[None], dtype=torch.float32))
    _, coherence = slice_shear(torch.as_tensor(slices))
    assert coherence < 0.3, coherence
    assert transfer_slice_shear(model) == (0.0, 0.0)
    assert np.array_equal(model.obj_phase.detach().numpy()[0], slices.astype(np.float32))
    assert model.tilt.detach().abs().max() == 0


def test_the_shear_is_measured_on_a_stack_grown_to_fast_fft_sizes_and_stays_the_same():
    """slice_shear transforms its stack 132 times, so for obj_shear_rule the stack's margin grows until its sides are
    5-smooth (a side of 2 × 59 px transforms 2–4× slower than one of 120); the field inside and the zero-weight margin
    the shears need are kept, and the shear measured on the grown stack is the one measured on the tight one."""
    from scipy.fft import next_fast_len

    from phasestem.metrics import apply_shift
    from phasestem.recon.crystal import fast_span, field_slices
    from phasestem.recon.shear import _field_stack, slice_shear

    def smooth5(n):
        return next_fast_len(n, real=True) == n

    assert [fast_span(0, n, 10_000)[1] for n in range(1, 400)] == [next_fast_len(n, real=True) for n in range(1, 400)]
    assert fast_span(10, 69, 200) == (10, 70)  # 59 → 60, grown below by 0 and above by 1
    assert fast_span(3, 3 + 118, 200) == (2, 122)  # 118 → 120: one row each side
    assert fast_span(0, 59, 59) == (0, 59)  # the object holds no more: left as it is
    assert fast_span(150, 199, 200) == (150, 200)  # 49 → 50 at the object's edge
    start, stop = fast_span(130, 197, 200)  # 67 → 72, pushed back from the edge
    assert (start, stop) == (128, 200)

    S, walk = 6, (0.35, -0.25)
    ds = synthetic_scan(window=(64, 64), sampling=0.4, scan_shape=(11, 11), scan_step=0.8, energy=300e3,
                          semiangle=15.0, c10=-80.0, max_phase=0.4, seed=2)
    model = Ptychography.from_dataset(ds, n_slices=S, slice_thickness=40.0)
    columns = _columns(model.object_shape, np.random.default_rng(4))
    sheared = np.stack([apply_shift(columns, (-k * walk[0], -k * walk[1])) for k in range(S)])
    with torch.no_grad():
        model.obj_phase.copy_(torch.as_tensor(sheared[None], dtype=torch.float32))
    margin = 4  # (S − 1) · 0.5 + 1 px, rounded up
    tight, inner = field_slices(model, margin)
    assert _field_stack(model, 0.5)[0].shape == tight.shape  # the transfer's stack: tight
    stack, window, grown_inner = _field_stack(model, 0.5, fast_fft=True)
    assert not all(smooth5(n) for n in tight.shape[-2:])  # the case the growth is for
    assert all(smooth5(n) for n in stack.shape[-2:]) and all(
        g >= t for g, t in zip(stack.shape[-2:], tight.shape[-2:], strict=True))
    for axis, rows in enumerate(grown_inner):  # the margin around the field is at least the tight one's
        assert rows.start >= inner[axis].start and stack.shape[axis + 1] - rows.stop >= margin
        assert float(window.sum((1 - axis,))[: rows.start].abs().max()) == 0  # zero weight in the margin
    tight_window = torch.zeros(tight.shape[-2:], dtype=torch.float64)
    tight_window[inner] = window[grown_inner]
    (dy, dx), coherence = slice_shear(stack, window)
    (ty, tx), tight_coherence = slice_shear(tight, tight_window)
    assert (dy, dx) == pytest.approx((ty, tx), abs=0.01) and (dy, dx) == pytest.approx(walk, abs=0.03)
    assert coherence == pytest.approx(tight_coherence, abs=0.01)


def _lattice(shape, period_px=5.0, sigma_px=0.9):
    """A crystal's projected phase (rad): Gaussian columns on a square lattice of ``period_px``, offset 0.3 px."""
    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    dy = (yy - 0.3 + period_px / 2) % period_px - period_px / 2  # distance to the nearest column
    dx = (xx - 0.3 + period_px / 2) % period_px - period_px / 2
    return 0.3 * np.exp(-(dy**2 + dx**2) / (2 * sigma_px**2))


def test_lattice_fraction_tells_a_crystal_from_independent_atoms():
    """A lattice's spectral power is in its Bragg peaks (a pure cosine: all of it); independent atoms' spectrum is a
    speckle, with almost none above 20 × its annulus' median (noise added to the lattice lowers the fraction by
    about the noise's share of the power)."""
    from phasestem.recon.crystal import CRYSTAL_FRACTION, lattice_fraction

    rng = np.random.default_rng(7)
    yy, xx = np.meshgrid(np.arange(48), np.arange(48), indexing="ij")
    cosine = np.cos(2 * np.pi * (yy / 6 + xx / 8))
    assert lattice_fraction(torch.as_tensor(cosine)) > 0.98
    crystal = _lattice((48, 48))
    noise = rng.normal(0, 0.02, crystal.shape)
    f_clean = lattice_fraction(torch.as_tensor(crystal))
    f_noisy = lattice_fraction(torch.as_tensor(crystal + noise))
    assert f_clean > 0.9 and CRYSTAL_FRACTION < f_noisy < f_clean, (f_clean, f_noisy)
    atoms = [lattice_fraction(torch.as_tensor(_columns((48, 48), np.random.default_rng(s), n_atoms=60,
                                                       sigma_px=0.9))) for s in range(5)]
    assert max(atoms) < 0.05, atoms


def test_obj_shear_auto_turns_on_for_a_mistilted_crystal_only():
    """'auto' is decided where obj_shear is first due: on for sheared lattice slices (a crystal at the wrong tilt),
    off for the same slices straight (the tilt fits), off for independent atoms (no lattice) and with one slice.
    The constraint then straightens the slices as when it is on, and the decision stays with the model (and its
    checkpoint) although the straightened object would no longer turn it on."""
    from phasestem.metrics import apply_shift
    from phasestem.recon.decided import resolve_decided
    from phasestem.recon.shear import obj_shear_rule

    S, walk = 6, (0.3, -0.2)  # px per slice
    ds = synthetic_scan(window=(64, 64), sampling=0.4, scan_shape=(14, 14), scan_step=0.8, energy=300e3,
                          semiangle=15.0, c10=-80.0, max_phase=0.4, seed=2)
    model = Ptychography.from_dataset(ds, n_slices=S, slice_thickness=40.0)
    crystal = _lattice(model.object_shape)
    rng = np.random.default_rng(3)
    stacks = {"sheared": np.stack([apply_shift(crystal, (-k * walk[0], -k * walk[1])) for k in range(S)]),
              "straight": np.stack([crystal] * S),
              "atoms": np.stack([_columns(model.object_shape, rng, n_atoms=80, sigma_px=0.9) for _ in range(S)])}
    decided = {}
    for name, stack in stacks.items():
        with torch.no_grad():
            model.obj_phase.copy_(torch.as_tensor(stack[None], dtype=torch.float32))
            model.tilt.zero_()
        decided[name] = obj_shear_rule(model)
    assert decided["sheared"][0] and decided["sheared"][1].startswith("on: "), decided["sheared"]
    assert not decided["straight"][0] and "the tilt fits" in decided["straight"][1], decided["straight"]
    assert not decided["atoms"][0] and "no columns" in decided["atoms"][1], decided["atoms"]

    with torch.no_grad():
        model.obj_phase.copy_(torch.as_tensor(stacks["sheared"][None], dtype=torch.float32))
    c = Constraints(obj_clamp={"enabled": False}, obj_blur={"enabled": False})  # the shear's rule alone
    assert c.obj_shear.enabled == "auto" and c.obj_shear.start_iter == 2
    assert resolve_decided(model, c, 1) is c  # not due yet: undecided
    on = resolve_decided(model, c, 2)
    assert on.obj_shear.enabled is True and c.obj_shear.enabled == "auto"  # the caller's settings stay as given
    assert resolve_decided(model, on, 3) is on
    assert "obj_shear" in apply_constraints(model, on, 2)
    want = [np.arctan(w * 0.4 / 40.0) * 1e3 for w in walk]
    assert model.tilt.detach().numpy() == pytest.approx(want, rel=0.05)
    assert obj_shear_rule(model)[0] is False  # straight now: a fresh decision would be off ...
    assert resolve_decided(model, c, 3).obj_shear.enabled is True  # ... but the run goes on as decided
    resumed = Ptychography.from_dataset(ds, n_slices=S, slice_thickness=40.0)
    resumed.load_checkpoint_state(model.state_for_checkpoint())
    assert resolve_decided(resumed, c, 3).obj_shear.enabled is True
    assert resolve_decided(Ptychography.from_dataset(ds), c, 2).obj_shear.enabled is False  # one slice: off


def test_obj_clamp_auto_holds_a_multislice_crystal_positive_and_leaves_other_objects_alone():
    """'auto' is decided after the first epoch: on for lattice slices (a crystal) of a multislice model, then every
    slice's phase ≥ 0 and amplitude ≤ 1 (the flat start's vacuum level and no gain); off for independent atoms,
    whose phase keeps its negative values, and for one slice. The decision stays with the model and its checkpoint,
    although a positive object no longer shows the rings it measured."""
    from phasestem.recon.crystal import obj_clamp_rule
    from phasestem.recon.decided import resolve_decided

    S = 4
    ds = synthetic_scan(window=(64, 64), sampling=0.4, scan_shape=(14, 14), scan_step=0.8, energy=300e3,
                          semiangle=15.0, c10=-80.0, max_phase=0.4, seed=2)
    rng = np.random.default_rng(6)

    def model_of(stack):
        model = Ptychography.from_dataset(ds, n_slices=S, slice_thickness=40.0)
        with torch.no_grad():
            model.obj_phase.copy_(torch.as_tensor(stack[None], dtype=torch.float32))
            model.obj_amplitude.fill_(1.05)
        return model

    shape = Ptychography.from_dataset(ds).object_shape
    offsets = 0.05 * rng.standard_normal((S, 1, 1))  # below zero between the columns, as wrapped rings leave it
    crystal = model_of(np.stack([_lattice(shape)] * S) - 0.1 + offsets)
    atoms = model_of(np.stack([_columns(shape, rng, n_atoms=80, sigma_px=0.9) for _ in range(S)]) - 0.1)
    on, why = obj_clamp_rule(crystal)
    assert on and why.startswith("on: ") and "Bragg peaks" in why, why
    off, why = obj_clamp_rule(atoms)
    assert not off and why.startswith("off: "), why
    c = Constraints(obj_blur={"enabled": False})  # the clamp's rule alone (a dose decides the blur's)
    assert c.obj_clamp.enabled == "auto" and c.obj_clamp.phase_min == 0.0 and c.obj_clamp.amp_max == 1.0
    for model, want in ((crystal, True), (atoms, False)):
        decided = resolve_decided(model, c, 1)
        assert decided.obj_clamp.enabled is want and model.history.decided["obj_clamp"] is want
        applied = apply_constraints(model, decided, 1)
        assert ("obj_clamp" in applied) is want
    assert crystal.history.notes["obj_clamp"].startswith("on: ") and crystal.history.notes["obj_clamp"].endswith(
        "(epoch 1)") and atoms.history.notes["obj_clamp"].startswith("off: ")  # for results.h5's provenance
    assert float(crystal.obj_phase.detach().min()) == 0.0 and float(crystal.obj_amplitude.detach().max()) == 1.0
    assert float(atoms.obj_phase.detach().min()) < -0.05 and float(atoms.obj_amplitude.detach().max()) > 1.0
    resumed = Ptychography.from_dataset(ds, n_slices=S, slice_thickness=40.0)
    resumed.load_checkpoint_state(crystal.state_for_checkpoint())
    assert resolve_decided(resumed, c, 5).obj_clamp.enabled is True  # goes on as decided, though not due anew
    assert resumed.history.notes["obj_clamp"] == crystal.history.notes["obj_clamp"]  # and its reason goes on with it
    one = Ptychography.from_dataset(ds)
    with torch.no_grad():
        one.obj_phase.copy_(torch.as_tensor(_lattice(one.object_shape)[None, None] - 0.1, dtype=torch.float32))
    assert obj_clamp_rule(one) == (False, "off: one slice (the positivity of separate slices is what the rule is "
                                          "for)")


def _spectral_power(probe: torch.Tensor) -> torch.Tensor:
    """Σ_m |ψ̂_m(k)|² (ny, nx) of probe modes (M, ny, nx) complex."""
    return torch.fft.fft2(probe.to(torch.complex128), norm="ortho").abs().square().sum(0)


def test_held_aperture_restores_the_nominal_spectrum_amplitude_and_keeps_phase_and_intensity():
    from phasestem.recon.constraints import hold_probe_aperture

    ds = synthetic_scan(window=(48, 48), scan_shape=(4, 4), seed=3)
    model = Ptychography.from_dataset(ds)
    nominal = model.get_probe().detach()
    gen = torch.Generator().manual_seed(0)
    spec = torch.fft.fft2(nominal, norm="ortho")
    bumps = 1 + 0.5 * torch.rand(spec.shape, generator=gen)  # amplitude structure inside the disk
    twist = torch.polar(torch.ones(spec.shape), 0.7 * torch.rand(spec.shape, generator=gen))  # and new aberrations
    with torch.no_grad():
        model.probe.copy_(torch.view_as_real(torch.fft.ifft2(3.0 * spec * bumps * twist, norm="ortho")
                                             * model.probe_scale))
    before = model.get_probe().detach()
    hold_probe_aperture(model)
    after = model.get_probe().detach()
    assert float(after.abs().square().sum()) == pytest.approx(float(before.abs().square().sum()), rel=1e-5)
    ratio = _spectral_power(after) / _spectral_power(nominal).clamp_min(1e-30)
    inside = _spectral_power(nominal) > 1e-3 * float(_spectral_power(nominal).max())
    kept = float(before.abs().square().sum() / nominal.abs().square().sum())  # 9 × the mean of bumps² ≈ 14
    assert kept > 12 and torch.allclose(ratio[inside], torch.full_like(ratio[inside], kept), rtol=1e-4)
    outside = _spectral_power(nominal) < 1e-10 * float(_spectral_power(nominal).max())  # beyond the aperture
    assert int(outside.sum()) > 1000
    assert float(_spectral_power(after)[outside].max()) < 1e-8 * float(_spectral_power(after).max())
    phase_before = torch.angle(torch.fft.fft2(before, norm="ortho"))[:, inside]
    phase_after = torch.angle(torch.fft.fft2(after, norm="ortho"))[:, inside]
    assert float(torch.remainder(phase_after - phase_before + np.pi, 2 * np.pi).sub(np.pi).abs().max()) < 1e-3


def test_held_aperture_leaves_partially_coherent_modes_alone_as_their_number_grows():
    # a finite source gives shifted copies of one probe, whose summed spectrum is the aperture's; a truncated set of
    # modes departs from it, less the more modes are kept
    from phasestem.recon.constraints import hold_probe_aperture

    ds = synthetic_scan(window=(48, 48), scan_shape=(4, 4), seed=3)
    single = Ptychography.from_dataset(ds).get_probe().detach()
    moved = []
    for n_modes in (2, 4, 12):
        model = Ptychography.from_dataset(ds, n_probe_modes=n_modes, source_size=0.8)
        model.experiment.probe = single  # the nominal of one mode: the check must not lean on the modes themselves
        before = model.get_probe().detach().clone()
        hold_probe_aperture(model)
        moved.append(float((model.get_probe().detach() - before).abs().square().sum() / before.abs().square().sum()))
    assert moved[0] > moved[1] > moved[2] and moved[2] < 1e-5 and moved[0] > 1e-3, moved


def test_held_aperture_runs_in_the_epochs_the_probe_is_refined_and_leaves_a_frozen_probe_alone():
    ds = synthetic_scan(window=(48, 48), scan_shape=(5, 5), seed=4, max_phase=1.5)
    held = Constraints(probe_aperture={"enabled": True})
    model = Ptychography.from_dataset(ds)
    nominal = _spectral_power(model.get_probe().detach())
    inside = nominal > 1e-3 * float(nominal.max())
    free = Ptychography.from_dataset(ds)
    free_probe = Constraints(probe_aperture={"enabled": False})
    list(free.LSQ_optimize(3, ds, batch_size=8, progress=False, constraints=free_probe))
    list(model.LSQ_optimize(3, ds, batch_size=8, progress=False, constraints=held))
    for m, flat in ((free, False), (model, True)):
        ratio = (_spectral_power(m.get_probe().detach()) / nominal.clamp_min(1e-30))[inside]
        assert (float(ratio.std() / ratio.mean()) < 1e-4) == flat, float(ratio.std() / ratio.mean())
    frozen = Ptychography.from_dataset(ds)
    frozen.set_learning_rates(probe=0)
    probe0 = frozen.probe.detach().clone()
    list(frozen.LSQ_optimize(2, ds, batch_size=8, progress=False, constraints=held))
    assert torch.equal(frozen.probe.detach(), probe0)


def _strong_and_weak_scans():
    """Independent NumPy multislice scans: 16 slices of dense 0.6 rad atoms (a strong scatterer) and one slice."""
    from numpy_cases import numpy_scan

    strong = numpy_scan(3, 96, 0.2, (4, 4), 1.0, 50.0, 0.6, n_slices=16, dz=10.0)[0]
    weak = numpy_scan(3, 96, 0.2, (4, 4), 1.0, 50.0, 0.3, n_slices=1)[0]
    coarse = numpy_scan(3, 48, 0.2, (4, 4), 1.0, 50.0, 0.6, n_slices=16, dz=10.0)[0]  # a disk of 9.8 px
    return strong, weak, coarse


def test_the_aperture_is_held_by_default_only_on_a_strong_scatterer_whose_disk_matches_the_nominal_one():
    from phasestem.dataset import FourDSTEM
    from phasestem.recon.aperture_rule import probe_aperture_rule

    strong, weak, coarse = _strong_and_weak_scans()

    def rule(ds, **model_options):
        return probe_aperture_rule(ds.mean_pattern(), Ptychography.from_dataset(ds, **model_options).experiment.probe)

    on, why = rule(strong)
    assert on and why.startswith("on: 1.") and "beyond 1.1 × the disk" in why, why
    on, why = rule(weak)
    assert not on and "a strong scatterer has more than 1 %" in why, why
    for scale in (1.025, 0.975):  # the nominal semi-angle 2.5 % off the data's: the hold would cost, the rule says so
        off = FourDSTEM(patterns=strong.patterns, energy=strong.energy, scan_step=strong.scan_step,
                        angular_sampling=strong.angular_sampling, semiangle=strong.semiangle * scale,
                        aberrations=strong.aberrations)
        on, why = rule(off)
        assert not on and "give the measured semi-angle" in why and f"edge is {'-' if scale > 1 else '+'}" in why, why
    on, why = rule(strong, oversampling=2)
    assert not on and "oversampling" in why, why
    on, why = rule(coarse)
    assert not on and "too few pixels" in why, why


def test_probe_aperture_auto_is_decided_once_logged_and_held_through_the_engine(caplog):
    strong, weak, _ = _strong_and_weak_scans()
    for ds, held in ((strong, True), (weak, False)):
        model = Ptychography.from_dataset(ds, n_slices=16 if ds is strong else 1, slice_thickness=10.0)
        nominal = _spectral_power(model.get_probe().detach())
        inside = nominal > 1e-3 * float(nominal.max())
        caplog.clear()
        with caplog.at_level("INFO", logger="phasestem.recon"):
            # constraints: the defaults (auto); without the coarse start, whose own call on the detector's centre
            # decides for that crop (and logs it) before the call on the whole detector
            list(model.LSQ_optimize(2, ds, batch_size=8, progress=False, coarse_start=0))
        assert caplog.text.count("constraints.probe_aperture auto: " + ("on" if held else "off")) == 1, caplog.text
        ratio = (_spectral_power(model.get_probe().detach()) / nominal.clamp_min(1e-30))[inside]
        assert (float(ratio.std() / ratio.mean()) < 1e-4) == held, float(ratio.std() / ratio.mean())
    frozen = Ptychography.from_dataset(strong, n_slices=16, slice_thickness=10.0)
    frozen.set_learning_rates(probe=0)
    caplog.clear()
    with caplog.at_level("INFO", logger="phasestem.recon"):
        list(frozen.LSQ_optimize(1, strong, batch_size=8, progress=False))
    assert "probe_aperture auto" not in caplog.text  # a probe that is not refined needs no decision
