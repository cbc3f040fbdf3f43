"""One rule for "are these counts" (issue 64, phasestem.io.counts): calibration and reconstruction decide alike on
every kind of file, calibration keeps counted patterns whole and hands the decision and the dose on, the file's
detector pixel is kept, and the dead-pixel rule leaves regions the data themselves leave dark alone."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml

from phasestem.calibrate.badpixels import find_bad_pixels
from phasestem.io.counts import counts_decision

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENERGY, STEP, SEMIANGLE, PIXEL = 300e3, 0.5, 20.0, 1.25  # eV, Å, mrad, mrad/px


def _scan(seed: int = 0, dose: float = 4000.0) -> np.ndarray:
    """(12, 12, 48, 48) counts: a bright-field disk of radius SEMIANGLE / PIXEL = 16 px whose centre of mass follows
    a smooth phase gradient (so that the calibration finds contrast), Poisson at ``dose`` counts per pattern."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48] - 24.0
    iy, ix = np.mgrid[0:12, 0:12] * 0.6
    dy, dx = 0.8 * np.sin(iy) * np.cos(0.7 * ix), 0.8 * np.cos(iy + 0.3) * np.sin(ix)
    disk = ((yy[None, None] - dy[..., None, None]) ** 2 + (xx[None, None] - dx[..., None, None]) ** 2) < 16.0**2
    disk = disk * (0.97 + 0.06 * np.cos(0.2 * xx))  # a little structure in the bright field
    return rng.poisson(disk / disk.sum((-2, -1), keepdims=True) * dose).astype(np.float64)


def _write_h5(path, patterns, dose=None, dtype=np.float32):
    with h5py.File(path, "w") as f:
        f.create_dataset("patterns", data=patterns.astype(dtype))
        f.attrs.update(energy=ENERGY, scan_step=[STEP, STEP], angular_sampling=[PIXEL, PIXEL],
                       semiangle=SEMIANGLE)
        if dose is not None:
            f.attrs["dose"] = dose
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The five kinds of file of the acceptance list, one scan."""
    tmp = tmp_path_factory.mktemp("counts")
    counts = _scan()
    hot = counts.copy()
    hot[..., 5, 7] = 5000  # a hot pixel, filled by the calibration
    hot[..., 30, 20] = 0  # a dead one in the bright field
    return {
        "integer": (_write_h5(tmp / "integer.h5", counts, dtype=np.uint16), True),
        "whole-number float": (_write_h5(tmp / "whole.h5", counts), True),
        "dosed float": (_write_h5(tmp / "dosed.h5", counts / counts.sum((-2, -1), keepdims=True), dose=250.0), True),
        "non-integer float": (_write_h5(tmp / "fraction.h5", counts * 0.37 + 0.01), False),
        "bad-pixel integer": (_write_h5(tmp / "badpix.h5", hot, dtype=np.uint16), True),
    }


@pytest.mark.parametrize("kind", ["integer", "whole-number float", "dosed float", "non-integer float",
                                  "bad-pixel integer"])
def test_calibrate_and_the_run_agree_on_counts(files, kind, tmp_path):
    """The calibration's decision (written as data.counts) equals the run's on the original file, and a run of the
    calibrated patterns without data.counts decides the same from what calibration wrote (whole counts kept)."""
    from phasestem import io
    from phasestem.calibrate import calibrate_file
    from phasestem.recon.params import build_dataset, load_params

    path, expected = files[kind]
    direct = counts_decision(io.load(path))
    calib, written = calibrate_file(path, tmp_path / "cal", rotation=0.0, figures=False)
    assert calib.counts.counted == direct.counted == expected, (kind, calib.counts, direct)
    params = yaml.safe_load(written["params"].read_text())
    assert params["data"]["counts"] is expected
    assert params["data"].get("dose") == (250.0 if kind == "dosed float" else None)
    run = build_dataset(load_params(written["params"]))
    assert counts_decision(run).counted is expected
    corrected = np.load(written["patterns"], mmap_mode="r")
    if kind in ("integer", "bad-pixel integer"):
        assert corrected.dtype == np.uint16  # the file's own integer type
    if expected and kind != "dosed float":  # counted patterns stay whole after the bad-pixel fill
        assert np.array_equal(corrected, np.rint(corrected))
        del params["data"]["counts"]  # without the word of the parameter file, the patterns still say counts
        (tmp_path / "cal" / "bare.yaml").write_text(yaml.safe_dump(params))
        assert counts_decision(build_dataset(load_params(tmp_path / "cal" / "bare.yaml"))).counted
    if kind == "bad-pixel integer":
        assert set(map(tuple, calib.bad_pixels.hot)) == {(5, 7)} and set(map(tuple, calib.bad_pixels.dead)) == {
            (30, 20)}


def test_hdf5_integer_storage_is_counts_though_read_as_float32(files):
    from phasestem import io

    ds = io.load(files["integer"][0])
    assert ds.patterns.dtype == np.float32  # the reader's one float32 copy
    assert counts_decision(ds).reason == "the patterns are stored as integers (uint16)"


def test_the_files_detector_pixel_is_kept_and_a_disagreeing_disk_is_a_question(files, tmp_path, caplog):
    """The file's detector pixel wins over the disk's fit; the fit is reported (a note when it agrees within its
    error, a warning that asks when not); --fit-detector-pixel takes the fit."""
    import logging

    from phasestem.calibrate import calibrate_file

    path = files["integer"][0]
    calib, _ = calibrate_file(path, tmp_path / "a", rotation=0.0, figures=False)
    assert calib.angular_sampling == PIXEL and calib.semiangle == SEMIANGLE
    assert calib.sources["optics.angular_sampling"] == "file" and calib.sources["optics.semiangle"] == "file"
    assert any("agree within the fit's error" in n for n in calib.notes), calib.notes
    with h5py.File(path) as f, h5py.File(tmp_path / "off.h5", "w") as g:  # the file's pixel 4 % off the disk's
        g.create_dataset("patterns", data=f["patterns"][...])
        g.attrs.update({**f.attrs, "angular_sampling": [1.3, 1.3]})
    with caplog.at_level(logging.WARNING, logger="phasestem.calibrate"):
        calib, _ = calibrate_file(tmp_path / "off.h5", tmp_path / "b", rotation=0.0, figures=False)
    assert calib.angular_sampling == 1.3 and calib.semiangle == SEMIANGLE  # kept, not replaced
    assert "kept the file's values; is its detector pixel or semi-angle right? (--fit-detector-pixel" in caplog.text
    fitted, _ = calibrate_file(tmp_path / "off.h5", tmp_path / "c", rotation=0.0, figures=False,
                               fit_detector_pixel=True)
    assert fitted.angular_sampling == pytest.approx(PIXEL, rel=0.02)  # the disk: 16 px for 20 mrad


def test_dead_pixels_are_not_found_where_the_data_are_dark_themselves():
    """A dark corner (a simulation's band limit) and the ring just outside an aperture are not dead; a lone zero in
    the bright field, and two side by side, are."""
    yy, xx = np.mgrid[0:48, 0:48] - 23.5
    r = np.hypot(yy, xx)
    total = np.where(r < 16, 4000.0, 30.0 * np.exp(-(r - 16) / 8))  # disk and a dark field fading outwards
    total[r > 30] = 0.0  # the band limit: nothing in the corners
    total[20, 20] = 0.0
    total[10, 24] = total[10, 25] = 0.0
    bad = find_bad_pixels(total)
    assert set(bad.dead) == {(20, 20), (10, 24), (10, 25)}, bad.dead
