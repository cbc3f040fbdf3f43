"""``phasestem reconstruct FILE --auto`` on independent abTEM data: calibrate → SSB start → AD."""
from __future__ import annotations

import os
import sys

import abtem_scan
import numpy as np
import pytest


def grid_positions(scan, shape) -> np.ndarray:
    """(N, 2) Å: the positions a parameter file's ``scan`` section (step, origin, rotation, affine) describes."""
    from phasestem.scan import GridScan

    return GridScan(shape, scan.step, origin=scan.origin, rotation=scan.rotation, affine=scan.affine).positions()


def _central_r(results_file, positions, truth) -> float:
    """Pearson r against abTEM's σ·V over the centre of the scanned area (object frame of results.h5)."""
    from phasestem.recon.results import load_results

    res = load_results(results_file)
    s = float(res["attrs"]["sampling"][0])
    origin = np.asarray(res["attrs"]["origin"])
    c = (((positions.min(0) + positions.max(0)) / 2 + origin) / s).astype(int)
    h = int(2.2 / s)
    crop = res["phase_sum"][c[0] - h : c[0] + h, c[1] - h : c[1] + h]
    return abtem_scan.pearson_vs_truth(crop, s, truth["phase"], truth["phase_sampling"])


@pytest.mark.slow
def test_auto_reaches_the_truth_and_a_wrong_rotation_is_clearly_worse(tmp_path_factory, capsys):
    from phasestem.cli import main
    from phasestem.recon.auto import apply_init
    from phasestem.recon.params import load_params
    from phasestem.recon.run import run_reconstruction

    data = abtem_scan.make(tmp_path_factory.getbasetemp() / "abtem_scan")
    out = tmp_path_factory.mktemp("auto")
    rc = main(["reconstruct", str(data["file"]), "--auto", "--energy", "300e3", "--semiangle", "21.4",
               "--scan-step", "0.45", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    params = load_params(out / "params.yaml")  # the calibrated, reproducible parameter file
    assert params.model.initial_phase is not None and (out / "init_ssb.npy").exists()
    assert "positions" not in params.model.learning_rates  # 3e4 counts a pattern: too few to move them
    assert (out / "calibration" / "calibration.png").exists()
    positions = grid_positions(params.scan, params.scan.shape)
    r_auto = _central_r(out / "results.h5", positions, data["truth"])
    assert r_auto >= 0.95, r_auto  # measured 0.969 (0.950 with the amplitude term alone)
    from phasestem.recon.results import load_results

    prov = load_results(out / "results.h5")["provenance"]  # where each value of the run came from
    assert {k: prov[k]["source"] for k in ("optics.energy", "optics.semiangle", "optics.angular_sampling",
                                           "scan.rotation", "optics.aberrations.C10")} == {
        "optics.energy": "flag", "optics.semiangle": "flag", "optics.angular_sampling": "calibration",
        "scan.rotation": "calibration", "optics.aberrations.C10": "calibration"}
    assert prov["losses.poisson"]["source"] == "data" and prov["losses.poisson"]["value"] == 0.5  # io.counts' rule
    assert prov["data.counts"]["source"] == "calibration" and prov["data.counts"]["value"] == "true"
    assert "the patterns are stored as integers (int32)" in prov["data.counts"]["note"]  # abtem_scan: int32 .npy

    wrong = params.model_copy(deep=True)
    wrong.scan.rotation = 0.0  # the uncalibrated default; the truth is 23.7°
    wrong.scan.origin = tuple(-grid_positions(wrong.scan.model_copy(update={"origin": (0.0, 0.0)}),
                                              wrong.scan.shape).min(0))
    wrong.model.initial_phase = None
    wrong.run.out_dir = out / "wrong_rotation"
    wrong = apply_init(wrong, "ssb", wrong.run.out_dir)
    run_reconstruction(wrong)
    r_wrong = _central_r(wrong.run.out_dir / "results.h5", grid_positions(wrong.scan, wrong.scan.shape),
                         data["truth"])
    print(f"phase Pearson r: --auto {r_auto:.3f}, told rotation 0° {r_wrong:.3f}")
    assert r_wrong < r_auto - 0.15, (r_auto, r_wrong)


def test_init_parallax_fits_the_defocus_of_a_params_run(tmp_path_factory, capsys):
    """'reconstruct PARAMS --init parallax' on a calibrated YAML without C10 fits C10 by tcBF and starts from it."""
    import yaml

    from phasestem.calibrate import calibrate_file
    from phasestem.cli import main

    data = abtem_scan.make(tmp_path_factory.getbasetemp() / "abtem_scan")
    out = tmp_path_factory.mktemp("init")
    calibrate_file(data["file"], out, energy=abtem_scan.ENERGY, scan_step=abtem_scan.STEP,
                   semiangle=abtem_scan.SEMIANGLE, figures=False)
    params = yaml.safe_load((out / "params.yaml").read_text())
    params["optics"]["aberrations"] = {}
    params["run"] = {"n_epochs": 1, "batch_size": 64, "checkpoint_every": 0, "progress": False, "out_dir": "run"}
    (out / "no_defocus.yaml").write_text(yaml.safe_dump(params))
    rc = main(["reconstruct", str(out / "no_defocus.yaml"), "--init", "parallax"])
    assert rc == 0, capsys.readouterr().err
    config = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert abs(config["optics"]["aberrations"]["C10"] - data["truth"]["C10"]) < 20
    assert config["model"]["initial_phase"]["file"].endswith("init_parallax.npy")
    assert np.load(out / "run" / "init_parallax.npy").std() > 0


#: paths opened (audit hook "open" events) while recording; None: not recording
_OPENED: list[str] | None = None


def _record_opens(event: str, args) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], str | bytes | os.PathLike):
        _OPENED.append(os.fspath(args[0]) if not isinstance(args[0], bytes) else args[0].decode())


def test_auto_hands_its_calibration_dataset_and_start_on_in_memory(tmp_path_factory, capsys):
    """--auto reads the corrected patterns once (one io.load's opens) and neither reads back the start image
    (init_ssb.npy) nor the calibrated parameter file it wrote: Calibration.params_dict() and the dataset go on in
    memory; the files stay as the record and reproduce the run's parameters."""
    global _OPENED
    from phasestem import io
    from phasestem.cli import main
    from phasestem.recon.inputs import read_array
    from phasestem.recon.params import load_params

    data = abtem_scan.make(tmp_path_factory.getbasetemp() / "abtem_scan")
    out = tmp_path_factory.mktemp("auto_reads")
    sys.addaudithook(_record_opens)
    _OPENED = []
    try:
        rc = main(["reconstruct", str(data["file"]), "--auto", "--energy", "300e3", "--semiangle", "21.4",
                   "--scan-step", "0.45", "--out", str(out), "--epochs", "1"])
        run_opens, _OPENED = _OPENED, []
        io.load(out / "calibration" / "calibrated.npy", energy=300e3, scan_step=0.45)
        one_load, _OPENED = len(_OPENED), []
        read_array(out / "calibration" / "detector_shifts.npy", None, "detector shifts")
        one_read = len(_OPENED)
    finally:
        _OPENED = None
    assert rc == 0, capsys.readouterr().err

    def count(name):
        return sum(1 for p in run_opens if os.path.basename(p) == name)

    assert one_load >= 1 and count("scan.npy") == count("calibrated.npy") == one_load, run_opens  # once each
    assert 0 < count("detector_shifts.npy") <= one_read  # read once (every file written under a temporary name)
    assert count("init_ssb.npy") == 0 and count("params.yaml") == 0  # written (temporaries renamed), not read back
    params = load_params(out / "params.yaml")  # the record reproduces the run's parameters
    assert params.model.initial_phase.file == (out / "init_ssb.npy").resolve()
    assert params.data.file == (out / "calibration" / "calibrated.npy").resolve()


def test_auto_takes_a_known_defocus_sign_from_the_command_line(tmp_path_factory, capsys):
    """``reconstruct FILE --auto --c10-sign C10`` (as ``phasestem calibrate``): θ and θ + 180° fit a thin object's
    patterns alike and the wrong one inverts the phase; a given sign decides. Here the wrong sign on purpose
    (truth C10 = −90 Å, rotation 23.7°): --auto follows it to θ + 180° and C10 > 0."""
    import json

    from phasestem.cli import main
    from phasestem.recon.params import load_params

    data = abtem_scan.make(tmp_path_factory.getbasetemp() / "abtem_scan")
    out = tmp_path_factory.mktemp("auto_c10_sign")
    rc = main(["reconstruct", str(data["file"]), "--auto", "--energy", "300e3", "--semiangle", "21.4",
               "--scan-step", "0.45", "--out", str(out), "--epochs", "1", "--c10-sign", "+1"])
    assert rc == 0, capsys.readouterr().err
    cal = json.loads((out / "calibration" / "calibration.json").read_text())
    assert abs((cal["rotation_deg"] - (abtem_scan.TRUTH["rotation"] + 180.0) + 180.0) % 360.0 - 180.0) < 1.0, cal
    params = load_params(out / "params.yaml")
    assert abs(params.optics.aberrations["C10"] + abtem_scan.TRUTH["C10"]) < 20, params.optics.aberrations
