"""Automatic-differentiation ptychography (PtyRAD-class engine, CDTools-style interface).

Python interface::

    from phasestem.recon import Ptychography
    model = Ptychography.from_dataset(dataset, n_slices=8, slice_thickness=10, n_probe_modes=4)
    for i, loss in enumerate(model.Adam_optimize(20, dataset, batch_size=32)):
        print(i, loss)
    model.save_results("results.h5")

YAML interface: ``phasestem reconstruct PARAMS.yaml`` (schema in :mod:`phasestem.recon.params`).
Modules: model (state), losses, constraints, engine (epoch generator), params (YAML schema),
results (HDF5), figures, tune (Optuna), distributed (data parallel), commands (CLI), synthetic (small
simulated datasets for tests and demos), prior (a phase image, e.g. a learned prediction, as a proximal pull on the
object after every epoch).
"""
from .constraints import Constraints
from .engine import NonFiniteLossError, load_checkpoint, optimize, save_checkpoint
from .losses import LossConfig
from .model import Ptychography
from .schedule import ParamSchedule

__all__ = ["Constraints", "LossConfig", "NonFiniteLossError", "ParamSchedule", "Ptychography", "load_checkpoint",
           "optimize", "save_checkpoint"]
