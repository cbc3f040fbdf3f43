"""``phasestem calibrate-sigma`` (issue 65, phasestem.recon.sigma_check): a parametric bootstrap of a finished run
against its σ, run end to end from a run folder; its noise draws; its refusals; and, on the independent NumPy
multislice, its spread against the spread of truly independent noise realisations."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil

import h5py
import numpy as np
import pytest
import yaml
from numpy_cases import numpy_scan

from phasestem.cli import main
from phasestem.io import hdf5
from phasestem.recon.params import parse_params
from phasestem.recon.run import run_reconstruction
from phasestem.recon.sigma_check import load_run, predicted_patterns, realisation, spread_statistics, summed_phase

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WINDOW, SAMPLING, SCAN, STEP, DEFOCUS, DOSE = 32, 0.2, (16, 16), 1.0, 50.0, 1e4


def _params(data_file, out_dir, epochs: int):
    """The defaults (lsq, the data's own loss terms) on ``data_file``, without the optics check, checkpoints or bar."""
    return parse_params({"data": {"file": str(data_file)},
                         "run": {"n_epochs": epochs, "progress": False, "check_optics": False,
                                 "checkpoint_every": 0, "out_dir": str(out_dir)}})


def _clean_scan(seed: int = 5):
    """A 16 × 16 scan of 32² patterns (normalised to 1) of the independent NumPy multislice."""
    ds, _, _ = numpy_scan(seed, WINDOW, SAMPLING, SCAN, STEP, DEFOCUS, atoms_per_area=0.3)
    return ds


def _counted(clean, seed: int):
    return clean._replace(patterns=np.random.default_rng(seed).poisson(np.asarray(clean.patterns) * DOSE)
                          .astype(np.float32))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The folder of a 3-epoch run on 1e4 e⁻ counts."""
    root = tmp_path_factory.mktemp("calibrate_sigma")
    data = hdf5.write(root / "counted.h5", _counted(_clean_scan(), 0))
    run_reconstruction(_params(data, root / "run", 3))
    return root / "run"


def test_the_command_runs_from_a_run_folder_and_writes_its_report(finished_run, tmp_path, capsys):
    out = tmp_path / "sigma.json"
    assert main(["calibrate-sigma", str(finished_run), "--realisations", "2", "--epochs", "2",
                 "--out-file", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines[:2]] == ["realisation 1/2 (seed 0)", "realisation 2/2 (seed 1)"]
    assert lines[2].startswith("κ = median spread / σ = ") and lines[3].startswith("spread itself: median ")
    assert "s per realisation; report" in lines[4] and len(lines) == 5
    report = json.loads(out.read_text())
    assert report["realisations"] == 2 and report["epochs"] == 2 and report["seeds"] == [0, 1]
    assert report["run_epoch"] == 3 and report["noise"].startswith("Poisson, ")
    assert report["counts_per_pattern"] == pytest.approx(DOSE, rel=0.01)
    assert math.isfinite(report["kappa"]) and report["kappa"] > 0
    assert report["kappa"] == report["spread_over_sigma"]["median"]
    assert report["spread_over_sigma"]["p10"] < report["kappa"] < report["spread_over_sigma"]["p90"]
    assert 0 < report["pairs_within_2sigma"] <= 1 and report["constrained_pixels"] > 1000
    assert report["spread_rad"]["median"] > 0 and report["sigma_median_rad"] > 0  # the realisations differ
    assert all(d > 0 for d in report["rms_from_run_rad"])  # and differ from the run
    assert report["refined"] == {"probe": True, "positions": False}  # the defaults refine the probe, not positions
    assert len(report["seconds_per_realisation"]) == 2 and report["seconds_per_realisation_mean"] > 0
    assert f"{report['kappa']:.3g}" in lines[2] and report["verdict"] in lines[4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sigma.json"]  # the realisations' folder removed


def test_fixed_probe_and_positions_move_neither(finished_run, tmp_path):
    out = tmp_path / "fixed.json"
    assert main(["calibrate-sigma", str(finished_run / "results.h5"), "--realisations", "2", "--epochs", "1",
                 "--probe-positions", "fixed", "--seed", "7", "--out-file", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["refined"] == {"probe": False, "positions": False} and report["seeds"] == [7, 8]
    assert report["probe_positions"] == "fixed"


def test_realisations_are_draws_of_the_fitted_model_one_seed_each(finished_run):
    run = load_run(finished_run)
    predicted = predicted_patterns(run.model)
    assert predicted.shape == (256, WINDOW, WINDOW)
    assert predicted.sum((1, 2)).mean() == pytest.approx(1.0, rel=0.02)  # the engine's normalisation
    a, b, a_again = (np.asarray(realisation(run, predicted, s).patterns) for s in (0, 1, 0))
    assert np.array_equal(a, a_again) and not np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(run.dataset.patterns))  # not the run's own data
    assert np.array_equal(a, np.rint(a)) and abs(a.sum((2, 3)).mean() / run.counts - 1) < 0.01
    # Poisson: the counts' variance is their mean, pixel by pixel
    mean = predicted.reshape(a.shape) * run.counts
    bright = mean > 50
    assert np.mean((a - mean)[bright] ** 2 / mean[bright]) == pytest.approx(1.0, abs=0.05)
    gaussian = dataclasses.replace(run, noise_sigma=3.0)
    g = np.asarray(realisation(gaussian, predicted, 0).patterns) - predicted.reshape(a.shape) * run.mean_total
    assert g.std() == pytest.approx(3.0, rel=0.02) and abs(g.mean()) < 0.05


def test_a_direct_method_start_is_computed_again_from_each_realisation(finished_run, tmp_path):
    from phasestem.recon.auto import apply_init
    from phasestem.recon.sigma_check import direct_start, start_description

    run = load_run(finished_run)
    params = apply_init(run.params.model_copy(deep=True), "dpc", tmp_path / "run")  # as reconstruct --init dpc
    assert start_description(params) == "dpc start computed again from each realisation"
    predicted = predicted_patterns(run.model)
    (p0, s0), (_, s1) = (direct_start(params.model_copy(deep=True), realisation(run, predicted, seed),
                                      tmp_path / f"r{seed}") for seed in (0, 1))
    own = np.load(tmp_path / "run" / "init_dpc.npy")
    assert p0.model.initial_phase.file == (tmp_path / "r0" / "init_dpc.npy").resolve()
    assert s0.shape == s1.shape == own.shape and not np.array_equal(s0, s1) and not np.array_equal(s0, own)
    assert np.corrcoef(s0.ravel(), own.ravel())[0, 1] > 0.5  # the same specimen, other noise
    assert start_description(run.params) == "the run's start (no initial phase)"


def test_the_spread_of_two_is_their_difference_over_root_two():
    rng = np.random.default_rng(0)
    phases = rng.normal(0, 0.1, (2, 8, 8)) + np.array([0.3, -0.2])[:, None, None]  # constants are removed
    mask = np.ones((8, 8), bool)
    stats = spread_statistics(phases, np.full((8, 8), 0.1), mask)
    p = phases - phases.mean((1, 2), keepdims=True)
    assert stats["spread_rad"]["median"] == pytest.approx(np.median(np.abs(p[0] - p[1]) / math.sqrt(2)))
    assert stats["kappa"] == pytest.approx(stats["spread_rad"]["median"] / 0.1)


def _error_line(capsys, argv) -> str:
    assert main(argv) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_refusals_are_one_line(finished_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no results.h5" in _error_line(capsys, ["calibrate-sigma", str(empty)])
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(finished_run / "results.h5", bare / "results.h5")
    with h5py.File(bare / "results.h5", "a") as f:
        del f.attrs["config"]
    assert "the run's settings are unknown" in _error_line(capsys, ["calibrate-sigma", str(bare)])
    uncounted = tmp_path / "uncounted"
    uncounted.mkdir()
    shutil.copy(finished_run / "results.h5", uncounted / "results.h5")
    cfg = yaml.safe_load((finished_run / "config.yaml").read_text())
    cfg["data"]["counts"] = False
    (uncounted / "config.yaml").write_text(yaml.safe_dump(cfg))
    line = _error_line(capsys, ["calibrate-sigma", str(uncounted)])
    assert "not counts" in line and "run.noise_sigma is not given" in line and "no σ to calibrate" in line
    line = _error_line(capsys, ["calibrate-sigma", str(finished_run), "--realisations", "1"])
    assert "--realisations 1: at least 2" in line
    line = _error_line(capsys, ["calibrate-sigma", str(finished_run), "--out-file", str(finished_run / "x.png")])
    assert "the report is JSON" in line
    assert not (finished_run / "calibrate_sigma.json").exists()


def _independent_spread(clean, data_dir, constrained, seeds, epochs) -> float:
    """The median spread (rad) over ``constrained`` of independent Poisson realisations of ``clean``, each
    reconstructed as the run was."""
    phases = []
    for seed in seeds:
        data = hdf5.write(data_dir / f"counted_{seed}.h5", _counted(clean, seed))
        phases.append(summed_phase(run_reconstruction(_params(data, data_dir / f"run_{seed}", epochs))))
    return spread_statistics(np.stack(phases), np.ones(constrained.shape), constrained)["spread_rad"]["median"]


def test_the_bootstrap_spread_is_the_spread_of_independent_realisations(tmp_path):
    """NumPy multislice at 1e4 e⁻ (nothing of phasestem's simulator): K = 3 realisations drawn from the fitted model
    spread like 3 independent Poisson realisations of the specimen, reconstructed the same way (6 epochs), within a
    factor 1.6 in the median over the run's constrained pixels."""
    clean, epochs = _clean_scan(11), 6
    data = hdf5.write(tmp_path / "counted_0.h5", _counted(clean, 100))
    run_reconstruction(_params(data, tmp_path / "run", epochs))
    report_file = tmp_path / "bootstrap.json"
    assert main(["calibrate-sigma", str(tmp_path / "run"), "--realisations", "3", "--out-file",
                 str(report_file)]) == 0
    bootstrap = json.loads(report_file.read_text())["spread_rad"]["median"]
    with h5py.File(tmp_path / "run" / "results.h5", "r") as f:
        constrained = f["uncertainty/constrained"][...].astype(bool)
    independent = _independent_spread(clean, tmp_path, constrained, (101, 102, 103), epochs)
    assert 1 / 1.6 <= bootstrap / independent <= 1.6, (bootstrap, independent)
