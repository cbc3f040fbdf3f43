"""``reconstruct --auto`` / ``calibrate`` where the data cannot say enough (issue 50, defect 4): a rotation the
centre of mass cannot calibrate on a coarse step names the cause (the step against the probe: undersampled) and the
flag to pass (--rotation DEG); every missing calibration is listed in one line before anything slow."""
from __future__ import annotations

import time

import numpy as np
import pytest

from phasestem.calibrate import NoContrastError, calibrate
from phasestem.calibrate.rotation import no_contrast_message
from phasestem.cli import main
from phasestem.recon.synthetic import synthetic_scan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_message_names_the_undersampled_centre_of_mass_and_the_flag():
    seed = no_contrast_message(0.9, (2.0, 2.0), 300e3, 30.0)  # the seed-000 geometry: a 0.66 Å probe, 2 Å step
    assert "the scan step 2 Å is 3.0× the probe's diameter (≈ 0.66 Å, λ/α): the centre of mass is undersampled" \
        in seed and "--rotation DEG" in seed
    fine = no_contrast_message(0.9, (0.4, 0.4), 300e3, 21.4)
    assert "vacuum-only data, or too few counts" in fine and "undersampled" not in fine and "--rotation DEG" in fine
    assert "undersampled" not in no_contrast_message(0.9, (2.0, 2.0), 300e3, 30.0, c10=200.0)  # a 12.7 Å probe


def test_a_coarse_step_that_defeats_the_centre_of_mass_says_why_and_what_to_pass():
    ds = synthetic_scan(scan_shape=(12, 12), scan_step=2.0, c10=0.0, max_phase=0.5, dose=1e4, seed=1)
    with pytest.raises(NoContrastError, match=r"the scan step 2 Å is 1\.5× the probe's diameter .* the centre of "
                                              r"mass is undersampled, the likely cause here; give the scan rotation "
                                              r"if it is known \(--rotation DEG"):
        calibrate(ds, semiangle=15.0)
    vacuum = synthetic_scan(scan_shape=(12, 12), scan_step=2.0, c10=0.0, max_phase=0.0, dose=1e4, seed=1)
    calib = calibrate(vacuum, semiangle=15.0)  # the halves disagree: left at 0°, and the note says why
    assert "undersampled" in calib.undetermined["rotation"] and "--rotation DEG" in calib.undetermined["rotation"]
    assert calibrate(ds, semiangle=15.0, rotation=0.0).rotation_source == "given"  # the flag it names works


def test_every_missing_calibration_is_one_line_before_any_slow_work(tmp_path, capsys):
    np.save(tmp_path / "scan.npy", np.random.default_rng(0).random((8, 8, 16, 16), dtype=np.float32))
    t0 = time.perf_counter()
    rc = main(["reconstruct", str(tmp_path / "scan.npy"), "--auto", "--out", str(tmp_path / "out")])
    assert rc == 1 and time.perf_counter() - t0 < 10
    err = capsys.readouterr().err.strip()
    assert err == (f"phasestem reconstruct: error: {tmp_path / 'scan.npy'}: not in the file and not given: the beam "
                   "energy (--energy EV); the scan step (--scan-step Å); the probe semi-angle (--semiangle MRAD, or "
                   "the detector pixel: --angular-sampling MRAD)")
    assert not (tmp_path / "out").exists()  # nothing written
    assert main(["calibrate", str(tmp_path / "scan.npy"), "--energy", "300e3", "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("not in the file and not given: the scan step (--scan-step Å); the probe semi-angle "
                        "(--semiangle MRAD, or the detector pixel: --angular-sampling MRAD)"), err
