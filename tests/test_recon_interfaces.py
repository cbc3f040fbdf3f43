"""What users of PtyRAD and CDTools expect (issue 16): ground-truth metrics in `phasestem reconstruct`, a TV
constraint, a seeded random start, a probe from a file, per-epoch thickness/tilt history, the system block of the
log, PtyRAD's normalised loss, and CDTools' `from_dataset(oversampling, probe_support_radius)`,
`save_results(dataset)` and `inspect(dataset)`."""
import pickle

import numpy as np
import pytest
import torch
import yaml

from phasestem.base.errors import InputFileError
from phasestem.detector import bin_pixels, detector_response
from phasestem.recon import Constraints, Ptychography, constraints
from phasestem.recon.losses import ptyrad_gaussian_loss
from phasestem.recon.params import build_dataset, build_model, load_params
from phasestem.recon.results import load_results
from phasestem.recon.synthetic import synthetic_scan, write_npz

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ds():
    return synthetic_scan(scan_shape=(5, 5), seed=11, max_phase=0.4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interfaces")
    write_npz(tmp / "tiny.npz", scan_shape=(6, 6), seed=21)
    cfg = yaml.safe_load((CONFIGS / "reconstruct_tiny.yaml").read_text())
    cfg["data"]["file"] = str(tmp / "tiny.npz")
    cfg["scan"]["shape"] = [6, 6]
    cfg["run"].update(out_dir=str(tmp / "out"), n_epochs=3, progress=False, check_optics=False)
    return tmp, cfg


def _write(tmp_path, cfg):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(capsys, *args):
    from phasestem.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- 1. ground truth ----------------------------------------------------------------------------
def test_reconstruct_reports_ground_truth_metrics_per_epoch_and_at_the_end(tiny, tmp_path, capsys):
    _, cfg = tiny
    cfg = yaml.safe_load(yaml.safe_dump(cfg))
    cfg["data"]["ground_truth_key"] = "phase"
    cfg.setdefault("run", {})["ptyrad_loss"] = True  # off by default (an extra forward pass per epoch)
    code, out, err = _cli(capsys, "reconstruct", _write(tmp_path, cfg), "--out", tmp_path / "run")
    assert code == 0, err
    assert "against the ground truth: PSNR" in out
    res = load_results(tmp_path / "run" / "results.h5")
    for k in ("psnr", "ssim", "phase_error", "frc_resolution", "loss_ptyrad"):
        assert len(res["loss"][k]) == 3 and np.isfinite(res["loss"][k]).all(), k
    for k in ("psnr", "ssim", "phase_error", "frc_resolution"):
        assert np.isfinite(res["metrics"][k]), k
    assert res["metrics"]["frc_curve"].shape == res["metrics"]["frc_frequencies"].shape
    assert 0 < res["metrics"]["phase_error"] < 1.5 and res["metrics"]["ssim"] <= 1
    text = (tmp_path / "run" / "reconstruct.log").read_text()
    assert "epoch 3 loss_ptyrad=" in text and "psnr=" in text and "final comparison with phase" in text


def test_missing_ground_truth_key_is_one_clear_line(tiny, tmp_path, capsys):
    _, cfg = tiny
    cfg = yaml.safe_load(yaml.safe_dump(cfg))
    cfg["data"]["ground_truth_key"] = "true_phase"
    code, out, err = _cli(capsys, "reconstruct", _write(tmp_path, cfg), "--out", tmp_path / "run")
    assert code == 1 and "Traceback" not in err
    line = err.strip()
    assert "\n" not in line and "data.ground_truth_key" in line and "'true_phase' not found" in line


# ---- 2. PtyRAD options ----------------------------------------------------------------------------
def test_tv_gradient_is_exact_and_the_constraint_lowers_total_variation(ds):
    x = torch.randn(1, 2, 12, 13, dtype=torch.float64, requires_grad=True)
    constraints.total_variation(x, 0.1).backward()
    step = constraints.tv_step(x.detach(), 1.0, 0.1) - x.detach()
    np.testing.assert_allclose(step.numpy(), -x.grad.numpy(), atol=1e-10)
    model = Ptychography.from_dataset(ds, n_slices=2)
    model.randomize_phase(0.3, seed=1)
    before = float(constraints.total_variation(model.obj_phase.detach()))
    c = Constraints(tv={"enabled": True, "weight": 0.02, "n_iter": 3, "start_iter": 2})
    assert constraints.apply_constraints(model, c, 1) == []
    amp = model.obj_amplitude.detach().clone()
    assert constraints.apply_constraints(model, c, 2) == ["tv"]
    assert float(constraints.total_variation(model.obj_phase.detach())) < 0.8 * before
    assert torch.equal(model.obj_amplitude.detach(), amp)  # obj_type phase by default


def test_random_initial_phase_is_seeded(ds, tiny, tmp_path):
    a = Ptychography.from_dataset(ds, random_phase=0.2, random_seed=3)
    b = Ptychography.from_dataset(ds, random_phase=0.2, random_seed=3)
    c = Ptychography.from_dataset(ds, random_phase=0.2, random_seed=4)
    assert torch.equal(a.obj_phase, b.obj_phase) and not torch.equal(a.obj_phase, c.obj_phase)
    assert 0.15 < float(a.obj_phase.detach().abs().max()) <= 0.2
    _, cfg = tiny
    cfg = yaml.safe_load(yaml.safe_dump(cfg))
    cfg["model"]["random_phase"] = {"scale": 0.2, "seed": 3}
    params = load_params(_write(tmp_path, cfg))
    m1, m2 = (build_model(params, build_dataset(params)) for _ in range(2))
    assert torch.equal(m1.obj_phase, m2.obj_phase) and float(m1.obj_phase.detach().abs().max()) > 0.1


def test_initial_probe_from_file_round_trip(ds, tiny, tmp_path):
    _, cfg = tiny
    params = load_params(_write(tmp_path, cfg))
    dataset = build_dataset(params)
    rng = np.random.default_rng(0)
    probe = (rng.normal(size=(2, 32, 32)) + 1j * rng.normal(size=(2, 32, 32))).astype(np.complex64)
    probe /= np.sqrt((np.abs(probe) ** 2).sum())
    np.savez(tmp_path / "probe.npz", probe=probe)
    cfg = yaml.safe_load(yaml.safe_dump(cfg))
    cfg["model"]["initial_probe"] = {"file": "probe.npz", "key": "probe"}  # relative to the YAML file
    cfg["model"]["n_probe_modes"] = 2
    model = build_model(load_params(_write(tmp_path, cfg)), dataset)
    np.testing.assert_allclose(model.get_probe().detach().numpy(), probe, atol=1e-6)
    model.save_results(tmp_path / "res.h5")  # a results file is a probe file too (probe/real_space)
    cfg["model"]["initial_probe"] = {"file": str(tmp_path / "res.h5")}
    again = build_model(load_params(_write(tmp_path, cfg)), dataset)
    np.testing.assert_allclose(again.get_probe().detach().numpy(), probe, atol=1e-6)
    cfg["model"]["initial_probe"] = {"file": "probe.npz", "key": "nope"}
    with pytest.raises(InputFileError, match=r"model\.initial_probe: .*'nope' not found"):
        build_model(load_params(_write(tmp_path, cfg)), dataset)


def test_thickness_and_tilt_history_one_row_per_epoch(ds, tmp_path):
    model = Ptychography.from_dataset(ds, n_slices=2, slice_thickness=8.0)
    model.set_learning_rates(slice_thickness=0.5, tilt=0.5)
    list(model.Adam_optimize(3, ds, batch_size=25, progress=False, checkpoint_path=tmp_path / "c.pt",
                             checkpoint_every=1))
    r = load_results(model.save_results(tmp_path / "res.h5"))
    h = r["history"]
    assert list(h["epoch"]) == [1, 2, 3] and h["slice_thickness"].shape == (3,) and h["tilt"].shape == (3, 2)
    assert h["slice_thickness"][-1] == pytest.approx(float(model.slice_thickness.detach()))
    assert len(set(np.round(h["slice_thickness"], 6))) > 1  # thickness was optimised: the rows differ
    resumed = Ptychography.from_dataset(ds, n_slices=2, slice_thickness=8.0)
    resumed.set_learning_rates(slice_thickness=0.5, tilt=0.5)
    list(resumed.Adam_optimize(1, ds, batch_size=25, progress=False, checkpoint_path=tmp_path / "c.pt",
                               resume=True))
    assert list(resumed.geometry_arrays()["epoch"]) == [1, 2, 3, 4]


def test_run_log_starts_with_system_information(tiny, tmp_path, capsys):
    import phasestem

    _, cfg = tiny
    cfg = yaml.safe_load(yaml.safe_dump(cfg))
    cfg["run"]["n_epochs"] = 1
    code, _, err = _cli(capsys, "reconstruct", _write(tmp_path, cfg), "--out", tmp_path / "run")
    assert code == 0, err
    lines = (tmp_path / "run" / "reconstruct.log").read_text().splitlines()
    assert "system information:" in lines[0]
    head = "\n".join(lines[:12])
    for word in ("phasestem:", phasestem.__version__, "torch:", torch.__version__, "python:", "device:",
                 "torch threads:", "hostname:"):
        assert word in head, word


def test_ptyrad_normalised_loss_matches_the_formula(ds):
    rng = np.random.default_rng(1)
    i_model = rng.random((3, 8, 8)) * 2
    i_meas = rng.random((3, 8, 8)) * 2
    for p in (0.5, 1.0):
        hand = np.sqrt(np.mean((i_model**p - i_meas**p) ** 2)) / np.mean(i_meas**p)
        got = float(ptyrad_gaussian_loss(torch.as_tensor(i_model), torch.as_tensor(i_meas), p))
        assert got == pytest.approx(hand, rel=1e-12)
    from phasestem.recon.engine import prepared_data
    from phasestem.recon.report import dataset_ptyrad_loss

    model = Ptychography.from_dataset(ds)
    data = prepared_data(model, ds, 0.5)
    with torch.no_grad():
        whole = float(ptyrad_gaussian_loss(model(torch.arange(data.n)), data.meas, 0.5))
    assert dataset_ptyrad_loss(model, ds, 0.5, batch_size=7) == pytest.approx(whole, rel=1e-5)


# ---- 3. CDTools interface ----------------------------------------------------------------------------
def test_cdtools_tutorial_calls(ds, tmp_path):
    import matplotlib.pyplot as plt

    dataset = ds
    model = Ptychography.from_dataset(dataset, oversampling=2, probe_support_radius=90)
    assert model.window == (64, 64) and model.simulate([0]).shape == (1, 32, 32)
    model.translation_offsets.requires_grad = False
    n_before = len(plt.get_fignums())
    losses = []
    for i, loss in enumerate(model.Adam_optimize(3, dataset)):
        model.inspect(dataset)
        print(i, loss)
        losses.append(loss)
    assert len(plt.get_fignums()) == n_before + 1  # one figure, redrawn every epoch
    assert losses[-1] < losses[0]
    assert torch.equal(model.positions.detach(), model.initial_positions)  # translation_offsets frozen
    plt.close(model.compare())
    with open(tmp_path / "lab_ptycho.pickle", "wb") as f:
        pickle.dump(model.save_results(dataset), f)
    with open(tmp_path / "lab_ptycho.pickle", "rb") as f:
        res = pickle.load(f)
    assert res["obj_phase"].shape == (1, 1, *model.object_shape) and res["probe"].shape == (1, 64, 64)
    assert len(res["loss"]["loss"]) == 3 and isinstance(res["obj_phase"], np.ndarray)
    assert (tmp_path / "r.h5") == model.save_results(tmp_path / "r.h5")  # a path still writes HDF5
    plt.close("all")


def test_oversampling_bins_onto_the_detector_and_support_limits_the_probe(ds):
    fine = torch.rand(2, 12, 10, dtype=torch.float64)
    for f in (2, 3):
        big = torch.rand(2, 12 * f, 10 * f, dtype=torch.float64)
        out = detector_response(big, f)  # fftfreq order in and out, binned as the detector bins centred frames
        assert out.shape == (2, 12, 10)
        centred = torch.fft.fftshift(big, dim=(-2, -1))
        torch.testing.assert_close(torch.fft.fftshift(out, dim=(-2, -1)), bin_pixels(centred, f))
    torch.testing.assert_close(detector_response(torch.ones(1, 8, 8), 2), torch.full((1, 4, 4), 4.0))
    assert detector_response(fine, 1) is fine
    model = Ptychography.from_dataset(ds, oversampling=2, probe_support_radius=10)
    p = model.get_probe().detach()
    yy, xx = np.mgrid[:64, :64]
    outside = (yy - 32) ** 2 + (xx - 32) ** 2 > 100
    assert float(p.abs()[0][torch.as_tensor(outside)].max()) == 0
    assert float(p.abs().square().sum()) == pytest.approx(1.0, rel=1e-5)
    plain = Ptychography.from_dataset(ds)
    sim2, sim1 = model.simulate([12]), plain.simulate([12])
    assert sim2.shape == sim1.shape and float(sim2.sum()) == pytest.approx(float(sim1.sum()), rel=0.05)


def test_object_preblur_blurs_what_the_forward_model_sees_not_the_object():
    """PtyRAD's obj_preblur_std: the forward model sees a laterally blurred object; the stored one stays sharp."""
    from phasestem.dataset import FourDSTEM

    rng = np.random.default_rng(0)
    ds = FourDSTEM(rng.random((3, 3, 24, 24)).astype(np.float32), energy=300e3, scan_step=(1.0, 1.0),
                   angular_sampling=(2.0, 2.0), semiangle=8.0)
    model = Ptychography.from_dataset(ds, obj_preblur=1.5)
    with torch.no_grad():
        model.obj_phase.copy_(torch.as_tensor(rng.normal(0, 0.3, model.obj_phase.shape), dtype=torch.float32))
    sharp = model.obj_phase.detach().clone()
    with torch.no_grad():
        seen = model.blurred_object(1.5).phase
    tv = lambda x: float((x[..., 1:, :] - x[..., :-1, :]).abs().mean())  # noqa: E731
    assert tv(seen) < 0.5 * tv(sharp)
    assert abs(float(seen.mean()) - float(sharp.mean())) < 1e-3  # the blur keeps the mean
    idx = torch.arange(9)
    blurred = model(idx)
    model.obj_preblur = 0.0
    plain = model(idx)
    assert not torch.allclose(blurred, plain)
    model.obj_preblur = 1.5
    model(idx).sum().backward()
    assert model.obj_phase.grad is not None and torch.equal(model.obj_phase.detach(), sharp)


def test_model_options_are_one_object_that_the_keywords_and_the_yaml_section_fill_alike(ds, tmp_path):
    from types import SimpleNamespace

    from phasestem.base.errors import ConfigError
    from phasestem.recon.settings.model import ModelConfig, ModelOptions

    kw = {"n_slices": 2, "slice_thickness": 5.0, "n_probe_modes": 2, "obj_preblur": 0.5, "object_padding": 3,
          "learning_rates": {"probe": 0.0}}
    by_keywords = Ptychography.from_dataset(ds, **kw)
    options = ModelOptions().replaced(**kw)
    assert options.n_probe_modes == 2 and options.object_padding == 3
    by_options = Ptychography.from_dataset(ds, options)
    for k, v in by_keywords.state_dict().items():
        torch.testing.assert_close(by_options.state_dict()[k], v)
    assert by_options.schedules["probe"].lr == 0.0 and by_options.obj_preblur == 0.5
    # keywords replace the fields of the options they are given with; an unknown one is a TypeError naming it, a
    # value the section would refuse is refused alike
    assert Ptychography.from_dataset(ds, options, n_slices=3).n_slices == 3
    with pytest.raises(TypeError, match="'n_slice'"):
        Ptychography.from_dataset(ds, n_slice=2)
    with pytest.raises(ConfigError, match="n_probe_modes"):
        Ptychography.from_dataset(ds, n_probe_modes=0)
    # the parameter file's section passes whole, each setting declared once (the section's field is the option's);
    # a program's default pixel is the detector's, the section's the one the optics choose
    section = ModelConfig(n_slices=2, antialias=True, learning_rates={"probe": {"lr": 0.5, "start": 3}})
    built = ModelOptions.from_config(section, SimpleNamespace(aperture_edge="hard"))
    assert built.n_slices == 2 and built.antialias and built.aperture_edge == "hard" and built.upsampling == "auto"
    assert ModelOptions().upsampling == 1 and ModelOptions.model_fields["n_slices"] is not None
    model = Ptychography.from_dataset(ds, built.replaced(upsampling=1))
    assert (model.schedules["probe"].lr, model.schedules["probe"].start) == (0.5, 3)
