"""Constraints whose ``enabled`` is 'auto' and that a rule decides on the object, where each is first due:
``obj_clamp`` (positivity, for a multislice crystal: :func:`~phasestem.recon.crystal.obj_clamp_rule`),
``obj_shear`` (the slices' shear into the tilt, for a mistilted crystal: :func:`~phasestem.recon.shear.obj_shear_rule`)
and ``obj_blur`` (the dose's blur, left 'auto' by :func:`~phasestem.recon.dose_regularisation.resolve_obj_blur`
where the dose asks for one: off for a crystal, :func:`~phasestem.recon.dose_regularisation.obj_blur_crystal_rule`).
``probe_aperture: auto`` is decided from the data before the first epoch instead
(:mod:`phasestem.recon.aperture_rule`)."""
from __future__ import annotations

import logging
from collections.abc import Callable

from .crystal import obj_clamp_rule
from .dose_regularisation import obj_blur_crystal_rule
from .shear import obj_shear_rule

log = logging.getLogger("phasestem.recon")

#: name → (the rule (model, settings) → (on, why), the fewest slices for which the decision is logged)
RULES: dict[str, tuple[Callable, int]] = {
    "obj_clamp": (lambda model, s: obj_clamp_rule(model), 2),
    "obj_shear": (lambda model, s: obj_shear_rule(model, s.max_walk), 3),
    "obj_blur": (lambda model, s: obj_blur_crystal_rule(model, s.sigma_px()), 1),
}


def resolve_decided(model, constraints, epoch: int):
    """``constraints`` with each 'auto' of :data:`RULES` decided: by its rule (logged, for runs of enough slices to have
    a say) at the first epoch it is due, on the object the epochs so far left, and kept in ``model.history.decided``
    (and so in its checkpoints): a resumed run, or another call on the same model, goes on as decided, since the
    constraint changes what the rule measured (a straightened or positive object). Unchanged where nothing is 'auto' or
    not yet due; the caller's settings are never modified."""
    updates = {}
    for name, (rule, logged_from) in RULES.items():
        settings = getattr(constraints, name)
        if settings.enabled != "auto":
            continue
        if name not in model.history.decided:
            if not settings.scheduled(epoch):
                continue
            model.history.decided[name], why = rule(model, settings)
            model.history.notes[name] = f"{why} (epoch {epoch})"
            if model.n_slices >= logged_from:
                log.info("constraints.%s auto (epoch %d): %s", name, epoch, why)
        updates[name] = settings.model_copy(update={"enabled": model.history.decided[name]})
    return constraints.model_copy(update=updates) if updates else constraints
