"""Readers for CXI (and writer), MATLAB .mat v5/v7.3, py4DSTEM/EMD and raw dumps (tiny files)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io

from phasestem import io
from phasestem.base.errors import ConfigError, InputFileError, ShapeError
from phasestem.dataset import FourDSTEM
from phasestem.io import _common, cxi

SY, SX, H, W = 3, 4, 8, 6


@pytest.fixture
def cube() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((SY, SX, H, W)).astype(np.float32)


def _dataset(cube) -> FourDSTEM:
    return FourDSTEM(patterns=cube, energy=300e3, scan_step=(0.5, 0.7), angular_sampling=(1.5, 1.25),
                     semiangle=20.0, aberrations={"C10": 100.0, "C30": 1e4}, metadata={"source": "mem"})


# ---------------------------------------------------------------- CXI
def test_cxi_round_trip(tmp_path, cube):
    ds = _dataset(cube)
    path = tmp_path / "scan.cxi"
    cxi.write(path, ds)
    assert not (tmp_path / "scan.cxi.tmp").exists()
    back = io.load(path)
    assert back.scan_shape == (SY, SX) and back.pattern_shape == (H, W)
    np.testing.assert_allclose(np.asarray(back.patterns[...]), cube)
    np.testing.assert_allclose(back.energy, 300e3, rtol=1e-6)
    np.testing.assert_allclose(back.scan_step, (0.5, 0.7), rtol=1e-9)
    np.testing.assert_allclose(back.angular_sampling, (1.5, 1.25), rtol=1e-9)
    np.testing.assert_allclose(back.positions_angstrom(), ds.positions_angstrom(), atol=1e-9)
    assert back.semiangle == 20.0 and back.aberrations == {"C10": 100.0, "C30": 1e4}
    # lazy access of one pattern and a block
    np.testing.assert_allclose(back.get_patterns([5, 1]).numpy(), cube.reshape(-1, H, W)[[5, 1]])


def test_cxi_cdtools_layout_signs(tmp_path, cube):
    """A bare CDTools-style file: sample translations in m, wavelength, distance and pixel size."""
    path = tmp_path / "bare.cxi"
    lam_m = 1.9687e-12  # 300 keV electrons
    iy, ix = np.meshgrid(np.arange(SY), np.arange(SX), indexing="ij")
    t = np.zeros((SY * SX, 3))
    t[:, 0] = -(ix.ravel() * 0.7 + 3.0) * 1e-10  # sample moves −x when the probe moves +x
    t[:, 1] = -(iy.ravel() * 0.5 + 2.0) * 1e-10
    with h5py.File(path, "w") as f:
        f["entry_1/data_1/data"] = cube.reshape(-1, H, W)
        f["entry_1/data_1/translation"] = t
        f["entry_1/instrument_1/source_1/wavelength"] = lam_m
        f["entry_1/instrument_1/detector_1/distance"] = 0.5
        f["entry_1/instrument_1/detector_1/x_pixel_size"] = 1e-3
        f["entry_1/instrument_1/detector_1/y_pixel_size"] = 1e-3
    ds = io.load(path)
    assert abs(ds.energy - 300e3) < 200  # from the relativistic wavelength
    np.testing.assert_allclose(ds.angular_sampling, (2.0, 2.0))  # 1 mm / 0.5 m = 2 mrad
    assert ds.scan_shape == (SY, SX)
    np.testing.assert_allclose(ds.scan_step, (0.5, 0.7), atol=1e-6)
    np.testing.assert_allclose(ds.positions_angstrom()[:2], [[0, 0], [0, 0.7]], atol=1e-6)  # recentred
    assert ds.metadata["cxi_position_offset"] == pytest.approx([2.0, 3.0])
    kept = io.load(path, recentre=False)
    np.testing.assert_allclose(kept.positions_angstrom()[0], [2.0, 3.0], atol=1e-6)


def test_cxi_missing_data_lists_keys(tmp_path):
    path = tmp_path / "empty.cxi"
    with h5py.File(path, "w") as f:
        f["entry_1/instrument_1/source_1/wavelength"] = 2e-12
    with pytest.raises(InputFileError, match=r"empty\.cxi.*entry_1/data_1/data.*keys present:.*wavelength"):
        io.load(path)


# ---------------------------------------------------------------- MATLAB
def test_mat_v5_ptychoshelves_hwn(tmp_path, cube):
    # PtychoShelves dp(:, :, n), n running y fastest (MATLAB reshape of (H, W, Sy, Sx))
    hwyx = cube.transpose(2, 3, 0, 1)  # (H, W, Sy, Sx)
    dp = hwyx.reshape(H, W, SY * SX, order="F")
    path = tmp_path / "dp.mat"
    scipy.io.savemat(path, {"dp": dp, "voltage": 300.0, "alpha": 21.4, "scan_step_size": 0.41, "rbf": 10.7})
    ds = io.load(path, scan_shape=(SY, SX))
    np.testing.assert_allclose(np.asarray(ds.patterns[...]), cube)
    np.testing.assert_allclose(ds.patterns[2, 1], cube[2, 1])
    assert ds.energy == 300e3 and ds.semiangle == 21.4 and ds.scan_step == (0.41, 0.41)
    assert ds.angular_sampling == pytest.approx((2.0, 2.0))  # alpha / rbf
    assert ds.metadata["layout"] == "HWN"


def test_mat_v5_4d_and_mismatch(tmp_path, cube):
    path = tmp_path / "cbed.mat"
    scipy.io.savemat(path, {"cbed": cube.transpose(2, 3, 0, 1)})  # fold_slice (ndpy, ndpx, npy, npx)
    ds = io.load(path, energy=200e3, scan_step=1.0)
    np.testing.assert_allclose(np.asarray(ds.patterns[...]), cube)
    flat = tmp_path / "flat.mat"
    scipy.io.savemat(flat, {"dp": cube.reshape(SY * SX, H, W).transpose(1, 2, 0)})
    with pytest.raises(ShapeError, match=r"flat\.mat: the file holds 12 patterns but scan_shape 5×5 needs 25"):
        io.load(flat, scan_shape=(5, 5), energy=200e3, scan_step=1.0)
    with pytest.raises(InputFileError, match=r"no key 'dps'.*keys present: dp"):
        io.load(flat, patterns_key="dps", energy=200e3, scan_step=1.0)


def test_mat_v73_lazy_matches_v5(tmp_path, cube):
    """v7.3 = HDF5 with axes reversed: MATLAB size (H, W, N) is stored as h5py (N, W, H)."""
    dp = cube.transpose(2, 3, 0, 1).reshape(H, W, SY * SX, order="F")  # MATLAB (H, W, N)
    path = tmp_path / "dp73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["dp"] = dp.transpose(2, 1, 0)  # what MATLAB writes, as h5py sees it
        f["voltage"] = np.array([[300.0]])
        f["scan_step_size"] = np.array([[0.5]])
    ds = io.load(path, scan_shape=(SY, SX), angular_sampling=1.0)
    assert not isinstance(ds.patterns, np.ndarray)  # lazy
    np.testing.assert_allclose(ds.patterns[1, 3], cube[1, 3])
    np.testing.assert_allclose(ds.get_patterns([7, 0]).numpy(), cube.reshape(-1, H, W)[[7, 0]])
    np.testing.assert_allclose(np.asarray(ds.patterns[...]), cube)
    assert ds.energy == 300e3 and ds.metadata["format"] == "mat-v7.3"
    # fold_slice 4-D (ndpy, ndpx, npy, npx) in v7.3, read lazily
    path4 = tmp_path / "dp73_4d.mat"
    with h5py.File(path4, "w", userblock_size=512) as f:
        f["dp"] = cube.transpose(2, 3, 0, 1).transpose(3, 2, 1, 0)  # MATLAB (H, W, Sy, Sx) as h5py sees it
    ds4 = io.load(path4, energy=300e3, scan_step=1.0)
    np.testing.assert_allclose(ds4.patterns[2, 3], cube[2, 3])
    np.testing.assert_allclose(ds4.patterns[1:3, ::2], cube[1:3, ::2])
    np.testing.assert_allclose(ds4.get_patterns([11, 4]).numpy(), cube.reshape(-1, H, W)[[11, 4]])


# ---------------------------------------------------------------- EMD / py4DSTEM
def test_emd_py4dstem_layout(tmp_path, cube):
    path = tmp_path / "scan.emd"
    with h5py.File(path, "w") as f:
        f.attrs["emd_group_type"] = "root"
        g = f.create_group("scan/datacube")
        g.attrs["emd_group_type"] = "array"
        g.attrs["python_class"] = "DataCube"
        g["data"] = cube
        for i, (n, step, units) in enumerate([(SY, 0.05, "nm"), (SX, 0.05, "nm"), (H, 1.1, "mrad"),
                                              (W, 1.1, "mrad")]):
            d = g.create_dataset(f"dim{i}", data=np.arange(n) * step)
            d.attrs["units"] = units
        cal = f.create_group("scan/_metadata/calibration")
        cal.attrs["Q_pixel_size"] = 0.9
        cal.attrs["Q_pixel_units"] = "mrad"
        cal.attrs["energy"] = 200e3
        f["scan/other"] = np.zeros((2, 2, 2, 2))  # a decoy 4-D dataset outside the EMD array
    ds = io.load(path)
    np.testing.assert_allclose(ds.patterns[1], cube[1])
    assert ds.energy == 200e3
    assert ds.scan_step == pytest.approx((0.5, 0.5))  # 0.05 nm from the dims
    assert ds.angular_sampling == (0.9, 0.9)  # calibration wins over the dims
    with pytest.raises(InputFileError, match=r"no key 'nope'.*scan/datacube"):
        io.load(path, patterns_key="nope")


# ---------------------------------------------------------------- raw dumps
def test_raw_empad_with_footer_and_header(tmp_path, cube):
    frames = np.zeros((SY * SX, H + 2, W), dtype="<f4")
    frames[:, :H] = cube.reshape(-1, H, W)
    frames[:, H:] = 9e9  # footer rows, must not leak into the patterns
    path = tmp_path / "scan.raw"
    with open(path, "wb") as fh:
        fh.write(b"\x01" * 16)  # file header
        frames.tofile(fh)
    ds = io.load(path, shape=(H, W), footer_rows=2, offset=16, scan_shape=(SY, SX), energy=300e3, scan_step=1.0)
    assert isinstance(ds.patterns, np.memmap) or isinstance(getattr(ds.patterns, "base", None), np.memmap)
    np.testing.assert_allclose(np.asarray(ds.patterns[...]), cube)
    with pytest.raises(ShapeError, match=r"scan\.raw.*12 patterns but scan_shape 4×4 needs 16"):
        io.load(path, shape=(H, W), footer_rows=2, offset=16, scan_shape=(4, 4), energy=300e3, scan_step=1.0)
    with pytest.raises(ShapeError, match=r"scan\.raw.*not a whole number"):
        io.load(path, shape=(H, W), energy=300e3, scan_step=1.0)


def test_raw_empad_preset_and_dtype(tmp_path):
    data = np.arange(4 * 130 * 128, dtype="<f4").reshape(4, 130, 128)
    path = tmp_path / "empad.raw"
    data.tofile(path)
    ds = io.load(path, detector="empad", scan_shape=(2, 2), energy=300e3, scan_step=1.0)
    assert ds.pattern_shape == (128, 128)
    np.testing.assert_array_equal(ds.patterns[1, 1], data[3, :128])
    big = tmp_path / "be.bin"
    (np.arange(2 * 2 * 3 * 3, dtype=">u2")).tofile(big)
    ds = io.load(big, shape=(2, 2, 3, 3), dtype=">u2", energy=300e3, scan_step=1.0)
    assert ds.patterns[1, 0, 0, 0] == 18
    with pytest.raises(ConfigError, match="needs shape"):
        io.load(big, energy=300e3, scan_step=1.0)


# ---------------------------------------------------------------- shared helper
def test_dataset_from_reader_errors_and_scan_order(tmp_path, cube):
    flat_f = cube.transpose(1, 0, 2, 3).reshape(-1, H, W)  # y fastest
    ds = _common.dataset_from_reader(flat_f, "x.h5", scan_shape=(SY, SX), scan_order="F", energy=1e5, scan_step=1)
    np.testing.assert_allclose(np.asarray(ds.patterns[...]), cube)
    with pytest.raises(ConfigError, match="energy"):
        _common.dataset_from_reader(cube, "x.h5", scan_step=1)
    with pytest.raises(ConfigError, match="unknown reader option"):
        _common.dataset_from_reader(cube, "x.h5", energy=1e5, scan_step=1, nonsense=3)
