"""Specimen mistilt and the step-size back-off, on data of the independent NumPy multislice
(``benchmarks/independent/numpy_multislice.py``, nothing of phasestem's simulator).

* A thick specimen (16 nm) tilted by (1.5, −2) mrad: the default reconstruction refines a global tilt
  (:func:`phasestem.recon.schedule.tilt_matters`) and its log says so; a thin one leaves the tilt frozen.
* A step too long for the data backs off (best state restored, learning rates halved, a warning line) instead of
  running away; ``run.backoff_factor: 0`` restores the old stop.
"""
import logging

import numpy as np
import pytest
from numpy_cases import numpy_scan
from numpy_cases import pearson as _pearson

from phasestem.dataset import FourDSTEM
from phasestem.physics.optics import angular_sampling_for
from phasestem.recon import Ptychography
from phasestem.recon.engine import DivergenceError
from phasestem.recon.schedule import tilt_matters

WINDOW, SAMPLING, ENERGY, SEMIANGLE, SCAN, STEP = 48, 0.25, 300e3, 20.0, (10, 10), 1.0
N_SLICES, DZ, DEFOCUS, TILT = 8, 20.0, -60.0, (1.5, -2.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tilted():
    ds, truth, _ = numpy_scan(7, WINDOW, SAMPLING, SCAN, STEP, DEFOCUS, atoms_per_area=0.08, n_slices=N_SLICES,
                              dz=DZ, tilt=TILT, energy=ENERGY, semiangle=SEMIANGLE)
    return ds, truth


def _run(ds, truth, epochs=12, **rates):
    model = Ptychography.from_dataset(ds, n_slices=N_SLICES, slice_thickness=DZ)
    model.set_learning_rates(positions=0.0, **rates)
    for _ in model.LSQ_optimize(epochs, ds, batch_size=16, progress=False, lr_decay="cosine"):
        pass
    phase = model.phase_in_dataset_frame(truth.shape)
    return model, _pearson(phase, truth)


def test_tilt_is_refined_by_default_on_a_thick_specimen_and_frozen_on_a_thin_one():
    assert tilt_matters(8, 20.0, 0.25) and tilt_matters(12, 15.0, 0.2)  # 16 nm, 18 nm
    assert not tilt_matters(1, 300.0, 0.2)  # one slice: a tilt is not seen
    assert not tilt_matters(8, 10.0, 0.2)  # 8 nm at 0.2 Å: 1 mrad moves the beam 0.4 px
    ds = FourDSTEM(patterns=np.ones((4, 4, 32, 32), np.float32), energy=ENERGY, scan_step=(STEP, STEP),
                   angular_sampling=angular_sampling_for(ENERGY, SAMPLING, (32, 32)), semiangle=SEMIANGLE)
    assert Ptychography.from_dataset(ds, n_slices=8, slice_thickness=20.0).schedules["tilt"].resolved_lr(
        "tilt", "lsq") == pytest.approx(0.1)
    assert Ptychography.from_dataset(ds, n_slices=2, slice_thickness=10.0).schedules["tilt"].resolved_lr(
        "tilt", "lsq") == 0.0


def test_the_default_run_refines_the_tilt_of_a_thick_specimen_and_says_so(tilted, caplog):
    """Only that the tilt is refined and logged: a constant tilt is nearly degenerate with shifting each slice by
    its depth × θ (the data of this small field cannot tell them apart), so neither the tilt found nor a better
    summed phase is claimed here; the accuracy on the benchmark's tilted cases is in benchmarks/independent."""
    ds, truth = tilted
    with caplog.at_level(logging.INFO, logger="phasestem.recon"):
        model, r_default = _run(ds, truth, epochs=4)
    assert "tilt 0.1" in caplog.text  # the run log names what it refines
    assert "the patterns alone do not fix it" in caplog.text  # and that the tilt it finds is not a measurement
    assert float(np.abs(model.tilt.detach().numpy()).max()) > 0.01  # it moved off the untilted start
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="phasestem.recon"):
        frozen, _ = _run(ds, truth, epochs=2, tilt=0.0)
    assert not frozen.tilt.detach().numpy().any()
    assert "lsq refines" in caplog.text and "do not fix it" not in caplog.text


def test_a_step_too_long_backs_off_instead_of_stopping(tilted, caplog):
    ds, truth = tilted
    model = Ptychography.from_dataset(ds, n_slices=N_SLICES, slice_thickness=DZ)
    model.set_learning_rates(positions=0.0, tilt=0.0, obj_phase=3.0, probe=1.0)
    losses = []
    with caplog.at_level(logging.WARNING, logger="phasestem.recon"):
        for loss in model.LSQ_optimize(8, ds, batch_size=16, progress=False):
            losses.append(loss)
    assert "halved every learning rate" in caplog.text
    assert len(losses) == 8 and np.isfinite(model.phase_in_dataset_frame()).all()
    final = model.loss_history[-1]["loss"]
    assert final < losses[0], losses  # it ends below its first epoch instead of running away

    model = Ptychography.from_dataset(ds, n_slices=N_SLICES, slice_thickness=DZ)
    model.set_learning_rates(positions=0.0, tilt=0.0, obj_phase=3.0, probe=1.0)
    with pytest.raises(DivergenceError):
        for _ in model.LSQ_optimize(8, ds, batch_size=16, progress=False, backoff_factor=0):
            pass
