"""Physical-range validation of reconstruct's numeric input files, field names in errors, ground truth at its own
pixel, undetermined calibrations and warnings that do not leak (issue 24, items 4, 5, 8, 9, 10). Tiny data."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from phasestem.base.errors import PhasestemError
from phasestem.recon.params import build_dataset, build_model, load_params
from phasestem.recon.synthetic import synthetic_scan, write_npz

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
FIELDS = ("data.detector_shifts", "scan.positions_file", "model.initial_phase", "model.initial_probe", "optics")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny example config on a freshly simulated 6 × 6 scan of 32 × 32 patterns (0.4 Å pixels)."""
    tmp = tmp_path_factory.mktemp("validation")
    write_npz(tmp / "tiny.npz", scan_shape=(6, 6), seed=21)
    cfg = yaml.safe_load((CONFIGS / "reconstruct_tiny.yaml").read_text())
    cfg.pop("tune")
    cfg["data"]["file"] = str(tmp / "tiny.npz")
    cfg["scan"]["shape"] = [6, 6]
    cfg["run"].update(out_dir=str(tmp / "out"), n_epochs=2, progress=False, check_optics=False)
    return cfg


def _params(tmp_path, cfg, arrays: dict | None = None):
    for name, value in (arrays or {}).items():
        if isinstance(value, bytes):
            (tmp_path / name).write_bytes(value)
        else:
            np.save(tmp_path / name, value)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_params(path)


def _refusal(tmp_path, cfg, arrays) -> str:
    params = _params(tmp_path, cfg, arrays)
    with pytest.raises(PhasestemError) as info:
        build_model(params, build_dataset(params))
    return str(info.value)


def _cli(capsys, *args):
    from phasestem.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _with(cfg, section: str, key: str, value):
    new = yaml.safe_load(yaml.safe_dump(cfg))
    new[section][key] = value
    return new


POSITIONS = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0), indexing="ij"), -1).reshape(-1, 2)

SHIFT_CASES = {  # file contents → what the one line must say
    "1e30 px": (np.full((36, 2), 1e30), "off the 32 × 32 px detector"),
    "17 px": (np.full((36, 2), 17.0), "off the 32 × 32 px detector"),
    "complex": (np.zeros((36, 2), complex), "complex values"),
    "strings": (np.array([["a", "b"]] * 36), "dtype <U1"),
    "bool": (np.zeros((36, 2), bool), "dtype bool"),
    "empty file": (b"", "not a readable .npy file"),
    "empty array": (np.zeros((0, 2)), "empty array"),
    "NaN": (np.full((36, 2), np.nan), "NaN or Inf"),
    "transposed scan": (np.zeros((4, 9, 2)), "4 × 9 shifts for a 6 × 6 scan"),
}


@pytest.mark.parametrize("case", list(SHIFT_CASES))
def test_detector_shifts_are_range_checked_naming_field_and_file(tiny, tmp_path, case):
    """Item 4: 1e30 px was accepted (exit 0, final loss 0.96 instead of 1.5e-3); complex shifts were cast with a
    ComplexWarning, strings/empty files were TypeError/EOFError tracebacks, a (4, 9, 2) file for a 6 × 6 scan
    was silently reordered. Each is one line naming data.detector_shifts and the file."""
    content, expected = SHIFT_CASES[case]
    message = _refusal(tmp_path, _with(tiny, "data", "detector_shifts", "s.npy"), {"s.npy": content})
    assert message.startswith("data.detector_shifts: ") and "s.npy" in message and expected in message, message
    assert "\n" not in message


def test_detector_shifts_within_the_detector_are_accepted(tiny, tmp_path):
    shifts = np.full((6, 6, 2), 15.5)
    shifts[..., 1] = -16.0  # half the detector is the limit
    params = _params(tmp_path, _with(tiny, "data", "detector_shifts", "s.npy"), {"s.npy": shifts})
    model = build_model(params, build_dataset(params))
    np.testing.assert_allclose(model.detector_shifts.numpy(), shifts.reshape(-1, 2))


def test_huge_detector_shifts_through_the_cli_are_one_line(tiny, tmp_path, capsys):
    params = _with(tiny, "data", "detector_shifts", "s.npy")
    np.save(tmp_path / "s.npy", np.full((36, 2), 1e30))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    code, out, err = _cli(capsys, "reconstruct", tmp_path / "p.yaml", "--out", tmp_path / "run")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "data.detector_shifts: " in lines[0] and "off the" in lines[0], err
    assert not (tmp_path / "run" / "results.h5").exists()


POSITION_CASES = {
    "1e30 Å": (POSITIONS * 1e30, "the positions span 5e+30 × 5e+30 Å"),
    "NaN": (POSITIONS * np.nan, "NaN or Inf"),
    "complex": (POSITIONS.astype(complex), "complex values"),
    "three columns": (np.zeros((24, 3)), "must be (N, 2) or (Sy, Sx, 2)"),
    "too few": (POSITIONS[:30], "30 positions for 36 patterns"),
    "strings": (np.array([["a", "b"]] * 36), "dtype <U1"),
    "empty file": (b"", "not a readable .npy file"),
}


@pytest.mark.parametrize("case", list(POSITION_CASES))
def test_scan_positions_file_is_range_checked_naming_field_and_file(tiny, tmp_path, case):
    """Item 4: NaN positions were 'optics: cannot convert float NaN to integer', 1e30 Å named scan.step, (24, 3)
    positions were silently reshaped to 36 × 2, complex ones cast with a warning, an empty file an EOFError."""
    content, expected = POSITION_CASES[case]
    message = _refusal(tmp_path, _with(tiny, "scan", "positions_file", "p.npy"), {"p.npy": content})
    assert message.startswith("scan.positions_file: ") and "p.npy" in message and expected in message, message
    assert "optics" not in message and "scan.step" not in message


PHASE_CASES = {
    "complex": ({}, np.zeros((30, 30), complex), "complex values"),
    "NaN": ({}, np.full((30, 30), np.nan), "NaN or Inf"),
    "1e30 rad": ({}, np.full((30, 30), 1e30), "phase values up to 1e+30 rad"),
    "strings": ({}, np.array([["a"] * 3] * 3), "dtype <U1"),
    "3-D": ({}, np.zeros((2, 30, 30)), "2-D image"),
    "empty array": ({}, np.zeros((0, 5)), "empty array"),
    "empty file": ({}, b"", "not a readable .npy file"),
    "one pixel": ({}, np.zeros((1, 1)), "less than 2 × 2 object pixels"),
    "sampling 1e-9 Å": ({"sampling": 1e-9}, np.zeros((30, 30)), "less than 2 × 2 object pixels"),
    "outside the scan": ({}, np.zeros((30, 30)), "do not overlap"),
}


@pytest.mark.parametrize("case", list(PHASE_CASES))
def test_initial_phase_is_range_checked_naming_field_and_file(tiny, tmp_path, case):
    """Item 4 and 8: a string image was 'optics: could not convert string to float', a complex one a
    ComplexWarning traceback, NaN or 1e30 rad stopped the run after its first epoch, a 1 × 1 or 0 × 5 image or one
    at 1e-9 Å/px ran as if it were a start."""
    extra, content, expected = PHASE_CASES[case]
    cfg = _with(tiny, "model", "initial_phase", {"file": "i.npy", **extra})
    if case == "outside the scan":
        cfg["scan"]["origin"] = [20.0, 20.0]  # the image spans 0–12 Å, the scan 20–25 Å
    message = _refusal(tmp_path, cfg, {"i.npy": content})
    assert message.startswith("model.initial_phase: ") and "i.npy" in message and expected in message, message
    assert "optics" not in message


PROBE_CASES = {
    "window": (np.ones((16, 16), complex), "probe window (16, 16) must equal the pattern shape (32, 32)"),
    "NaN": (np.full((32, 32), np.nan, complex), "NaN or Inf"),
    "zero": (np.zeros((32, 32), complex), "total intensity Σ|ψ|² is 0"),
    "1e30": (np.full((32, 32), 1e30, complex), "total intensity Σ|ψ|² is 1.02e+63"),
    "strings": (np.array([["a"] * 32] * 32), "dtype <U1"),
    "empty file": (b"", "not a readable .npy file"),
}


@pytest.mark.parametrize("case", list(PROBE_CASES))
def test_initial_probe_is_range_checked_naming_field_and_file(tiny, tmp_path, case):
    """Item 4 and 8: the window mismatch named no field, NaN/zero probes stopped after an epoch, a 1e30 probe
    overflowed (RuntimeWarning traceback under -W error), strings were 'complex() arg is a malformed string'."""
    content, expected = PROBE_CASES[case]
    message = _refusal(tmp_path, _with(tiny, "model", "initial_probe", {"file": "q.npy"}), {"q.npy": content})
    assert message.startswith("model.initial_probe: ") and "q.npy" in message and expected in message, message


def test_each_error_names_its_own_field(tiny, tmp_path):
    """Item 8: a detector-shift error was prefixed 'model.initial_phase:' (its file was read inside the phase's
    try block) and an initial-phase error 'optics:'. With all three files given and one bad, the message names
    the bad one's field and no other."""
    good = {"s.npy": np.zeros((36, 2)), "i.npy": np.zeros((30, 30)), "q.npy": np.ones((32, 32), complex)}
    cfg = _with(tiny, "data", "detector_shifts", "s.npy")
    cfg["model"].update(initial_phase={"file": "i.npy"}, initial_probe={"file": "q.npy"})
    params = _params(tmp_path, cfg, good)
    build_model(params, build_dataset(params))  # all good
    for name, bad, field in (("s.npy", b"", "data.detector_shifts"), ("s.npy", np.zeros((36, 2), complex),
                             "data.detector_shifts"), ("i.npy", np.array([["x"]]), "model.initial_phase"),
                             ("q.npy", np.zeros((8, 8)), "model.initial_probe")):
        message = _refusal(tmp_path, cfg, {**good, name: bad})
        assert message.startswith(f"{field}: "), message
        assert not any(f in message for f in FIELDS if f != field), message


def test_initial_phase_before_the_object_frame_is_placed_not_wrapped(tiny, tmp_path):
    """With scan.origin far from 0 Å the dataset's 0 Å lies before the object frame (negative origin): the image
    used to be written at negative indices (wrapped to the far side). Now it lands where its pixels belong."""
    y, x = np.arange(60.0), np.arange(60.0)
    image = np.add.outer(y**2, x**2 * 0.5) * 1e-5  # 60 × 60 px of 0.4 Å from 0 Å: a bowl (a shifted ramp is a ramp)
    cfg = _with(tiny, "model", "initial_phase", {"file": "i.npy"})
    cfg["scan"]["origin"] = [12.0, 12.0]  # the scan covers 12–17 Å; the object frame starts about 5.6 Å
    params = _params(tmp_path, cfg, {"i.npy": image})
    model = build_model(params, build_dataset(params))
    phase = model.phase_in_dataset_frame(image.shape)
    rows, cols = slice(30, 43), slice(30, 43)  # 12–17 Å: the scanned field
    offset = phase[rows, cols] - image[rows, cols]  # the start is raised to a lowest value of 0: a constant
    assert np.ptp(offset) < 1e-6 and phase[rows, cols].min() >= 0, (np.ptp(offset), phase[rows, cols].min())


# ---- item 9: a ground truth at another pixel size ------------------------------------------------------------
@pytest.fixture(scope="module")
def fine_truth(tmp_path_factory):
    """A phasestem seed-000 file (root attribute phase_sampling 0.2 Å) of an 8 × 8 scan of 64 × 64 patterns at
    0.2 Å; with data.crop [32, 32] the reconstruction's pixel is 0.4 Å. Also the truth averaged over 2 × 2 pixels
    (0.4 Å, independent of the resampler under test) as an .npy for the start."""
    import h5py

    from phasestem.io import seed

    tmp = tmp_path_factory.mktemp("truth")
    ds = synthetic_scan(window=(64, 64), sampling=0.2, scan_shape=(8, 8), scan_step=1.0, seed=21, c10=50.0)
    phase = np.asarray(ds.truth["phase"], np.float64)[:72, :72]
    with h5py.File(tmp / "seed1.h5", "w") as f:
        f.attrs.update(format=seed.FORMAT, phase_convention=seed.PHASE_CONVENTION, energy=ds.energy,
                       semiangle=ds.semiangle, aberrations='{"C10": 50.0}', scan_step=ds.scan_step,
                       scan_origin=(0.0, 0.0), angular_sampling=ds.angular_sampling, phase_sampling=(0.2, 0.2))
        f[seed.patterns_key(0)] = np.asarray(ds.patterns, np.float32)
        f[seed.phase_key(0)] = phase.astype(np.float32)
    coarse = phase.reshape(36, 2, 36, 2).mean((1, 3))
    np.save(tmp / "coarse.npy", coarse)
    cfg = yaml.safe_load((CONFIGS / "reconstruct_tiny.yaml").read_text())
    cfg.pop("tune")
    cfg["optics"].pop("sampling")  # the file's angular sampling
    cfg["data"] = {"file": str(tmp / "seed1.h5"), "crop": [32, 32], "ground_truth_key": seed.phase_key(0)}
    cfg["scan"]["shape"] = [8, 8]
    # a "reconstruction" equal to the truth: the start is the 0.4 Å truth and nothing is optimised
    cfg["model"] = {"initial_phase": {"file": str(tmp / "coarse.npy")},
                    "learning_rates": {"obj_phase": 0.0, "obj_amplitude": 1e-6, "probe": 0.0}}
    cfg["run"].update(n_epochs=1, progress=False, check_optics=False, checkpoint_every=0)
    return tmp, cfg


def test_ground_truth_at_another_pixel_is_resampled_with_a_log_line(fine_truth, tmp_path, capsys):
    """Item 9: a truth stored at 0.2 Å was compared with a 0.4 Å reconstruction as if it were at 0.4 Å (on main:
    PSNR, SSIM and E_φ NaN, the alignment shift being out of range, and an FRC resolution of 1.8 Å for a
    reconstruction equal to the truth). Now it is resampled to 0.4 Å, said in the log, and a reconstruction equal
    to the truth scores as one."""
    _, cfg = fine_truth
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, out, err = _cli(capsys, "reconstruct", path, "--out", tmp_path / "run")
    assert code == 0, err
    from phasestem.recon.results import load_results

    metrics = load_results(tmp_path / "run" / "results.h5")["metrics"]
    assert metrics["ssim"] > 0.95 and metrics["phase_error"] < 0.1, metrics
    log = (tmp_path / "run" / "reconstruct.log").read_text()
    assert "stored at 0.2 × 0.2 Å/px, resampled to the reconstruction's 0.4 × 0.4 Å/px (72 × 72 → 36 × 36 px)" in log


def test_ground_truth_without_pixel_size_that_misses_the_field_is_one_line(fine_truth, tmp_path, capsys):
    """Item 9: a truth with no pixel size stored is taken at the reconstruction's pixel; when it then does
    not cover the scanned field (here 12 × 12 px for a field reaching 19 × 19 px) the run is refused in one line
    (on main: exit 0 with NaN metrics)."""
    tmp, cfg = fine_truth
    cfg = yaml.safe_load(yaml.safe_dump(cfg))
    cfg["data"]["file"] = str(tmp_path / "data.h5")
    import h5py

    with h5py.File(tmp / "seed1.h5", "r") as f, h5py.File(tmp_path / "data.h5", "w") as g:
        g.attrs.update({k: f.attrs[k] for k in ("energy", "angular_sampling", "semiangle", "scan_step")})
        g["patterns"] = f["dp_set_0"][...]
        g["phase"] = np.zeros((12, 12), np.float32)  # no 'sampling' attribute
    cfg["data"].update(patterns_key="patterns", ground_truth_key="phase")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, out, err = _cli(capsys, "reconstruct", path, "--out", tmp_path / "run")
    lines = [line for line in err.strip().splitlines() if "INFO" not in line]
    assert code == 1 and len(lines) == 1, err
    assert "data.ground_truth_key: " in lines[0] and "no pixel size stored" in lines[0]
    assert "scanned field reaches 19 × 19 px" in lines[0], lines[0]


def test_truth_pixel_size_is_read_from_the_file(tmp_path):
    """phasestem's own HDF5 (truth/phase in a group with 'sampling'), a dataset's own 'sampling' attribute, a seed
    file's phase_sampling, the original generator's 100 Å cell; .npz holds none."""
    import h5py

    from phasestem.io.hdf5 import write
    from phasestem.recon.report import truth_sampling

    ds = synthetic_scan(window=(32, 32), sampling=0.4, scan_shape=(2, 2), seed=1)
    write(tmp_path / "own.h5", ds._replace(truth={"phase": ds.truth["phase"], "sampling": (0.25, 0.3)}))
    assert truth_sampling(tmp_path / "own.h5", "truth/phase") == (0.25, 0.3)
    with h5py.File(tmp_path / "any.h5", "w") as f:
        f["p"] = np.zeros((4, 4))
        f["p"].attrs["sampling"] = 0.5
        f["dp_set_3"] = np.zeros((1, 1, 4, 4))
        f["phase_3"] = np.zeros((256, 256))
    assert truth_sampling(tmp_path / "any.h5", "p") == (0.5, 0.5)
    assert truth_sampling(tmp_path / "any.h5", "phase_3") == (100 / 256, 100 / 256)
    np.savez(tmp_path / "a.npz", phase=np.zeros((4, 4)))
    assert truth_sampling(tmp_path / "a.npz", "phase") is None


# ---- item 5: calibrate on data that do not determine a quantity ---------------------------------------------------
@pytest.fixture(scope="module")
def clean_scan():
    """A 16 × 16 scan (0.4 Å step, rotated 30°, C10 60 Å) of a random 'atoms' object made by phasestem's forward
    model: 48 × 48 patterns of 0.3 Å real-space pixels (disk radius 14.5 px at 20 mrad), intensities summing to 1."""
    import torch

    from phasestem.physics import optics
    from phasestem.physics.operator import ForwardModel, transmission_function
    from phasestem.physics.specimen import synthetic_phase

    rng = np.random.default_rng(1)
    window, sampling, n, step = 48, 0.3, 16, 0.4
    size = int(n * step * 1.5 / sampling) + window + 8
    obj = transmission_function(torch.as_tensor(synthetic_phase((size, size), rng, "atoms", 0.5)[None]
                                                 .astype(np.float32)))
    probe = optics.make_probe((window, window), (sampling, sampling), 300e3, 20.0, {"C10": 60.0})
    grid = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2) * step
    th = np.radians(30.0)
    pos = grid @ np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]).T
    pos = pos - pos.min(0) + (window // 2 + 4) * sampling
    with torch.no_grad():
        p = ForwardModel((window, window), (sampling, sampling), 300e3)(
            obj[None], probe, torch.as_tensor(pos, dtype=torch.float32), 1.0, torch.zeros(2)).numpy()
    return p.reshape(n, n, window, window)


def _counts(clean, dose, seed=0):
    return np.random.default_rng(seed).poisson(clean * dose).astype(np.float32)


def _calibrate(patterns, **kw):
    from phasestem.calibrate import calibrate
    from phasestem.dataset import FourDSTEM

    return calibrate(FourDSTEM(patterns, 300e3, (0.4, 0.4)), semiangle=20.0, **kw)


@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 16), (16, 1), (3, 16), (7, 7)])
def test_calibrate_says_when_the_scan_is_too_small_for_a_rotation(clean_scan, rows, cols):
    """Item 5: a 1 × 1 scan reported 'rotation 0.00° (centre of mass)', one row 358.73°, as if fitted. Below 8 × 8
    positions the rotation, transpose and defocus are undetermined, left at their defaults and said so."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # item 10: one row gave 'Mean of empty slice'
        cal = _calibrate(_counts(clean_scan[:rows, :cols], 2e4))
    assert set(cal.undetermined) == {"rotation", "transpose", "C10"}, cal.undetermined
    assert cal.rotation == 0.0 and cal.transpose is False and "C10" not in cal.aberrations
    assert f"rotation undetermined (a {rows} × {cols} scan" in cal.summary()
    assert any("rotation and transpose undetermined by the data" in n for n in cal.notes)
    assert cal.to_dict()["rotation_deg"] is None
    assert abs(cal.disk.radius - 14.5) < 0.5  # the disk is determined by one pattern


def test_calibrate_rotation_of_a_full_scan_is_determined_with_its_spread(clean_scan):
    cal = _calibrate(_counts(clean_scan, 2e4), parallax=False)
    assert cal.undetermined == {} and cal.rotation_source == "centre of mass"
    assert abs((cal.rotation - 30.0 + 180) % 360 - 180) < 5.0, cal.summary()
    assert cal.com.spread is not None and cal.com.spread < 15.0
    assert f"± {cal.com.spread:.1f}° (centre of mass)" in cal.summary()


def test_calibrate_with_too_few_counts_per_pattern_says_so(clean_scan):
    """Item 5: at 200 e⁻/pattern (0.3 counts per disk pixel) the per-pattern thresholds gave a disk radius of
    7.4 px (true 14.5 px: the angular sampling 2× too coarse) and a CoM rotation 180° off, printed as fitted. Now
    the radius comes from the mean pattern and the rotation is undetermined (the halves of the scan disagree)."""
    cal = _calibrate(_counts(clean_scan, 200))
    assert abs(cal.disk.radius - 14.5) < 0.5, cal.disk.radius
    assert any("counts per disk pixel" in n for n in cal.notes)
    assert "rotation" in cal.undetermined and "halves of the scan" in cal.undetermined["rotation"]
    assert cal.rotation == 0.0


def test_calibrate_cli_on_one_pattern_writes_defaults_and_says_so(clean_scan, tmp_path, capsys):
    np.save(tmp_path / "one.npy", _counts(clean_scan[:1, :1], 2e4))
    code, out, err = _cli(capsys, "calibrate", tmp_path / "one.npy", "--energy", "300e3", "--semiangle", "20",
                          "--scan-step", "0.4", "--out", tmp_path / "calib")
    assert code == 0, err
    assert "rotation undetermined (a 1 × 1 scan" in out and "rotation 0.00°" not in out
    text = (tmp_path / "calib" / "params.yaml").read_text()
    assert "# note: rotation and transpose undetermined by the data" in text
    params = yaml.safe_load(text)
    assert params["scan"]["rotation"] == 0.0 and params["data"]["transpose"] is False
    assert "C10" not in params["optics"]["aberrations"]
    import json

    record = json.loads((tmp_path / "calib" / "calibration.json").read_text())
    assert record["rotation_deg"] is None and set(record["undetermined"]) == {"rotation", "transpose", "C10"}


# ---- item 7 (part): absurd network sizes --------------------------------------------------------------------------
@pytest.mark.parametrize("network, setting, field", [
    ("autoencoder", "model.latent_dim=1000000000", "model.latent_dim = 1000000000"),
    ("autoencoder", "model.channels=200000", "model.channels = 200000"),
    ("phaseformer", "model.dim=50000", "model.dim = 50000"),
])
def test_a_network_too_large_for_memory_is_one_line_naming_the_field(tmp_path, capsys, network, setting, field):
    """Item 7: autoencoder latent_dim 1e9 gave the allocator's RuntimeError traceback (64 GB for one Linear
    layer). The parameters are now counted on the meta device before anything is allocated."""
    from phasestem.learn.data import write_synthetic_file

    sim = write_synthetic_file(tmp_path / "sim.h5", 1, extent=16.0, phase_px=32, scan=4, window=32)
    config = CONFIGS / f"train_{network}_tiny.yaml"
    files = "data.train" if network == "phaseformer" else "data.files"
    code, out, err = _cli(capsys, "train", network, config, "--set", setting, "--set", f"{files}=[{sim}]",
                          "--set", f"out_dir={tmp_path / 'run'}")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "parameters" in lines[0] and field in lines[0] and "GB is available" in lines[0], lines[0]


def test_a_model_file_describing_a_huge_network_is_one_line(tmp_path):
    """The same through a saved model's metadata (a foreign file must not make phasestem allocate 64 GB)."""
    from phasestem.base.errors import ConfigError
    from phasestem.learn.registry import load_model
    from phasestem.learn.trainer import save_weights
    from phasestem.learn.training.autoencoder import build_autoencoder

    cfg = {"latent_dim": 4, "channels": 4, "decoder_blocks": 1}
    save_weights(build_autoencoder(cfg).state_dict(), tmp_path / "ae.safetensors",
                 {"network": "autoencoder", "model": {**cfg, "latent_dim": 10**9}})
    with pytest.raises(ConfigError, match=r"ae.safetensors: the autoencoder network would have .* parameters.*"
                                          r"model.config.latent_dim = 1000000000"):
        load_model(tmp_path / "ae.safetensors")


# ---- item 10 (part): warnings that leaked to the user ---------------------------------------------------------------
def test_calibrate_of_counts_near_the_float32_limit_does_not_overflow(clean_scan):
    """The parallax sharpness squared count-weighted spectra: 'overflow encountered in square' (a RuntimeWarning
    traceback under -W error) for counts of ~1e37; its weights are relative now."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cal = _calibrate(_counts(clean_scan, 2e4) * np.float32(1e33))
    assert "rotation" not in cal.undetermined and abs((cal.rotation - 30.0 + 180) % 360 - 180) < 5.0


def test_patterns_of_a_read_only_memory_map_give_no_warning(tmp_path):
    """reconstruct of a float32 .npy (read as a read-only memory map) printed torch's 'The given NumPy array is not
    writable' UserWarning; get_patterns copies such an array once instead."""
    import warnings

    from phasestem import io

    np.save(tmp_path / "d.npy", np.ones((2, 3, 8, 8), np.float32))
    ds = io.load(tmp_path / "d.npy", energy=3e5, scan_step=1.0, angular_sampling=1.0)
    assert not np.asarray(ds.patterns).flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = ds.get_patterns()
    assert p.shape == (6, 8, 8) and float(p.sum()) == 6 * 64


def test_a_warning_during_a_command_is_one_log_line(caplog, capsys):
    """Python's warnings print two lines (file:line and the source line) on stderr; inside a command they are one
    log line naming the warning class, its message and where it was raised."""
    import warnings

    from phasestem.cli.main import log_warning

    with warnings.catch_warnings():
        warnings.showwarning = log_warning
        warnings.simplefilter("always")
        warnings.warn("Mean of empty slice", RuntimeWarning, stacklevel=1)
    records = [r for r in caplog.records if r.name == "phasestem"]
    assert len(records) == 1 and records[0].levelname == "WARNING"
    assert records[0].getMessage() == ("RuntimeWarning: Mean of empty slice "
                                       "(test_reliability_validation.py:" + str(records[0].args[3]) + ")")
    assert capsys.readouterr().err == ""
