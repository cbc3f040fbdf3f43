"""Automatic-differentiation ptychography (PtyRAD-class engine, CDTools-style interface).

Python interface::

    from phasestem.recon import Ptychography
    model = Ptychography.from_dataset(dataset, n_slices=8, slice_thickness=10, n_probe_modes=4)
    for i, loss in enumerate(model.Adam_optimize(20, dataset, batch_size=32)):
        print(i, loss)
    model.save_results("results.h5")

YAML interface: ``phasestem reconstruct PARAMS.yaml`` (schema in :mod:`phasestem.recon.params`).
Modules: model (state), losses, constraints, engine (epoch generator), params (YAML schema),
results (HDF5), figures, tune (Optuna), distributed (data parallel), synthetic (small simulated
datasets for tests and demos), prior (a phase image, e.g. a learned prediction, as a proximal pull on the
object after every epoch).
"""
from __future__ import annotations

from ..base.lazy import lazy_exports

#: public name -> "module:attribute", imported on first use (PEP 562): the command line imports this package
#: to register its sub-commands without torch
API = {
    "Constraints": "phasestem.recon.constraints:Constraints",
    "LossConfig": "phasestem.recon.settings.losses:LossConfig",
    "NonFiniteLossError": "phasestem.recon.engine:NonFiniteLossError",
    "ParamSchedule": "phasestem.recon.schedule:ParamSchedule",
    "Ptychography": "phasestem.recon.model:Ptychography",
    "load_checkpoint": "phasestem.recon.engine:load_checkpoint",
    "optimize": "phasestem.recon.engine:optimize",
    "save_checkpoint": "phasestem.recon.engine:save_checkpoint",
}

__all__ = sorted(API)


__getattr__, __dir__ = lazy_exports(API, __name__)
