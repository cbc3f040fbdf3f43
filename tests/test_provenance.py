"""The file is the truth unless you say otherwise: calibrations a data file holds are used when the parameter file
leaves them out or null; a value given that differs wins with a warning naming both; the run log and results.h5
record every setting with its source; the loss terms that run are exactly those named."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from phasestem.base.errors import ConfigError
from phasestem.io import hdf5
from phasestem.io import numpy as io_numpy
from phasestem.recon.params import build_dataset, parse_params
from phasestem.recon.synthetic import synthetic_scan, write_npz

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
STEP = 3.2  # Å, what the file records


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A phasestem HDF5 file that records its calibrations (3.2 Å step, 300 keV, 15 mrad, C10 50 Å)."""
    tmp = tmp_path_factory.mktemp("provenance")
    ds = synthetic_scan(scan_shape=(5, 5), scan_step=STEP, seed=3)
    return hdf5.write(tmp / "scan.h5", ds), ds


def _config(file, **sections) -> dict:
    """The example tiny config pointed at ``file``, with ``sections`` replaced."""
    cfg = yaml.safe_load((ROOT / "configs" / "reconstruct_tiny.yaml").read_text())
    cfg["data"] = {"file": str(file)}
    cfg.pop("tune")
    cfg["scan"] = {"step": 1.0}  # the example's step: not the file's
    cfg["run"].update(n_epochs=1, progress=False, check_optics=False, checkpoint_every=0)
    cfg.update(sections)
    return cfg


def test_a_yaml_value_that_differs_from_the_file_wins_with_a_warning_and_the_sources_are_recorded(recorded,
                                                                                                  tmp_path):
    from phasestem.recon.results import load_results

    path, _ = recorded
    cfg = _config(path, optics={"sampling": 0.4})  # energy, semi-angle and C10 left to the file
    cfg["run"].update(out_dir=str(tmp_path / "run"), coarse_start="auto")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", "phasestem.cli", "reconstruct", str(tmp_path / "p.yaml")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warning = f"scan.step: the YAML gives 1 Å but {path} holds 3.2 Å; using the YAML's value"
    assert warning in proc.stderr
    log = (tmp_path / "run" / "reconstruct.log").read_text()
    assert warning in log
    table = log[log.index("settings (value, source"):log.index("losses:")]
    rows = {ln.split()[3]: ln.split()[4:] for ln in table.splitlines()[1:] if len(ln.split()) > 3}  # after the time
    assert rows["scan.step"] == ["1", "Å", "YAML", "(file:", "3.2", "Å)"]
    assert rows["optics.energy"] == ["300000", "eV", "file"]
    assert rows["optics.semiangle"] == ["15", "mrad", "file"]
    assert rows["optics.aberrations.C10"] == ["50", "Å", "file"]
    assert rows["optics.sampling"][:3] == ["0.4", "Å", "YAML"]
    assert "losses: gaussian 1 (named in the parameter file)" in proc.stdout
    prov = load_results(tmp_path / "run" / "results.h5")["provenance"]
    assert prov["scan.step"]["source"] == "YAML" and prov["scan.step"]["value"] == [1.0, 1.0]
    assert prov["scan.step"]["file"] == [STEP, STEP]
    assert prov["optics.energy"]["source"] == "file" and prov["optics.energy"]["value"] == 300e3
    assert prov["losses.gaussian"]["source"] == "YAML" and "losses.poisson" not in prov
    # what the 'auto' rules decided, and why: probe_aperture from the data before epoch 1; obj_shear (from epoch 2)
    # not yet due in this 1-epoch run; obj_clamp is given (enabled: true) in the example config, so no rule ran
    aperture = prov["constraints.probe_aperture.enabled"]
    assert aperture["source"] == "default" and aperture["note"].startswith("auto: ")
    assert aperture["value"] is aperture["note"].startswith("auto: on")
    assert "constraints.obj_shear.enabled" not in prov and "constraints.obj_clamp.enabled" not in prov
    # run.coarse_start auto (given): one slice, so no coarse epochs (tests/test_recon_coarse.py runs them)
    coarse = prov["run.coarse_start"]
    assert coarse["source"] == "YAML" and coarse["value"] == 0 and coarse["note"].startswith("auto: off: 1 slice(s)")
    assert "coarse start: off: 1 slice(s)" in log


def test_scan_step_null_takes_the_files_and_warns_about_nothing(recorded, caplog):
    path, ds = recorded
    cfg = _config(path, optics={}, scan={"step": None, "origin": None})
    with caplog.at_level(logging.WARNING, logger="phasestem"):
        got = build_dataset(parse_params(cfg))
    assert got.scan_step == (STEP, STEP)
    assert (got.energy, got.semiangle, got.aberrations) == (ds.energy, ds.semiangle, {"C10": 50.0})
    np.testing.assert_allclose(got.angular_sampling, ds.angular_sampling)
    assert not caplog.records
    sources = {s.field: s.source for s in got.metadata["settings"]}
    assert sources["scan.step"] == sources["optics.energy"] == sources["optics.angular_sampling"] == "file"
    assert sources["scan.rotation"] == "default"
    # the same value given in the YAML is no conflict; a given aberration key merges with the file's others
    cfg = _config(path, optics={"aberrations": {"C30": 1000.0}}, scan={"step": STEP})
    with caplog.at_level(logging.WARNING, logger="phasestem"):
        got = build_dataset(parse_params(cfg))
    assert not caplog.records and got.aberrations == {"C10": 50.0, "C30": 1000.0}
    cfg["optics"] = {"aberrations": {"defocus": 20.0}}  # C10 = −20 Å against the file's 50 Å
    with caplog.at_level(logging.WARNING, logger="phasestem"):
        got = build_dataset(parse_params(cfg))
    assert got.aberrations["C10"] == -20.0
    assert any("optics.aberrations.C10: the YAML gives -20 Å but" in r.message and "holds 50 Å" in r.message
               for r in caplog.records)


def test_a_value_that_neither_the_file_nor_the_yaml_gives_is_one_line(tmp_path):
    write_npz(tmp_path / "bare.npz", scan_shape=(4, 4))  # patterns only: no calibration in the file
    cfg = _config(tmp_path / "bare.npz", scan={"step": None})
    cfg["data"]["patterns_key"] = "patterns"
    with pytest.raises(ConfigError, match=r"^scan\.step: not given, and .*bare\.npz does not hold it \(the scan "
                       r"step, Å\); give scan\.step$"):
        build_dataset(parse_params(cfg))
    cfg["scan"]["step"] = 1.0
    del cfg["optics"]["semiangle"]
    with pytest.raises(ConfigError, match=r"^optics\.semiangle: not given, and .*bare\.npz does not hold it"):
        build_dataset(parse_params(cfg))


def test_io_a_given_pixel_beats_the_files_and_an_npz_carries_its_calibrations(recorded, tmp_path):
    from phasestem import io

    path, ds = recorded
    got = io.load(path, sampling=0.5)  # a real-space pixel given: it wins over the file's detector pixel
    np.testing.assert_allclose(got.sampling, (0.5, 0.5))
    assert got.metadata["calibration_conflicts"] == ["sampling"]
    assert got.metadata["calibration_sources"]["angular_sampling"] == "given"
    io_numpy.write(tmp_path / "scan.npz", ds)
    back = io.load(tmp_path / "scan.npz")  # energy, step and detector pixel from the file itself
    assert back.energy == ds.energy and back.scan_step == (STEP, STEP)
    np.testing.assert_allclose(back.angular_sampling, ds.angular_sampling)


def test_calibrate_takes_the_files_energy_and_step_and_a_different_flag_warns(recorded, caplog):
    from phasestem.calibrate import load_for_calibration

    path, ds = recorded
    assert load_for_calibration(path).scan_step == (STEP, STEP)
    with caplog.at_level(logging.WARNING, logger="phasestem"):
        got = load_for_calibration(path, energy=200e3)
    assert got.energy == 200e3
    assert [r.message for r in caplog.records] == [
        f"--energy: the flag gives 200000 eV but {path} holds 300000 eV; using the flag's value (omit --energy to "
        "use the file's)"]


# ---- loss terms ---------------------------------------------------------------------------------
def test_the_loss_terms_that_run_are_exactly_those_named(recorded, tmp_path, capsys):
    from phasestem.recon.run import run_reconstruction
    from phasestem.recon.settings.losses import LossConfig

    assert LossConfig(poisson=1.0).active() == ["poisson"] and LossConfig().active() == ["gaussian"]
    path, _ = recorded
    phases, logs = {}, {}
    for name, losses in (("poisson", {"poisson": 1.0}), ("half", {"gaussian": 0.5, "poisson": 0.5}),
                         ("default", {"power": 0.5})):
        cfg = _config(path, losses=losses, scan={"step": None})
        cfg["model"].pop("learning_rates")  # lsq at its own step sizes
        cfg["run"].update(n_epochs=2, out_dir=str(tmp_path / name), optimizer="lsq")
        model = run_reconstruction(parse_params(cfg))
        phases[name] = model.obj_phase.detach().numpy()
        logs[name] = (tmp_path / name / "reconstruct.log").read_text()
        terms = {k for k in model.loss_history[-1] if k in ("gaussian", "poisson")}
        assert terms == {"poisson": {"poisson"}, "half": {"gaussian", "poisson"}, "default": {"gaussian"}}[name]
    out = capsys.readouterr().out
    assert "losses: poisson 1 (named in the parameter file)" in logs["poisson"] and "losses: poisson 1" in out
    assert "losses: gaussian 0.5, poisson 0.5 (named in the parameter file)" in logs["half"]
    assert "losses: gaussian 1 (default; no term named)" in logs["default"]
    # lsq's Gauss–Newton steps are blind to a common scale of the loss: Gaussian + Poisson at 1 each (what
    # {poisson: 1} ran before) gave exactly the reconstruction of {gaussian: 0.5, poisson: 0.5}; the Poisson term
    # alone does not (measured: max difference 0.019 rad of a 0.019 rad phase; 0.0 before)
    assert np.abs(phases["poisson"] - phases["half"]).max() > 0.1 * np.abs(phases["half"]).max()
    with pytest.raises(ConfigError, match=r"losses: .*no data term; give gaussian or poisson a weight > 0"):
        parse_params(_config(path, losses={"sparsity": 0.1}), "p.yaml")
