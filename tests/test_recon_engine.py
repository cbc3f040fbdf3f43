"""Engine behaviour: generator, freezing, checkpoints/resume, NaN stop, batches, optimisers, losses,
constraints, results file, hybrid start."""
import h5py
import numpy as np
import pytest
import torch

from phasestem.dataset import FourDSTEM
from phasestem.metrics import pearson
from phasestem.recon import Constraints, LossConfig, NonFiniteLossError, Ptychography, constraints, engine
from phasestem.recon.results import load_results
from phasestem.recon.synthetic import synthetic_scan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ds():
    return synthetic_scan(scan_shape=(5, 5), seed=11, max_phase=0.4)


def test_generator_yields_one_loss_per_epoch_and_history_grows(ds):
    model = Ptychography.from_dataset(ds)
    gen = model.Adam_optimize(3, ds, batch_size=10, progress=False)
    first = next(gen)  # the caller may inspect the model between epochs
    assert isinstance(first, float) and model.epoch == 1 and len(model.loss_history) == 1
    rest = list(gen)
    assert len(rest) == 2 and model.epoch == 3
    assert [h["epoch"] for h in model.loss_history] == [1, 2, 3]
    assert all("gaussian" in h for h in model.loss_history)


def test_frozen_parameter_is_unchanged_and_others_move(ds):
    model = Ptychography.from_dataset(ds)
    model.probe.requires_grad = False
    model.set_learning_rates(positions={"lr": 0.01, "start": 1})
    probe0 = model.probe.detach().clone()
    pos0 = model.positions.detach().clone()
    phase0 = model.obj_phase.detach().clone()
    list(model.Adam_optimize(2, ds, batch_size=10, progress=False))
    assert torch.equal(model.probe.detach(), probe0)
    assert not model.probe.requires_grad  # the user's freeze survives the run
    assert not torch.equal(model.positions.detach(), pos0)
    assert not torch.equal(model.obj_phase.detach(), phase0)


def test_schedule_start_end_respected(ds):
    model = Ptychography.from_dataset(ds)
    model.set_learning_rates(probe={"lr": 0.01, "start": 3, "end": 3})
    probe0 = model.probe.detach().clone()
    gen = model.Adam_optimize(4, ds, batch_size=25, progress=False)
    next(gen), next(gen)
    assert torch.equal(model.probe.detach(), probe0)  # epochs 1, 2: not yet
    next(gen)
    probe3 = model.probe.detach().clone()
    assert not torch.equal(probe3, probe0)
    next(gen)
    assert torch.equal(model.probe.detach(), probe3)  # epoch 4: past its end
    assert model.probe.requires_grad


def test_killed_run_resumes_from_checkpoint(ds, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    ref = Ptychography.from_dataset(ds)
    list(ref.Adam_optimize(4, ds, batch_size=10, progress=False, seed=3))
    model = Ptychography.from_dataset(ds)
    gen = model.Adam_optimize(4, ds, batch_size=10, progress=False, seed=3, checkpoint_path=ckpt, checkpoint_every=2)
    for i, _ in enumerate(gen):
        if i == 2:  # 'killed' during epoch 3: only the epoch-2 checkpoint exists
            break
    fresh = Ptychography.from_dataset(ds)
    losses = list(fresh.Adam_optimize(2, ds, batch_size=10, progress=False, seed=3, checkpoint_path=ckpt,
                                      resume=True))
    assert fresh.epoch == 4 and len(losses) == 2 and len(fresh.loss_history) == 4
    assert [h["epoch"] for h in fresh.loss_history] == [1, 2, 3, 4]
    torch.testing.assert_close(fresh.obj_phase, ref.obj_phase, rtol=1e-4, atol=1e-5)
    assert fresh.loss_history[-1]["loss"] == pytest.approx(ref.loss_history[-1]["loss"], rel=1e-3)


def test_nan_stops_with_clear_message_and_keeps_last_good_state(ds, tmp_path):
    model = Ptychography.from_dataset(ds)
    list(model.Adam_optimize(1, ds, batch_size=25, progress=False))
    good = model.obj_phase.detach().clone()
    model.set_learning_rates(obj_phase=float("inf"))
    with pytest.raises(NonFiniteLossError, match="epoch 2.*restored the state after epoch 1"):
        for _ in model.Adam_optimize(3, ds, batch_size=5, progress=False, checkpoint_path=tmp_path / "c.pt"):
            pass
    assert torch.equal(model.obj_phase.detach(), good) and model.epoch == 1
    assert (tmp_path / "c.pt").exists()


def test_compact_batches_are_local_and_cover_the_scan():
    pos = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij"), -1).reshape(-1, 2)
    groups = engine.compact_groups(pos, 16)
    assert sorted(np.concatenate(groups).tolist()) == list(range(64))
    assert all(len(g) <= 16 for g in groups)
    spread = max(np.ptp(pos[g], axis=0).max() for g in groups)
    assert spread <= 4  # 4×4 tiles, not whole rows


@pytest.mark.parametrize("method", ["SGD_optimize", "LBFGS_optimize"])
def test_other_optimizers_reduce_the_loss(ds, method):
    model = Ptychography.from_dataset(ds)
    model.probe.requires_grad_(False)
    kw = {"batch_size": 25}
    if method == "SGD_optimize":
        model.set_learning_rates(obj_phase=20.0, obj_amplitude=20.0)  # SGD needs gradient-scale rates
    losses = list(getattr(model, method)(5, ds, progress=False, batch_mode="compact", **kw))
    assert len(losses) == 5 and losses[-1] < 0.7 * losses[0], losses


def test_loss_components_reported_and_weighted(ds):
    model = Ptychography.from_dataset(ds)
    cfg = LossConfig(gaussian=1.0, poisson=0.5, pacbed=2.0, sparsity=0.1)
    list(model.Adam_optimize(1, ds, batch_size=25, progress=False, losses=cfg))
    h = model.loss_history[-1]
    assert {"gaussian", "poisson", "pacbed", "sparsity"} <= set(h)
    # one batch covering the scan: the epoch loss is exactly the weighted sum of its components
    assert h["loss"] == pytest.approx(h["gaussian"] + 0.5 * h["poisson"] + 2 * h["pacbed"] + 0.1 * h["sparsity"],
                                      rel=1e-5)


def test_poisson_loss_minimal_at_the_data():
    from phasestem.recon.losses import poisson_loss

    d = torch.rand(4, 8, 8) + 0.1
    d[0, 0, :4] = 0.0  # dark pixels too
    best = poisson_loss(d, d, 100.0, 1e-8, 4)
    assert float(best) == pytest.approx(0.0, abs=1e-6)  # the deviance: 0 at the data, never negative
    for f in (0.9, 1.1):
        assert poisson_loss(d * f, d, 100.0, 1e-8, 4) > best
    # the same gradients as the negative log-likelihood it replaces
    m = (d * 1.3).requires_grad_(True)
    poisson_loss(m, d, 100.0, 1e-8, 4).backward()
    c = m.detach().clamp_min(0) * 100.0 + 0.5
    np.testing.assert_allclose(m.grad, (1 - (d * 100.0 + 0.5) / c) / 4, rtol=1e-5, atol=1e-7)


def test_poisson_data_do_not_trigger_the_divergence_check():
    """The Poisson term is a deviance (≥ 0): with a negative NLL, 'loss above 10 × best' was always true
    and a converging run on counted data stopped as diverged."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(np.full((4, 4, 16, 16), 50.0)).astype(np.float32)
    ds = FourDSTEM(counts, energy=300e3, scan_step=(1.0, 1.0), angular_sampling=(1.5, 1.5), semiangle=6.0)
    model = Ptychography.from_dataset(ds, n_slices=1)
    losses = list(model.LSQ_optimize(3, ds, batch_size=8, progress=False, losses=LossConfig(gaussian=0, poisson=1)))
    assert len(losses) == 3 and all(v >= 0 for v in losses)


def test_every_constraint_setting_has_one_action_in_the_table():
    """recon.constraints.ACTIONS, the one place a constraint is applied from: every Constraints field has its row."""
    assert set(constraints.ACTIONS) == set(Constraints.model_fields)


def test_constraints_schedule_and_effects(ds):
    s = constraints.Schedule.model_validate({"enabled": True, "start_iter": 2, "freq": 3, "end_iter": 8})
    assert s.step == 3 and [e for e in range(1, 12) if s.due(e)] == [2, 5, 8]
    model = Ptychography.from_dataset(ds, n_slices=4, slice_thickness=5.0, n_probe_modes=2)
    with torch.no_grad():
        model.obj_phase.normal_()
        model.obj_amplitude.fill_(1.5)
        model.positions.add_(3.0)
        model.probe[1] += 0.5 * model.probe[0]
    c = Constraints.model_validate({
        "ortho_probe": {"enabled": True}, "probe_mask": {"enabled": True, "radius_mrad": 10.0},
        "obj_clamp": {"enabled": True, "amp_max": 1.0, "phase_min": -1.0, "phase_max": 1.0},
        "obj_blur": {"enabled": True, "sigma": 1.0}, "kz_filter": {"enabled": True},
        "rz_filter": {"enabled": True, "sigma": 5.0}, "position_limit": {"enabled": True, "max_shift": 1.0},
    })
    assert constraints.apply_constraints(model, Constraints(ortho_probe={"enabled": True}), 1) == ["ortho_probe"]
    p = model.get_probe().detach().reshape(2, -1)
    assert abs(complex((p[0].conj() * p[1]).sum())) < 1e-6
    var0 = float(model.obj_phase.detach().var())
    done = constraints.apply_constraints(model, c, 1)
    assert set(done) >= {"ortho_probe", "probe_mask", "obj_clamp", "obj_blur", "kz_filter", "rz_filter",
                         "position_limit"}
    spec = torch.fft.fft2(model.get_probe().detach())
    from phasestem.physics import optics

    KY, KX = optics.k_grid(model.window, model.sampling)
    outside = (KY**2 + KX**2).sqrt() * optics.wavelength(model.energy) * 1e3 > 11.0
    assert float(spec.abs()[:, outside].max()) < 1e-6
    assert float(model.obj_amplitude.detach().max()) <= 1.0 + 1e-6
    assert float(model.obj_phase.detach().abs().max()) <= 1.0 + 1e-6
    assert float(model.obj_phase.detach().var()) < var0
    shift = (model.positions.detach() - model.initial_positions).norm(dim=1)
    assert float(shift.max()) <= 1.0 + 1e-5


def test_rz_filter_does_not_wrap_top_and_bottom(ds):
    model = Ptychography.from_dataset(ds, n_slices=6, slice_thickness=5.0)
    with torch.no_grad():
        model.obj_phase[:, 0] = 1.0  # only the top slice
    constraints.rz_filter(model, 5.0)
    assert float(model.obj_phase.detach()[0, -1].abs().max()) < 1e-6  # nothing leaks to the bottom slice
    assert float(model.obj_phase.detach()[0, 1].mean()) > 0.1


def test_per_position_tilt_smoothing(ds):
    model = Ptychography.from_dataset(ds, n_slices=2, per_position_tilt=True)
    assert model.tilt.shape == (25, 2)
    with torch.no_grad():
        model.tilt.normal_()
    before = float(model.tilt.detach().var())
    constraints.smooth_tilt(model, 2.0)
    assert float(model.tilt.detach().var()) < 0.5 * before


def test_save_results_round_trip(ds, tmp_path):
    model = Ptychography.from_dataset(ds, n_slices=2, n_probe_modes=2)
    list(model.Adam_optimize(2, ds, batch_size=25, progress=False))
    path = model.save_results(tmp_path / "res.h5", config_text="a: 1\n")
    assert not (tmp_path / "res.h5.tmp").exists()
    r = load_results(path)
    assert r["obj_phase"].shape == (1, 2, *model.object_shape)
    np.testing.assert_allclose(r["phase_sum"], model.obj_phase.detach().sum(1)[0].numpy(), atol=1e-6)
    assert r["probe"].shape == (2, 32, 32) and r["probe"].dtype == np.complex64
    np.testing.assert_allclose(r["positions"], ds.positions_angstrom(), atol=1e-4)  # positions frozen by default
    assert len(r["loss"]["loss"]) == 2 and r["attrs"]["config"] == "a: 1\n"
    with h5py.File(path) as f:  # plain HDF5, no pickled objects
        assert f["probe/fourier_space"].shape == (2, 32, 32)


def test_inspect_and_compare_figures(ds, tmp_path):
    import matplotlib.pyplot as plt

    model = Ptychography.from_dataset(ds, n_probe_modes=2)
    list(model.Adam_optimize(1, ds, batch_size=25, progress=False))
    plt.close(model.inspect(ds, path=tmp_path / "a.png"))
    plt.close(model.compare(ds, path=tmp_path / "b.png"))
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000


def test_hybrid_start_from_phase_image_file(ds, tmp_path):
    truth = ds.truth["phase"]
    np.save(tmp_path / "pred.npy", truth)
    model = Ptychography.from_dataset(ds, n_slices=2, initial_phase=tmp_path / "pred.npy")
    rec = model.phase_in_dataset_frame(truth.shape)
    assert pearson(rec[:14, :14], truth[:14, :14]) > 0.999
    np.testing.assert_allclose(model.obj_phase[0, 0].detach().numpy(), model.obj_phase[0, 1].detach().numpy())
    cold = Ptychography.from_dataset(ds)
    warm = Ptychography.from_dataset(ds, initial_phase=tmp_path / "pred.npy")
    for m in (cold, warm):
        m.probe.requires_grad_(False)
        list(m.Adam_optimize(2, ds, batch_size=25, progress=False))
    assert warm.loss_history[-1]["loss"] < cold.loss_history[-1]["loss"]
    with pytest.raises(Exception, match="not found"):
        Ptychography.from_dataset(ds, initial_phase=tmp_path / "missing.npy")


def test_model_to_device_and_probe_normalisation(ds):
    model = Ptychography.from_dataset(ds, n_probe_modes=3).to("cpu")
    assert float(model.get_probe().detach().abs().square().sum()) == pytest.approx(1.0, rel=1e-4)
    pats = model.simulate()
    assert pats.shape == (25, 32, 32)
    # simulate() of the true object equals the data up to the object not being known: totals match
    assert float(pats.sum(( -2, -1)).mean()) == pytest.approx(1.0, rel=1e-3)


def test_farfield_custom_backward_matches_plain_autograd():
    from phasestem.physics.fourier import fft2
    from phasestem.physics.operator import farfield_intensity

    def plain(psi, w):  # autograd through abs(): the reference
        return (fft2(psi).abs().square() * w[:, None, None]).sum(dim=(1, 2))

    g = torch.Generator().manual_seed(0)
    psi = torch.randn(3, 2, 2, 6, 5, dtype=torch.complex128, generator=g, requires_grad=True)
    w = torch.tensor([0.7, 0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(farfield_intensity, (psi, w))
    target = torch.rand(3, 6, 5, dtype=torch.float64, generator=g)
    grads = []
    for fn in (farfield_intensity, plain):
        loss = ((fn(psi, w) + 1e-3).sqrt() - target).square().sum()
        grads.append(torch.autograd.grad(loss, (psi, w)))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_model_forward_matches_physics_forward_model(ds):
    from phasestem.physics.operator import ForwardModel

    model = Ptychography.from_dataset(ds, n_slices=2, n_probe_modes=2, n_object_modes=2, slice_thickness=7.0,
                                      tilt=(3.0, -2.0))
    with torch.no_grad():
        model.obj_phase.normal_(0, 0.3)
        model.obj_weights.copy_(torch.tensor([0.6, 0.4]))
    fm = ForwardModel(model.window, model.sampling, model.energy)
    ref = fm(model.get_object(), model.get_probe(), model.positions, 7.0, torch.tensor([3.0, -2.0]),
             model.obj_weights)
    torch.testing.assert_close(model.simulate(), ref.detach(), rtol=1e-4, atol=1e-9)


def test_detector_blur_smooths_patterns_and_keeps_counts(ds):
    sharp = Ptychography.from_dataset(ds).simulate()
    blurred = Ptychography.from_dataset(ds, detector_blur=1.0).simulate()
    torch.testing.assert_close(blurred.sum((-2, -1)), sharp.sum((-2, -1)), rtol=1e-4, atol=1e-6)
    assert float(blurred.diff(dim=-1).square().sum()) < 0.8 * float(sharp.diff(dim=-1).square().sum())


def test_log_file_and_periodic_figures(ds, tmp_path):
    model = Ptychography.from_dataset(ds)
    list(model.Adam_optimize(2, ds, batch_size=25, progress=False, out_dir=tmp_path, figures_every=2))
    assert (tmp_path / "epoch_0002.png").exists() and not (tmp_path / "epoch_0001.png").exists()
    assert "epoch 2 loss" in (tmp_path / "reconstruct.log").read_text()


def test_learning_rate_changes_between_epochs_take_effect(ds):
    model = Ptychography.from_dataset(ds)
    gen = model.Adam_optimize(3, ds, batch_size=25, progress=False)
    next(gen)
    model.set_learning_rates(obj_phase=0.0, obj_amplitude=0.0)  # the caller changes rates between epochs
    phase, probe = model.obj_phase.detach().clone(), model.probe.detach().clone()
    next(gen)
    assert torch.equal(model.obj_phase.detach(), phase) and not torch.equal(model.probe.detach(), probe)
    model.set_learning_rates(obj_phase=1e-2)
    next(gen)
    assert not torch.equal(model.obj_phase.detach(), phase)
