"""A phase image as a prior inside the AD loop: a proximal pull of the object phase towards it after every epoch.

The hybrid route starts AD from a learned prediction and then forgets it; with a pull of strength λ the data steps
and the prior alternate (a proximal-gradient / plug-and-play scheme). After each epoch the object phase φ over the
image's region is replaced by the minimiser of ½‖x − φ‖² + (λ/2)‖x − p‖², i.e.

    φ ← (φ + λ·p') / (1 + λ),    p' = p + mean(φ − p) over the region,

p the prior image (rad, dataset frame) divided evenly over the slices. The offset match p' leaves the object's
constant phase (which the data cannot see) where the data steps put it, so the pull acts on structure only. λ = 0
is the plain hybrid; λ → ∞ keeps the prior. Pixels outside the image (the object's padding) are not pulled.

Use: ``model.LSQ_optimize(…, prior=PhasePrior(model, prediction, sampling, weight=0.1))`` (an engine callback,
:mod:`phasestem.recon.callbacks`; or in ``callbacks=[…]``).

Measured on abTEM held-out data (``benchmarks/learned/heldout.py``, 2 Å step, noise-free): it helps only as much as
the prior is good. From the truth low-passed to E_φ 0.15, λ = 0.5 takes AD to 0.61 × the best E_φ AD reaches from a
flat start (0.89 × without the pull); from the tiny End2End's predictions (E_φ 0.62–0.71) λ = 0.1, the
development half's choice, gave 0.221 on the validation half against 0.217 without it.

A learned target refreshed during the run (:class:`RefreshedPrior`) is the network's restoration of a plain-AD twin
of the run (:mod:`phasestem.recon.twin`: the phase the network was trained on, never the steered one); it may ask
for what the data do not support: its pull then stops once the data term rises ``patience`` epochs in a row (a
target made from the steered phase also decays its weight per refresh) and the run ends on its epoch with the lowest
data term from the prior's start, never a truth-picked one (:mod:`phasestem.recon.prior_stop`).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..base.errors import ConfigError
from .callbacks import Callback
from .prior_stop import (
    DEFAULT_PATIENCE,
    TOLERANCE,
    PullStop,
    after_stop,
    check_schedule,
    data_term,
    decayed_weight,
    default_decay,
    finish,
    judging_tolerance,
    resumed_line,
    uses_heldout,
)


class PhasePrior(Callback):
    """Proximal pull of ``model``'s object phase towards ``phase`` (2-D, rad, dataset frame, pixel ``sampling`` Å;
    default the object's pixel) with weight ``weight`` (λ ≥ 0) after every epoch of the runs it is a callback of."""

    def __init__(self, model, phase: np.ndarray | torch.Tensor, sampling: tuple[float, float] | None = None,
                 weight: float = 0.1):
        if not np.isfinite(weight) or weight < 0:
            raise ConfigError(f"prior weight must be a finite number ≥ 0, got {weight}")
        self.weight = float(weight)
        image, self.region = model.experiment.image_region(phase, sampling)
        self.prior = image.to(model.device) / model.n_slices  # (h, w) per slice, like set_initial_phase

    @torch.no_grad()
    def apply(self, model) -> None:
        """One pull of every object mode and slice towards the prior."""
        if self.weight == 0:
            return
        sy, sx = self.region
        phase = model.obj_phase[:, :, sy, sx]  # (K, S, h, w) view
        prior = self.prior.to(phase)
        offset = (phase - prior).mean(dim=(-2, -1), keepdim=True)
        phase.copy_((phase + self.weight * (prior + offset)) / (1 + self.weight))

    def on_record(self, loop) -> None:
        self(loop.model, loop.record)

    def __call__(self, model, record: dict) -> None:
        self.apply(model)
        record["prior_weight"] = self.weight


#: what a learned prior does with its target once its twin's held-count deviance passes its minimum
#: (``run.holdout_counts``): keep the best target ('freeze') or go on refreshing ('none')
AFTER_MIN = ("freeze", "none")
#: the default of :class:`RefreshedPrior` and of :func:`phasestem.learn.hybrid.restorer_prior`
DEFAULT_AFTER_MIN = "freeze"


class RefreshedPrior(Callback):
    """A :class:`PhasePrior` whose target is recomputed by a callable during the run (a learned prior, issue 48),
    with a pull that converges and a run that ends on its best state by the data (issue 68; rules in
    :mod:`phasestem.recon.prior_stop`).

    ``target_fn(model) -> (H, W)`` phase (rad) in the dataset frame at the object pixel (what
    :meth:`~phasestem.recon.model.Ptychography.phase_in_dataset_frame` gives) is called after epoch ``start`` and
    then every ``every`` epochs; from ``start`` on, every epoch is pulled towards the latest target with weight
    λ·``decay``^n after the n-th refresh (λ = ``weight``; ``decay`` None: 1 with a twin, 0.9 without), until the
    data term has risen (above its lowest by more than ``tolerance``) ``patience`` epochs in a row (0: never stops);
    at the end the run returns the epoch with the lowest data term from ``start`` on when the last lies more than
    ``tolerance`` above it (at least :data:`~phasestem.recon.prior_stop.MISFIT_TOLERANCE` on data without counting
    noise: :func:`~phasestem.recon.prior_stop.judging_tolerance`). The
    engine only sees a callback: the callable (e.g. a restoring network, built in :mod:`phasestem.learn.hybrid`)
    stays outside recon. Records ``prior_weight`` (the weight applied after the epoch), ``prior_active`` (1: pulled),
    ``prior_refreshed`` and ``prior_target_change`` (rad, RMS change of the target at a refresh, its mean matched:
    the fixed-point test); the first refresh and the end are logged (``phasestem.recon``) with ``name``, what the
    target is; ``returned`` holds the note on the epoch the run returned (None before the end). ``twin``: a
    :class:`~phasestem.recon.twin.TwinRun` (plain AD of the run's recipe): ``target_fn`` is then given the twin's
    model after the same epoch, never the steered one (a network trained on AD's epochs sees only those), and the
    twin ends with the run. ``after_min`` 'freeze' (with a twin and held-out counts, ``run.holdout_counts``): the
    target of the refresh whose twin predicted the held counts best is kept once a later one predicts them worse
    (:meth:`refresh`); 'none': the target is refreshed to the end."""

    def __init__(self, target_fn, every: int = 2, weight: float = 0.1, start: int = 2, name: str = "a callable",
                 decay: float | None = None, patience: int = DEFAULT_PATIENCE, tolerance: float = TOLERANCE,
                 twin=None, after_min: str = DEFAULT_AFTER_MIN):
        if int(every) < 1 or int(start) < 0:
            raise ConfigError(f"prior: every must be ≥ 1 and start ≥ 0, got every {every}, start {start}")
        if not np.isfinite(weight) or weight < 0:
            raise ConfigError(f"prior weight must be a finite number ≥ 0, got {weight}")
        decay = default_decay(decay, twin is not None)
        check_schedule(decay, patience)
        self.target_fn, self.every, self.weight, self.start = target_fn, int(every), float(weight), int(start)
        self.decay = float(decay)
        self.prior: PhasePrior | None = None
        self.name = name
        self.tolerance = float(tolerance)
        self.stop = PullStop(self.start, int(patience), tolerance)
        self.target_change: float | None = None
        self.returned: str | None = None
        self.twin = twin
        if after_min not in AFTER_MIN:
            raise ConfigError(f"prior: after_min must be one of {', '.join(AFTER_MIN)}, got {after_min!r}")
        self.after_min, self.held, self.batch_size = after_min, None, 1
        self.target_best: tuple[float, int, PhasePrior] | None = None  # (held deviance, epoch, target) of the best
        self.frozen_at: int | None = None

    @property
    def uses_held_counts(self) -> bool:
        """Whether held-out counts (``run.holdout_counts``) judge this prior's twin (:meth:`refresh`), so that the
        engine adds no stop of its own: the pull moves the phase off the data's best fit on purpose (on abTEM
        crystals at 10⁴ e⁻ the held deviance of the pulled run was lowest at epoch 3 while its E_φ fell from 0.457
        to 0.432 by epoch 8), so the pulled run's own deviance cannot choose its epoch. Without a twin, or with
        ``after_min`` 'none', the engine's held-count stop applies."""
        return self.twin is not None and self.after_min != "none"

    def weight_at(self, epoch: int) -> float:
        """The pull's weight after ``epoch``: 0 before the start and once the pull stopped, else λ·γ^n."""
        if epoch < self.start or (self.stop.off_from is not None and epoch >= self.stop.off_from):
            return 0.0
        return decayed_weight(self.weight, self.decay, self.every, self.start, epoch)

    def on_start(self, loop) -> None:
        self.stop.tolerance = judging_tolerance(loop, self.tolerance)
        self.held, self.batch_size = getattr(loop, "heldout_counts", None), int(loop.run.batch_size)
        self.stop.replayed = False  # the history is read at this call's first epoch (after a resume's restore)
        self.returned = None

    def on_record(self, loop) -> None:
        if self.weight == 0:
            return
        model, record = loop.model, loop.record
        epoch, heldout = int(record["epoch"]), uses_heldout(loop)
        if not self.stop.replayed and (last := self.stop.replay(model.loss_history[:-1], loop.losses, heldout)):
            logging.getLogger("phasestem.recon").info("%s", resumed_line(self.stop, last, self.weight_at(last)))
        if not heldout and epoch >= self.start:  # this epoch's data loss judges the state it started from
            value = data_term(record, loop.losses, heldout=False)
            self.stop.offer(epoch - 1, value, loop.snapshot)
            if self.stop.observe(epoch, value):  # a stop acts at once: no pull after this epoch
                after_stop(loop, self.stop)
        self(model, record)

    def on_epoch_end(self, loop) -> None:
        if self.weight and uses_heldout(loop):  # the held-out loss comes after the pull: it stops the next one
            self.stop.observe(int(loop.record["epoch"]), data_term(loop.record, loop.losses, heldout=True),
                              pulled=True)

    def on_end(self, loop) -> None:
        if self.twin is not None:
            self.twin.close()
        if self.weight:
            ran = int(loop.epoch)
            last = ran if self.stop.off_from is None else min(ran, self.stop.off_from - 1)
            weights = (self.weight_at(ran), decayed_weight(self.weight, self.decay, self.every, self.start, last))
            self.returned = finish(loop, self.stop, weights, self.target_change)
            loop.model.prior_returned = self.returned

    def __call__(self, model, record: dict) -> None:
        epoch = int(record["epoch"])
        weight = self.weight_at(epoch)
        record["prior_weight"], record["prior_active"] = weight, float(weight > 0)
        if weight == 0:
            return
        refreshed = ((epoch - self.start) % self.every == 0 or self.prior is None) and self.frozen_at is None
        if refreshed:
            if self.prior is None:
                logging.getLogger("phasestem.recon").info(
                    "learned prior (%s): target after epoch %d, then every %d epochs; pull weight %g, × %g per "
                    "refresh, stopped once the data term rises %d epochs in a row", self.name, epoch, self.every,
                    weight, self.decay, self.stop.patience)
            score = self.refresh(model, weight)
            if self.target_change is not None:
                record["prior_target_change"] = self.target_change
            if score is not None:
                record["prior_target_heldout"] = score
        if self.frozen_at is not None:
            record["prior_target_frozen"] = float(self.frozen_at)
        self.prior.weight = weight
        self.prior.apply(model)
        record["prior_refreshed"] = float(refreshed)

    def refresh(self, model, weight: float) -> float | None:
        """A new target from ``target_fn``; ``target_change``: its RMS change (rad, means matched) from the last.
        With held-out counts (``run.holdout_counts``) and ``after_min`` 'freeze', each refresh scores its source (the
        twin, plain AD of the same recipe) by the held counts' deviance
        (:func:`~phasestem.recon.count_split.held_counts_nll`): once a refresh scores above the lowest so far, the
        twin has begun to fit the noise, so the target of the lowest is kept for the rest of the run and the twin
        stops. Returns the score (None: not scored)."""
        if self.frozen_at is not None:
            return None
        old = None if self.prior is None else self.prior.prior
        epoch = int(model.epoch)
        source = model if self.twin is None else self.twin.advance_to(epoch)
        self.prior = PhasePrior(model, self.target_fn(source), None, weight)
        new = self.prior.prior
        if old is not None and old.shape == new.shape:
            diff = (new - old) * model.n_slices
            self.target_change = float((diff - diff.mean()).square().mean().sqrt())
        if self.held is None or not self.uses_held_counts:
            return None
        from .count_split import held_counts_nll

        score = held_counts_nll(source, self.held, self.batch_size)
        if self.target_best is None or score <= self.target_best[0]:
            self.target_best = (score, epoch, self.prior)
            return score
        best, best_epoch, self.prior = self.target_best
        self.frozen_at = epoch
        self.twin.close()
        logging.getLogger("phasestem.recon").info(
            "learned prior: the twin's held-count deviance was lowest after epoch %d (%.7g per pattern) and rose by "
            "epoch %d (%.7g): it fits the noise from there, so the target stays the restoration of its epoch %d and "
            "the twin stops", best_epoch, best, epoch, score, best_epoch)
        return score


def prior_disagreement(callbacks, model) -> str | None:
    """The run log's line on how far the learned prior's last target (a :class:`PhasePrior` or
    :class:`RefreshedPrior` among ``callbacks``) lies from the final phase in units of the data's σ
    (``model.uncertainty``): the share of the pulled pixels beyond 3 σ, where the network asks for what the data do not
    support. None without a prior or σ maps."""
    from ..metrics import chance_beyond
    from .uncertainty import SIGNIFICANT, change_in_sigma, unsupported_fraction

    priors = [c if isinstance(c, PhasePrior) else c.prior for c in callbacks
              if isinstance(c, PhasePrior) or (isinstance(c, RefreshedPrior) and c.prior is not None)]
    if not priors or model.uncertainty is None:
        return None
    prior = priors[-1]
    sy, sx = prior.region
    with torch.no_grad():
        phase = model.obj_phase[0, :, sy, sx].sum(0).cpu().numpy()
    target = prior.prior.cpu().numpy() * model.n_slices
    sigma = model.uncertainty.sigma_sum[sy, sx]
    share = unsupported_fraction(change_in_sigma(phase, target, sigma, model.uncertainty.constrained[sy, sx]),
                                 SIGNIFICANT)
    return (f"learned prior: its last target differs from the final phase by more than {SIGNIFICANT:g} σ of the data "
            f"on {100 * share:.2f} % of the constrained pixels it pulls ({100 * chance_beyond(SIGNIFICANT):.2f} % "
            "would be chance; more: features of the network the data do not support)")
