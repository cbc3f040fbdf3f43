"""One rule for calibrations (issue 50, defect 1): every value a data file holds (aberrations, detector pixel,
semi-angle, energy, scan shape, step and origin, dose) is read by every path — ``load`` with or without a key, a
parameter file, ``reconstruct --auto``, ``predict`` — shown in that path's settings table with its source, and a
replacement is a warning naming both values. Each reader path round-trips every stored calibration into its table;
the files are tiny and made here."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

import phasestem
from phasestem.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C30 = 2e5  # Å, what only the file says (the data do not measure it)
DOSE = 5e4  # e⁻/Å², as recorded
GEO = dict(extent=24.0, phase_px=48, scan=12, window=16, n_blobs=8, c10=100.0)  # 2 Å step


def _table(text: str) -> dict[str, str]:
    """field → 'value unit source …' of a settings table (run log lines or FourDSTEM.settings_table)."""
    names = ("scan_shape", "scan_step", "scan_origin", "energy", "semiangle", "angular_sampling", "dose")
    rows = {}
    for line in text.splitlines():
        words = (line.split(" INFO ", 1)[1] if " INFO " in line else line).split()
        if words and ("." in words[0] or words[0] in names) and not words[0].endswith(":"):
            rows[words[0]] = " ".join(words[1:])
    return rows


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory) -> Path:
    """A seed-000 file (phasestem's layout) whose attributes hold C10, C30 and a dose."""
    from phasestem.learn.data import write_synthetic_file

    path = write_synthetic_file(tmp_path_factory.mktemp("held") / "simulation_data1.h5", 1, **GEO)
    with h5py.File(path, "r+") as f:
        f.attrs["aberrations"] = json.dumps({"C10": 100.0, "C30": C30})
        f.attrs["dose"] = DOSE
    return path


def _expected(path: Path) -> dict[str, str]:
    with h5py.File(path, "r") as f:
        pixel = float(f.attrs["angular_sampling"][0])
    return {"scan_shape": "12 × 12 file", "scan_step": "2 Å file", "scan_origin": "0 Å file",
            "energy": "300000 eV file", "semiangle": "12 mrad file", "angular_sampling": f"{pixel:.6g} mrad/px file",
            "aberrations.C10": "100 Å file", "aberrations.C30": "200000 Å file", "dose": "50000 e⁻/Å² file"}


@pytest.mark.parametrize("key", [None, "dp_set_0"])
def test_load_reads_every_calibration_of_a_seed_file_with_or_without_a_key(seed_file, key):
    ds = phasestem.load(seed_file, patterns_key=key)  # a key went past the seed reader: aberrations were lost
    assert ds.aberrations == {"C10": 100.0, "C30": C30}
    assert _table(ds.settings_table()) == _expected(seed_file)
    assert ds.truth is not None and ds.metadata["sample"] == 0


def test_a_key_and_another_sample_are_refused_in_one_line(seed_file):
    from phasestem.base.errors import InputFileError

    with pytest.raises(InputFileError, match="patterns_key 'dp_set_0' and sample 3 name two samples"):
        phasestem.load(seed_file, patterns_key="dp_set_0", sample=3)


def test_generic_hdf5_and_npz_round_trip_aberrations_origin_and_semiangle(tmp_path):
    from phasestem.io import numpy as io_numpy
    from phasestem.recon.synthetic import synthetic_scan

    ds = synthetic_scan(scan_shape=(4, 4), scan_step=1.5, c10=-40.0, seed=2)
    ds = ds._replace(aberrations={"C10": -40.0, "C30": 1e4}, scan_origin=(0.5, 0.25))
    with h5py.File(tmp_path / "any.h5", "w") as f:  # any layout: root attributes by their reader names
        f["entry/data"] = ds.patterns
        f.attrs.update(energy=ds.energy, scan_step=ds.scan_step, semiangle=ds.semiangle,
                       angular_sampling=ds.angular_sampling, scan_origin=ds.scan_origin, dose=DOSE,
                       aberrations=json.dumps(ds.aberrations))
    io_numpy.write(tmp_path / "scan.npz", ds)
    for got in (phasestem.load(tmp_path / "any.h5", patterns_key="entry/data"), phasestem.load(tmp_path / "scan.npz")):
        rows = _table(got.settings_table())
        assert rows["aberrations.C10"] == "-40 Å file" and rows["aberrations.C30"] == "10000 Å file"
        assert rows["scan_origin"] == "(0.5, 0.25) Å file" and rows["semiangle"] == "15 mrad file"
    assert _table(phasestem.load(tmp_path / "any.h5", patterns_key="entry/data").settings_table())["dose"] == \
        "50000 e⁻/Å² file"


def test_a_parameter_file_naming_the_key_shows_every_held_value_and_warns_on_a_replacement(seed_file, caplog):
    from phasestem.recon.params import build_dataset, parse_params

    cfg = {"data": {"file": str(seed_file), "patterns_key": "dp_set_0"}, "optics": {"aberrations": {"C30": 1e5}}}
    with caplog.at_level(logging.WARNING, logger="phasestem"):
        ds = build_dataset(parse_params(cfg))
    rows = {s.field: s.line().split(None, 1)[1] for s in ds.metadata["settings"]}
    assert rows["optics.aberrations.C10"].split() == ["100", "Å", "file"]
    assert rows["optics.aberrations.C30"].split() == ["100000", "Å", "YAML", "(file:", "200000", "Å)"]
    assert rows["dose"].split() == ["50000", "e⁻/Å²", "file"]
    assert rows["optics.energy"].split() == ["300000", "eV", "file"]
    assert [r.message for r in caplog.records] == [
        f"optics.aberrations.C30: the YAML gives 100000 Å but {seed_file} holds 200000 Å; using the YAML's value "
        "(leave optics.aberrations.C30 out, or null, to use the file's)"]


def test_no_aberrations_is_a_line_of_the_table_too(tmp_path):
    from phasestem.recon.params import build_dataset, parse_params
    from phasestem.recon.synthetic import write_npz

    write_npz(tmp_path / "bare.npz", scan_shape=(4, 4))
    ds = build_dataset(parse_params({"data": {"file": str(tmp_path / "bare.npz"), "patterns_key": "patterns"},
                                     "optics": {"energy": 300e3, "semiangle": 15, "angular_sampling": 1.5},
                                     "scan": {"step": 1.0}}))
    rows = {s.field: s.line().split(None, 1)[1].split() for s in ds.metadata["settings"]}
    assert rows["optics.aberrations"] == ["none", "default"]


def test_auto_carries_the_files_aberrations_into_params_and_the_run_log(seed_file, tmp_path, capsys, caplog):
    out = tmp_path / "auto"
    with caplog.at_level(logging.WARNING, logger="phasestem"):
        rc = main(["reconstruct", str(seed_file), "--key", "dp_set_0", "--auto", "--rotation", "0", "--epochs", "1",
                   "--edge-threshold", "0.25", "--out", str(out), "--set", "run.batch_size=8"])
    assert rc == 0, capsys.readouterr().err
    params = yaml.safe_load((out / "params.yaml").read_text())
    assert params["run"]["batch_size"] == 8  # --set: a field of the params.yaml --auto writes (defect 5)
    assert params["optics"]["aberrations"]["C30"] == C30  # was {} : the run went on without it
    rows = _table((out / "reconstruct.log").read_text())
    assert rows["optics.aberrations.C30"] == "200000 Å file"
    assert rows["optics.aberrations.C10"].split()[-1] in ("file", "calibration")
    assert rows["optics.energy"] == "300000 eV file" and rows["scan.step"] == "2 Å file"
    assert rows["optics.semiangle"] == "12 mrad file" and rows["dose"] == "50000 e⁻/Å² file"
    # the calibrated detector pixel replaces the file's: one warning naming both values (or none: the same value)
    pixel = float(np.mean(phasestem.load(seed_file).angular_sampling))
    replaced = [r.message for r in caplog.records if r.message.startswith("optics.angular_sampling:")]
    if rows["optics.angular_sampling"].split()[0] != f"{pixel:.6g}":
        assert len(replaced) == 1 and f"holds {pixel:.6g} mrad/px; using the calibration's value" in replaced[0]
    if params["optics"]["aberrations"]["C10"] != 100.0:  # the parallax measured another C10: said so
        assert any(r.message.startswith("optics.aberrations.C10: the calibration gives") and "holds 100 Å" in
                   r.message for r in caplog.records)


def test_predict_shows_every_held_calibration(seed_file, tmp_path, caplog):
    from tiny_models import end2end_for

    model = end2end_for(seed_file, tmp_path / "e2e")
    with caplog.at_level(logging.INFO, logger="phasestem"):
        rc = main(["predict", str(seed_file), "--key", "dp_set_0", "--model", str(model), "--out", str(tmp_path),
                   "--no-png"])
    assert rc == 0
    start = next(i for i, r in enumerate(caplog.records) if r.message.startswith("data calibrations"))
    table = "\n".join(r.message for r in caplog.records[start + 1:start + 10])
    assert _table(table) == {**_expected(seed_file), **{}}
