"""A run that names no loss term gets one from its data (issue 52): detector counts → the amplitude and Poisson terms,
half each, said in the run log and recorded as a setting whose source is the data; anything named is kept. Checked on
the independent NumPy simulator's counted scans, against the Gaussian term a user naming nothing used to get."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from numpy_cases import numpy_scan, tiny_params
from numpy_cases import pearson as _pearson

from phasestem.io import hdf5
from phasestem.io.counts import counts_decision
from phasestem.recon import Ptychography
from phasestem.recon.data_losses import losses_for_data
from phasestem.recon.losses import COUNTED_WEIGHTS
from phasestem.recon.settings.losses import LossConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WINDOW, SAMPLING, SCAN, STEP, DEFOCUS = 64, 0.2, (16, 16), 0.5, 80.0


@pytest.fixture(scope="module")
def scans():
    """The same specimen noise-free and as counts at 1e3 e⁻/pattern (3 slices), with its truth."""
    kw = dict(atoms_per_area=0.15, n_slices=3, dz=8.0)
    clean, truth, _ = numpy_scan(5, WINDOW, SAMPLING, SCAN, STEP, DEFOCUS, **kw)
    counted, truth_c, _ = numpy_scan(5, WINDOW, SAMPLING, SCAN, STEP, DEFOCUS, dose=1e3, **kw)
    assert np.array_equal(truth, truth_c)
    return clean, counted, truth


def _why(dataset) -> str | None:
    """The reason io.counts gives when ``dataset``'s patterns are counts, None when they are not."""
    decision = counts_decision(dataset)
    return decision.reason if decision.counted else None


def test_counts_are_recognised_by_dose_dtype_or_whole_numbers_and_nothing_else(scans):
    clean, counted, _ = scans
    assert _why(clean) is None  # noise-free fractions
    assert _why(counted) == "the first 16 patterns hold whole numbers only"
    as_int = dataclasses.replace(counted, patterns=np.asarray(counted.patterns).astype(np.uint16))
    assert _why(as_int) == "the patterns are stored as integers (uint16)"
    stored = dataclasses.replace(clean, metadata={"stored_dtype": "uint16"})  # read as float32 from uint16 storage
    assert _why(stored) == "the patterns are stored as integers (uint16)"
    assert _why(dataclasses.replace(clean, metadata={"dose": 250.0})) == \
        "the file records a dose of 250 e⁻/Å²"
    assert _why(dataclasses.replace(clean, metadata={"dose": -1.0})) is None  # noise-free, recorded
    dark = dataclasses.replace(clean, patterns=np.zeros_like(np.asarray(clean.patterns)))
    assert _why(dark) is None  # whole numbers, but nothing counted
    rounded = np.asarray(counted.patterns, np.float64)
    rounded[0, 3, 10, 10] += 0.5  # one fraction among the counts: not counts
    assert _why(dataclasses.replace(counted, patterns=rounded)) is None
    said = dataclasses.replace(clean, metadata={"counts": True})  # the parameter file's data.counts wins
    assert _why(said) == "data.counts in the parameter file"
    assert counts_decision(dataclasses.replace(as_int, metadata={"counts": False})).counted is False
    assert counts_decision(clean).reason == "no dose recorded, stored as float32, values not whole counts"


def test_a_named_term_is_kept_and_an_unnamed_one_on_counts_becomes_the_counted_term(scans):
    clean, counted, _ = scans
    named = LossConfig(poisson=1.0)
    assert losses_for_data(named, counted) == (named, None)
    unnamed = LossConfig(power=0.4)
    assert losses_for_data(unnamed, clean) == (unnamed, None)
    got, why = losses_for_data(unnamed, counted)
    assert {n: got.weight(n) for n in got.active()} == COUNTED_WEIGHTS and got.power == 0.4 and why


def test_counted_data_naming_no_term_reconstruct_better_than_with_the_gaussian_term(scans, caplog):
    """At 1e3 e⁻/pattern on 3 slices the data-chosen term (what a user naming nothing now gets) ends closer to the
    truth than the Gaussian term (what they got before), and the log says which ran and why."""
    _, counted, truth = scans
    r = {}
    for name, losses in (("default", None), ("gaussian", LossConfig(gaussian=1.0))):
        model = Ptychography.from_dataset(counted, n_slices=3, slice_thickness=8.0)
        model.set_learning_rates(positions=0.0)
        with caplog.at_level(logging.INFO, logger="phasestem.recon"):
            list(model.LSQ_optimize(8, counted, batch_size=32, losses=losses, progress=False))
        terms = {k for k in model.loss_history[-1] if k in ("gaussian", "poisson")}
        assert terms == ({"gaussian", "poisson"} if name == "default" else {"gaussian"})
        r[name] = _pearson(model.phase_in_dataset_frame(truth.shape), truth)
    assert "losses: gaussian 0.5, poisson 0.5 (chosen from the data: the first 16 patterns hold whole numbers " \
           "only; no term named)" in caplog.text
    assert r["default"] > r["gaussian"] + 0.01, r


def test_the_run_log_and_results_say_the_data_chose_the_loss(scans, tmp_path, capsys):
    from phasestem.recon.results import load_results
    from phasestem.recon.run import run_reconstruction

    _, counted, _ = scans
    path = hdf5.write(tmp_path / "counted.h5", counted)
    model = run_reconstruction(tiny_params(path, STEP, tmp_path / "r", n_epochs=1))
    line = ("losses: gaussian 0.5, poisson 0.5 (chosen from the data: the first 16 patterns hold whole numbers only; "
            "no term named), power 0.5")
    log_text = (tmp_path / "r" / "reconstruct.log").read_text()
    assert line in log_text and line in capsys.readouterr().out
    assert "data.counts" in log_text and "the first 16 patterns hold whole numbers only" in log_text  # the table
    assert log_text.count("phase σ") == 1 and "counts because the first 16 patterns" in log_text  # σ: same decision
    assert {k for k in model.loss_history[-1] if k in ("gaussian", "poisson")} == {"gaussian", "poisson"}
    prov = load_results(tmp_path / "r" / "results.h5")["provenance"]
    assert prov["losses.poisson"]["source"] == "data" and "whole numbers" in prov["losses.poisson"]["note"]
    assert prov["losses.poisson"]["value"] == prov["losses.gaussian"]["value"] == 0.5
    assert prov["data.counts"]["source"] == "data" and "whole numbers" in prov["data.counts"]["note"]


def test_a_dosed_file_of_intensities_takes_its_counts_per_pattern_from_the_dose(scans):
    """Normalised intensities whose file records a dose (counts by io.counts' rule): the noise model, its σ and the
    low-dose rules take dose × step area electrons per pattern, not the patterns' total; whole counts keep theirs."""
    from phasestem.recon.uncertainty import run_uncertainty

    clean, counted, _ = scans
    dosed = dataclasses.replace(clean, metadata={**clean.metadata, "dose": 250.0})
    model = Ptychography.from_dataset(dosed)
    list(model.LSQ_optimize(1, dosed, batch_size=64, progress=False))
    assert model.counts_per_pattern == pytest.approx(250.0 * STEP * STEP)  # 62.5 e⁻, not the total of ≈ 1
    assert "Poisson counts, 62.5 per pattern" in run_uncertainty(model, dosed)
    model = Ptychography.from_dataset(counted)
    list(model.LSQ_optimize(1, dataclasses.replace(counted, metadata={**counted.metadata, "dose": 1.0}),
                            batch_size=64, progress=False))
    assert model.counts_per_pattern == pytest.approx(np.asarray(counted.patterns).sum((-2, -1)).mean(), rel=1e-5)
