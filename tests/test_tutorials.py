"""The tutorial notebooks run from start to end and reach what their text says (executed on copies)."""
from __future__ import annotations

import json

import h5py
import numpy as np
from notebook_run import ROOT, cell_text, execute_notebook

from phasestem.metrics import figures_of_merit, truth_on_grid
from phasestem.recon.results import load_results

#: E_φ of the tutorial's lsq reconstruction over the scanned field (measured 0.285 after 10 epochs; SSB start 0.623)
MAX_PHASE_ERROR = 0.40


def test_tutorial_data_is_small_and_holds_counts_and_truth():
    path = ROOT / "notebooks" / "data" / "abtem_srtio3.h5"
    assert path.stat().st_size < 2e6
    with h5py.File(path) as f:
        assert f["patterns"].shape == (16, 16, 64, 64) and f["patterns"].dtype == np.uint16
        assert f["truth/phase"].ndim == 2 and f["truth/positions"].shape == (256, 2)
    for name in ("tutorial_reconstruct.ipynb", "tutorial_learned.ipynb"):
        nb = json.loads((ROOT / "notebooks" / name).read_text())
        assert (ROOT / "notebooks" / name).stat().st_size < 200_000, name
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), f"{name}: strip outputs"


def _phase_error_from_results(results_file, data_file) -> float:
    """E_φ of results.h5 against the file's truth, recomputed here in the object frame (not the notebook's code)."""
    res = load_results(results_file)
    s = tuple(res["attrs"]["sampling"])
    pos = np.asarray(res["positions_initial"]) + np.asarray(res["attrs"]["origin"])  # Å, object frame
    with h5py.File(data_file) as f:
        truth = truth_on_grid(f["truth/phase"][...], float(f["truth/phase"].attrs["sampling_A"]),
                              f["truth/positions"][...], pos, s, res["phase_sum"].shape, periodic=True)
    lo = np.floor(pos.min(0) / s).astype(int)
    hi = np.ceil(pos.max(0) / s).astype(int) + 1
    field = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
    return figures_of_merit(res["phase_sum"][field], truth[field], sampling=s)["phase_error"]


def test_reconstruct_tutorial_runs_and_reaches_the_truth(tmp_path):
    nb, folder = execute_notebook("tutorial_reconstruct.ipynb", tmp_path)
    out = folder / "tutorial_output"
    for png in ("inspect.png", "calibration/calibration.png", "ssb_start.png", "run/reconstruction.png",
                "run/compare.png"):
        assert (out / png).stat().st_size > 10_000, png
    assert (out / "calibration" / "params.yaml").is_file()
    with h5py.File(out / "run" / "results.emd") as f:  # EMD 1.0 for py4DSTEM / HyperSpy
        assert f.attrs.get("version_major") == 1
    fom = json.loads((out / "run" / "figures_of_merit.json").read_text())
    assert fom["phase_error"] < MAX_PHASE_ERROR, fom
    assert fom["phase_error"] < fom["phase_error_ssb"] - 0.15, fom  # the iterations improve on the SSB start
    assert 0.3 < fom["frc_resolution"] < 1.0, fom  # Å
    assert abs(_phase_error_from_results(out / "run" / "results.h5", folder / "data" / "abtem_srtio3.h5")
               - fom["phase_error"]) < 0.02, fom
    text = cell_text(nb)
    assert "rotation 2" in text and "transpose True" in text  # the calibration found the rotation and transpose
    assert "epoch 10: loss" in text


def test_learned_tutorial_simulates_trains_predicts_and_evaluates(tmp_path):
    import csv

    nb, folder = execute_notebook("tutorial_learned.ipynb", tmp_path)
    out = folder / "tutorial_output" / "learned"
    assert sorted(p.name for p in (out / "data").glob("simulation_data*.h5")) == ["simulation_data1.h5",
                                                                                  "simulation_data2.h5"]
    for network in ("patch", "stitch", "end2end"):
        assert any((out / "runs" / network / "best").iterdir()), network
    for png in ("data/simulation.png", "prediction.png", "eval/examples.png"):
        assert (out / png).stat().st_size > 10_000, png
    rows = list(csv.DictReader((out / "eval" / "metrics.csv").open()))
    assert len(rows) == 1  # the tiny config's test split: 1 of 4 samples
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("psnr", "ssim", "phase_error"))
    text = cell_text(nb)
    assert "| model |" in text and "| training-mean image |" in text
    for network in ("patch", "stitch", "end2end"):
        assert f"{network:8s} 3 epochs" in text
