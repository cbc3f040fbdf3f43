"""When a learned prior's pull ends, and which state the run returns (issue 68, item 4): a prior that never ends
worse than it was.

A restorer refreshed inside AD (:class:`~phasestem.recon.prior.RefreshedPrior`) can pull the object towards
structure the data do not support; the data term then rises while the pull goes on. The rules, from the data
alone (never a truth):

* the target is the network's restoration of a plain-AD twin of the run (:class:`~phasestem.recon.twin.TwinRun`,
  ``reconstruct --prior``), what the network was trained on: it converges as the twin's AD converges, and the
  weight is held (:data:`TWIN_DECAY`). A target made from the steered phase itself (no twin) moves with the pull,
  so there the weight decays: λ_n = λ·γ^n after the n-th refresh (n = (epoch − start) // every; γ = ``decay``,
  default :data:`DEFAULT_DECAY`), Σλ_n = λ / (1 − γ) is finite and the iteration settles where the data put it;
* the pull stops for good once the data term has risen ``patience`` epochs in a row (default
  :data:`DEFAULT_PATIENCE`): an epoch counts as risen when its data term lies more than :data:`TOLERANCE` above the
  lowest since the prior's start (the epoch-to-epoch wobble of a plain run is ≈ 1 %; a good target, even the truth,
  moves the data loss of noisy data by less, a harmful one by 3–50 %: ``benchmarks/learned/prior_harmful.py``); on
  data without counting noise the margin is :data:`MISFIT_TOLERANCE` (:func:`judging_tolerance`: there the data
  term's floor is the model's misfit, which a truth-like phase raises too);
* the state after epoch e is judged by the data term of epoch e + 1, which started from it. When the pull stops
  and the lowest so far is a state the prior pulled, a low-dose run (counted, ≤ 3e4 counts per pattern: where AD
  fits the noise, the rule of ``run.holdout: auto``) ends there: AD alone would go on from a state the data found
  worse and fit the noise that the pull held off, which the data term cannot see
  (``benchmarks/learned/prior_harmful.py``, 1e4 e⁻, a target that turns harmful at epoch 10: 2.5 × the best
  epoch's E_φ when AD went on, 1.03 × when the run ends); other runs go on without the pull. When it is the
  state before the first pull (no pull ever lowered the data term), that state is restored and the run goes on
  without the pull as plain AD (the epoch count goes on, as after a step-size back-off);
* at the end the run returns the state with the lowest data term from the prior's start on (ties: the later)
  whenever the last epoch's lies more than :data:`TOLERANCE` above it, its epoch count and histories rewound to it,
  so it is exactly what a run of that many epochs returns; within the tolerance the end is kept as it is (a good
  prior's last pulls are worth keeping). One log line says which epoch, its data term, why, and the final weight.

The data term (:func:`data_term`) is the epoch's data loss (the fit's Gaussian and Poisson terms at their weights,
regularisers left out), or the held-out positions' loss when the run holds some out (``run.holdout``): then the
held-out stop (:class:`~phasestem.recon.holdout.HeldOutStop`) already keeps the lowest's state and rewinds to it,
and the prior only stops its pull. The rises and the stop are a function of the loss history, so a resumed run (or
a second call on the same model) rebuilds them; only the kept states of the epochs before the resume are not in
the checkpoint, and the run log says that the search for the best one restarts there.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from ..base.errors import ConfigError
from .holdout import HeldOutStop, rewind_to
from .optimizers import clear_moments
from .schedule import LOW_DOSE_COUNTS

log = logging.getLogger("phasestem.recon")

#: the pull's weight after the n-th refresh is λ·γ^n; 0.9: λ 0.5 falls to 0.19 at the tenth refresh (epoch 20 of
#: --prior's defaults) and the weights sum to 10 λ. Chosen on ``benchmarks/learned/prior_harmful.py`` (1e4 e⁻, two
#: seeds): 0.8 ends a truth-pulled run at 1.5 × the E_φ of 0.9, and lets a harmful pull the data cannot see (the
#: negated phase) end at 1.48–1.52 × the run's best epoch instead of 1.64–1.82 ×
DEFAULT_DECAY = 0.9
#: λ of a learned prior's pull (``reconstruct --prior``'s ``--prior-weight``), the network restoring a plain-AD twin.
#: λ 2 ended lower on the abTEM development half with restore-seed-fine (first samples: E_φ 0.125 / 0.118 / 0.137
#: noise-free against 0.153 / 0.192 / 0.194) but pulls noise-free data more than MISFIT_TOLERANCE from their fit, so
#: the data term stops it (a validation crystal: stopped at epoch 19, the run back at AD's first epoch, 0.348);
#: λ 0.5 moved a development crystal's data term by 7 % in 20 epochs
DEFAULT_WEIGHT = 0.5
#: the weight's factor per refresh when the network restores a plain-AD twin's phase
#: (:class:`~phasestem.recon.twin.TwinRun`): no decay. Its target converges as the twin's AD does, so the pull needs
#: no shrinking weight to settle; on the abTEM development half (restore-seed-fine, noise-free) λ held at 0.5 ended
#: at E_φ 0.153 against 0.179 with × 0.9 (``benchmarks/learned/README.md``)
TWIN_DECAY = 1.0
#: the pull stops once the data term has risen this many epochs in a row
DEFAULT_PATIENCE = 2
#: relative margin above the lowest data term since the prior's start that counts as a rise (and that the last
#: epoch may lie above the lowest before the run is rewound)
TOLERANCE = 0.02
#: the margin of a rise on data without counting noise (noise-free simulations, intensities): their data term's floor
#: is the forward model's misfit, which a truth-like phase raises as well. On abTEM crystals at the seed geometry
#: (noise-free, restore-seed-fine restoring a plain-AD twin, λ 0.5) a development crystal's pulled run ended with its
#: data loss 7 % above the twin's while its E_φ fell to 0.19, and three invented 0.6 rad columns moved it no more
#: (7.5 %); on exact-model scans (``benchmarks/learned/prior_harmful.py``, noise-free) a harmful target raises it by
#: far more (the engine's own back-off fires at 1.5 ×)
MISFIT_TOLERANCE = 0.25
#: the loss-history column that marks, in the record of a kept epoch, the later epoch that stopped the pull
STOP_KEY = "prior_stopped_at"


def check_schedule(decay: float, patience: int) -> None:
    """One line for a decay outside (0, 1] or a patience below 0 (0: the pull never stops)."""
    if not (np.isfinite(decay) and 0 < decay <= 1):
        raise ConfigError(f"prior decay must lie in (0, 1] (1: no decay), got {decay}")
    if int(patience) != patience or patience < 0:
        raise ConfigError(f"prior patience must be a whole number ≥ 0 (0: the pull never stops), got {patience}")


def default_decay(decay: float | None, twin: bool) -> float:
    """``decay``, or when None the default: :data:`TWIN_DECAY` with a twin, :data:`DEFAULT_DECAY` without."""
    return float(decay) if decay is not None else TWIN_DECAY if twin else DEFAULT_DECAY


def decayed_weight(weight: float, decay: float, every: int, start: int, epoch: int) -> float:
    """λ·γ^n, n = (epoch − start) // every: the pull's weight after ``epoch`` (≥ ``start``)."""
    return float(weight) * float(decay) ** ((int(epoch) - int(start)) // int(every))


def uses_heldout(loop) -> bool:
    """Whether the run holds positions out of the fit (a :class:`HeldOutStop` among its callbacks)."""
    return any(isinstance(cb, HeldOutStop) for cb in loop.callbacks)


def data_term(record: dict, losses, heldout: bool) -> float:
    """An epoch's data term from its ``record``: the held-out loss (``heldout``) or the fit's data terms at their
    weights (``losses``, a :class:`~phasestem.recon.losses.LossConfig`), the whole loss when the record has none."""
    if heldout:
        return float(record.get("heldout", math.nan))
    parts = [losses.weight(k) * float(record[k]) for k, term in losses.terms.items() if term.data_term and k in record]
    return float(sum(parts)) if parts else float(record["loss"])


class PullStop:
    """From epoch ``start`` on: the lowest data term, the rises above it (:data:`TOLERANCE`), the epoch that
    stopped the pull (``stopped_at``; ``off_from``: the first epoch not pulled) and the kept state (``best``:
    epoch, data term, state dict) of this call."""

    def __init__(self, start: int, patience: int, tolerance: float = TOLERANCE):
        self.start, self.patience, self.tolerance = int(start), int(patience), float(tolerance)
        self.lowest = math.inf
        self.rises = 0
        self.stopped_at: int | None = None
        self.off_from: int | None = None
        self.best: tuple[int, float, dict] | None = None
        self.first_epoch: int | None = None  # this call's first epoch from the start on (where the search began)
        self.last_value = math.nan
        self.replayed = False

    def risen(self, value: float) -> bool:
        """Whether ``value`` lies more than the tolerance above the lowest data term so far (NaN: risen)."""
        return not math.isfinite(value) or value > self.lowest * (1 + self.tolerance)

    def observe(self, epoch: int, value: float, pulled: bool = False) -> bool:
        """Count a rise of the data term ``value`` of ``epoch``; True when this epoch stops the pull (from this
        epoch on, or from the next when its pull already ran: ``pulled``, the held-out loss)."""
        if epoch < self.start:
            return False
        self.rises = self.rises + 1 if self.risen(value) else 0
        self.lowest = min(self.lowest, value) if math.isfinite(value) else self.lowest
        if self.stopped_at is None and self.patience and self.rises >= self.patience:
            self.stopped_at, self.off_from = epoch, epoch + int(pulled)
            return True
        return False

    def offer(self, epoch: int, value: float, params: dict) -> None:
        """The state after ``epoch`` (``params``, what the next epoch started from) judged by that next epoch's data
        term ``value``: kept when it is the lowest so far (ties: the later)."""
        self.last_value = value
        if self.first_epoch is None:
            self.first_epoch = epoch
        if math.isfinite(value) and (self.best is None or value <= self.best[1]):
            self.best = (epoch, value, params)

    def replay(self, history: list[dict], losses, heldout: bool) -> int | None:
        """Rebuild the lowest, the rises and the stop from the records of earlier epochs (a resumed run, a second
        call); the kept state starts anew with this call. Returns the last earlier epoch of the prior (None:
        none)."""
        self.replayed = True
        self.best, self.first_epoch, self.last_value = None, None, math.nan
        earlier = [h for h in history if int(h["epoch"]) >= self.start and "prior_active" in h]
        self.lowest, self.rises, self.stopped_at, self.off_from = math.inf, 0, None, None
        for h in earlier:
            self.observe(int(h["epoch"]), data_term(h, losses, heldout), pulled=heldout)
        marked = [h for h in history if STOP_KEY in h]  # a run that ended on a kept state before its stop
        if marked and self.stopped_at is None:
            self.stopped_at, self.off_from = int(marked[-1][STOP_KEY]), int(marked[-1]["epoch"]) + 1
        return int(history[-1]["epoch"]) if earlier or marked else None


def judging_tolerance(loop, tolerance: float = TOLERANCE) -> float:
    """The margin above the lowest data term that counts as a rise in this run: ``tolerance`` where the data's floor
    is their noise (counted data, or held-out positions), else at least :data:`MISFIT_TOLERANCE` (the floor is the
    forward model's own misfit, which a truth-like phase raises too)."""
    if loop.losses.weight("poisson") > 0 or uses_heldout(loop):
        return float(tolerance)
    return max(float(tolerance), MISFIT_TOLERANCE)


def fits_noise(loop) -> bool:
    """Whether AD is expected to fit the noise: counted data (a Poisson term) of at most
    :data:`~phasestem.recon.schedule.LOW_DOSE_COUNTS` per pattern (the rule of ``run.holdout: auto``)."""
    return loop.losses.weight("poisson") > 0 and getattr(loop.model, "counts_per_pattern", math.inf) \
        <= LOW_DOSE_COUNTS


def after_stop(loop, stop: PullStop) -> None:
    """The pull just stopped (after ``loop.epoch``, the data loss). The lowest data term so far is a pulled state:
    at low dose (:func:`fits_noise`) the run ends (:func:`finish` returns that state), else AD goes on from where it
    is. It is the state before the first pull: that state is restored and the run goes on without the pull (one
    log line)."""
    if stop.best is None:
        return
    epoch, value, params = stop.best
    if epoch >= stop.start:
        loop.stop = fits_noise(loop)
        log.info("learned prior: the data loss lay more than %g %% above its lowest %d epochs in a row (epoch %d): "
                 "the pull stops%s", 100 * stop.tolerance, stop.patience, loop.epoch,
                 "; low dose, so the run ends on its best state" if loop.stop else "; AD goes on without it")
        return
    loop.model.load_state_dict(params)
    if loop.optimizer is not None:  # moments of the pulled steps would push the same way again
        clear_moments(loop.optimizer)
    log.warning("learned prior: the data loss lay more than %g %% above its lowest %d epochs in a row (epoch %d) and "
                "no pull ever lowered it: restored the state after epoch %d (before the first pull; data loss %.6g "
                "in the epoch after it) and the run goes on without the pull", 100 * stop.tolerance, stop.patience,
                loop.epoch, epoch, value)


def resumed_line(stop: PullStop, last: int, weight: float) -> str:
    """The run log's line when the prior continues earlier epochs (up to ``last``)."""
    pull = (f"the pull stopped after epoch {stop.stopped_at}" if stop.stopped_at is not None
            else f"the pull goes on at weight {weight:g} ({stop.rises} rise(s) of the data term in a row so far)")
    return (f"learned prior: continues after epoch {last}: {pull}; the state with the lowest data term is searched "
            f"again from epoch {last} on (the states of earlier epochs are not kept across a resume)")


def pull_ending(stop: PullStop, term: str, ended: bool) -> str:
    """Why the pull ended as it did (``ended``: and the run with it), for the final line."""
    if stop.stopped_at is not None:
        return (f"the pull stopped after epoch {stop.stopped_at}: the {term} lay more than {100 * stop.tolerance:g} % "
                f"above its lowest {stop.patience} epochs in a row{' and the run ended there' if ended else ''}")
    return "the pull went on to the end"


def finish(loop, stop: PullStop, weights: tuple[float, float], target_change: float | None) -> str | None:
    """At the end of a call: return the kept state (rewinding the model and its histories, as the held-out stop
    does) when the last epoch's data term lies more than the tolerance above it, else keep the end; the held-out
    stop chooses when the run has one. One log line with ``weights`` (the weight after the last epoch, that of the
    last pull). Returns the note on the returned epoch (None: no epoch from the prior's start ran in this call)."""
    model, heldout = loop.model, uses_heldout(loop)
    ran = int(loop.epoch)
    if ran < stop.start:
        return None
    change = "" if target_change is None else f"; the target moved {target_change:.3g} rad (RMS) at its last refresh"
    final = f"final weight {weights[0]:g}" + (f" (the last pull's {weights[1]:g})" if weights[0] != weights[1] else "")
    ended = not heldout and loop.stop and stop.stopped_at == ran
    tail = f"{pull_ending(stop, 'held-out loss' if heldout else 'data loss', ended)}; {final}{change}"
    if heldout:
        note = f"epoch {model.epoch} of {ran}, chosen by the held-out stop (lowest held-out loss)"
        log.info("learned prior: the run returns %s; %s", note, tail)
        return note
    if stop.best is None:
        return None
    epoch, value, params = stop.best
    judged = f"the data loss of epoch {epoch + 1}, which started from it, {value:.6g}"
    if stop.last_value <= value * (1 + stop.tolerance):
        note = (f"epoch {ran}, the last: its data loss {stop.last_value:.6g} lies within {100 * stop.tolerance:g} % "
                f"of the lowest since the prior's start ({value:.6g}, epoch {epoch + 1})")
        log.info("learned prior: the run ends on %s: kept as it is; %s", note, tail)
        return note
    rewind_to(model, loop.state, epoch, params)
    if stop.stopped_at is not None:  # a resumed run keeps the pull stopped
        model.loss_history[-1][STOP_KEY] = float(stop.stopped_at)
    rise = 100 * (stop.last_value / value - 1)
    note = (f"epoch {epoch} of {ran}: lowest data loss since the prior's start ({judged}); the last epoch's lay "
            f"{rise:.3g} % above it")
    log.info("learned prior: returned the state after epoch %d of %d run (by %s: the lowest since the prior's "
             "start; the last epoch's lay %.3g %% above it); %s", epoch, ran, judged, rise, tail)
    return note
