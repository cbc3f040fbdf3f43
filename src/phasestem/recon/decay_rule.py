"""``run.lr_decay: auto``: the learning-rate decay a run gets from its data (issue 69), decided when the run starts
and, for a strong scatterer, once more on the object its first epoch left (:func:`crystal_decay`). The decay's shape
is :func:`phasestem.recon.optimizers.decay_factor`'s."""
from __future__ import annotations

import logging

import numpy as np

from .aperture_rule import DARK_FIELD_FROM, STRONG_DARK_FIELD, dark_field_or_none
from .crystal import crystal_test

log = logging.getLogger("phasestem.recon")

#: epochs over which ``lr_decay: auto`` lowers the steps of counted data to ``lr_final``
COUNTED_DECAY_EPOCHS = 20
#: ``model.history.decided`` key of :func:`crystal_decay`'s decision (kept in checkpoints)
CRYSTAL_DECAY_KEY = "run.lr_decay_crystal"


def resolve_lr_decay(kind: str, losses, mean_pattern: np.ndarray | None = None, decided: dict | None = None
                     ) -> tuple[str, int | None, str | None]:
    """``run.lr_decay`` for this run as (kind, the epochs the decay spans, None: the whole run; for 'auto', why),
    from the data term ``losses`` (a :class:`~phasestem.recon.losses.LossConfig`) and the data's mean pattern (H, W).
    ``decided``: the model's earlier decisions (``model.history.decided``); a strong scatterer :func:`crystal_decay` has
    already found a crystal (a coarse start's epochs, a resumed run) goes on with the cosine, its reason kept (why
    None).

    'auto': where the term has a Poisson part (counted data, whose noise a run at full steps goes on fitting) a
    cosine over the first :data:`COUNTED_DECAY_EPOCHS` epochs (the whole run when shorter) to ``lr_final``: the
    noise is fitted once the data's information is used up, which the dose sets, not the epochs asked for. The run
    ends with its decay (the engine stops a longer run there, logged): every later epoch fits the noise further.
    With ``lr_final`` held after the decay r fell from 20 to 40 epochs (``benchmarks/independent/counted_default.py``,
    development half: dev_s4_1e3 0.827 → 0.810; validation val_s5_1e3 0.876 → 0.866); with the steps halved every
    epoch after it (the dose's blur shrinking with them) still 0.8268 → 0.8250 and 0.8762 → 0.8750, and a quarter
    per epoch 0.8268 → 0.8261 (development), so no schedule of later epochs was worth running; only the weak films at
    1e5 e⁻ gained (val_w6_1e5 0.9343 → 0.9404 with ``lr_final`` held, → 0.9355 settling), which ``run.lr_decay:
    cosine`` (the whole run's decay) still gives a user who asks for it.
    Without
    one, 'none' for a strong scatterer (more than :data:`~phasestem.recon.aperture_rule.STRONG_DARK_FIELD` of the mean
    intensity beyond the disk, the probe-aperture rule's measure), whose slices full steps to the last epoch fit
    further (from the second epoch the cosine after all for a crystal, :func:`crystal_decay`), and the whole run's
    cosine otherwise, where steps held high fit what the model cannot explain (position
    errors: val_distort of ``benchmarks/independent`` 0.457 → 0.418 at 20 without the decay). Chosen on the
    strong-phase development cases (8 × 10 Å, summed peak 2.4 rad, and 10 × 8 Å, 2.8 rad, noise-free, 2.0 and 2.1 %
    beyond the disk; r at 20 lsq iterations 0.9971 → 0.9979 and 0.9918 → 0.9943; issue 69)."""
    if kind != "auto":
        return kind, None, None
    if losses.weight("poisson") > 0:
        return "cosine", COUNTED_DECAY_EPOCHS, (
            f"cosine over the first {COUNTED_DECAY_EPOCHS} epochs to lr_final, where the run ends (a Poisson term: "
            "counted data, whose noise later epochs go on fitting; run.lr_decay: cosine spans the whole run)")
    dark = dark_field_or_none(mean_pattern)
    if dark is None:
        return "cosine", None, "cosine (no Poisson term, no bright-field disk to measure the scattering by)"
    what = f"{100 * dark:.2g} % of the mean pattern beyond {DARK_FIELD_FROM:g} × the disk"
    if dark > STRONG_DARK_FIELD:
        if (decided or {}).get(CRYSTAL_DECAY_KEY):
            return "cosine", None, None
        return "none", None, (f"none (no Poisson term and a strong scatterer, {what}: full steps to the last epoch "
                              "fit its slices further; run.lr_decay: cosine for noisy intensities)")
    return "cosine", None, (f"cosine (no Poisson term, {what}, not a strong scatterer: steps held high would fit "
                            "what the model cannot explain)")


def crystal_decay(model, epoch: int) -> str:
    """The decay of a strong scatterer whose ``lr_decay: auto`` resolved to 'none', from epoch ``epoch`` (≥ 2): the
    whole run's 'cosine' when the object its first epoch left is a crystal (:func:`~phasestem.recon.crystal.
    crystal_test`), else 'none'. Decided once and kept in ``model.history.decided`` (a resumed run goes on as decided);
    the switch is logged and replaces the run's reason. The cosine's first epoch is 1 × as no decay's, so a crystal runs
    as it did before 'auto'. Chosen on the development crystals of ``benchmarks/independent`` (abTEM, 20 iterations, r
    at 20 without the decay against with it): dev_thick_gaas 0.643 against 0.696, dev_thick_crystal 0.554 against
    0.559 (dev_tilt_crystal 0.665 against 0.624 and dev_thick_near_axis 0.552 against 0.545 went the other way): runs
    on thick crystals peak early and then drift, and full steps let them drift further."""
    if CRYSTAL_DECAY_KEY not in model.history.decided:
        crystal, words = crystal_test(model)
        model.history.decided[CRYSTAL_DECAY_KEY] = bool(crystal)
        if crystal:
            why = (f"cosine from epoch {epoch} (a strong scatterer without counts, but a crystal: {words}; full steps "
                   "let a thick crystal's run drift from where its first epochs led)")
            log.info("run.lr_decay auto: %s", why)
            model.history.notes["run.lr_decay"] = why
    return "cosine" if model.history.decided[CRYSTAL_DECAY_KEY] else "none"
