"""The object on a grid finer than the detector's, held to that grid's anti-aliased band (``constraints.obj_band``).

With ``model.upsampling`` u > 1 the object pixel is the detector's λ/(N·Δk) divided by u, so the object grid
holds frequencies the detector barely sees: an object frequency q is measured where the probe's disk (semi-angle
α) shifted by q overlaps the unshifted one or the detector, which near 2α is a sliver of the disks' edges and
beyond it the detector's dark-field corners alone. Measured at the seed geometry (300 keV, 30 mrad, 64 pixels of
0.984 mrad, u = 2: 0.156 Å pixels, a 42 mrad band), noise-free abTEM crystals of the development half: without the
band the object's spectrum at 50–90 mrad grew about 30 × in 40 epochs and E_φ on the object's grid rose from
0.23–0.43 at epoch 5 to 0.27–0.79 at 40, while on the detector's grid it moved by at most 0.03; held to the band
E_φ falls with the epochs on both grids (benchmarks/learned/README.md, "AD's best before and after the finer
grid"). Counted data, which the dose's blur already smooths, ran the same to three digits.
:func:`obj_band_rule` decides ``obj_band: auto``; :func:`phasestem.recon.constraints.band_limit_object` applies it
(the anti-aliasing mask of :func:`phasestem.physics.optics.antialias_mask`, the one the propagator uses, on the
object's grid).
"""
from __future__ import annotations

import logging

from ..physics import optics
from .settings.constraints import Constraints

log = logging.getLogger("phasestem.recon")


def obj_band_rule(upsampling: int, sampling: tuple[float, float], energy: float) -> tuple[bool, str]:
    """(on, why: one line for the run log) of ``constraints.obj_band: auto`` for an object on pixels ``sampling``
    (Å) that are ``upsampling`` × finer than the detector's, at ``energy`` (eV)."""
    band = optics.band_limit_mrad(sampling, energy)
    pixel = max(sampling)
    if int(upsampling) <= 1:
        return False, f"off: the object is on the detector's pixel {pixel:.4g} Å (model.upsampling 1)"
    return True, (f"on: the object on {pixel:.4g} Å pixels (model.upsampling {int(upsampling)}) is held to their "
                  f"anti-aliased band, {band:.3g} mrad, every epoch: beyond it the detector sees the object only "
                  f"weakly (the disks' edges, its dark field's corners)")


def resolve_obj_band(model, constraints: Constraints) -> Constraints:
    """``constraints`` with ``obj_band: auto`` decided for ``model`` by :func:`obj_band_rule`: logged where it is
    on, its reason kept in ``model.history.notes`` (results.h5 provenance). Unchanged when ``obj_band.enabled`` is
    true or false."""
    band = constraints.obj_band
    if band.enabled != "auto":
        return constraints
    on, why = obj_band_rule(model.upsampling, tuple(float(s) for s in model.sampling), float(model.energy))
    if on:
        log.info("constraints.obj_band auto: %s (obj_band.enabled: false turns it off)", why)
    model.history.notes["obj_band"] = why
    return constraints.model_copy(update={"obj_band": band.model_copy(update={"enabled": on})})

