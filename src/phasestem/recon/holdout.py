"""A stopping rule from the data alone: scan positions held out of the fit, whose loss tells when the
reconstruction starts to fit the noise.

At low dose the object soon takes up the Poisson noise of the patterns it is fitted to: the fit's own loss keeps
falling while the image gets worse. A few positions (``run.holdout``, spread at random over the scan, the same in
every epoch) are left out of every mini-batch; after each epoch the model predicts their patterns (no gradients)
and the same loss terms score the prediction. Their loss falls while the object improves and rises once it takes
up noise, because the noise of patterns it never saw cannot be learnt. :class:`HeldOutStop` keeps the state of the
epoch with the lowest held-out loss and stops the run after ``run.holdout_patience`` epochs without a new lowest;
at the end the model is that state (its epoch count and histories rewound to it), with one log line.

``auto`` holds out 5 % of the positions where over-fitting is to be expected and the scan is large enough to lose
them: counted data (a Poisson term in the loss) of at most 3e4 counts per pattern and ≥ 400 positions.

Off by default: the held-out loss measures how well the model *predicts* unseen patterns, which is not the phase
error. On the low-dose cases of ``benchmarks/independent`` (1e3 and 1e4 e⁻, 0.5 Å step, 96² windows) the kept
state is within 0.0002 of the run's peak r, but on a 20 × 20 scan of 64² windows at 1e3 e⁻
(``tests/test_recon_low_dose.py``, amplitude refined) the held-out loss is lowest after epoch 1 (of 12) while r
still rises from 0.685 to 0.785: the object takes up fine-scale noise that worsens the predicted patterns while the
coarse phase improves (both measured with the amplitude refined, before it was held at low dose by default).
"""
from __future__ import annotations

import logging
import math

import torch

from .callbacks import Callback
from .losses import total_loss
from .prepared import PreparedData
from .run_state import snapshot
from .schedule import LOW_DOSE_COUNTS

log = logging.getLogger("phasestem.recon")

#: ``run.holdout: auto``: the fraction held out and the fewest positions it applies to (low dose:
#: :data:`~phasestem.recon.schedule.LOW_DOSE_COUNTS`)
AUTO_FRACTION, AUTO_MIN_POSITIONS = 0.05, 400


def holdout_fraction(setting, losses, counts: float, n: int, world: int = 1) -> float:
    """The fraction of positions held out for ``run.holdout`` (a number or 'auto'); 0 under several processes."""
    if world > 1:
        return 0.0
    if setting == "auto":
        counted = losses.weight("poisson") > 0
        return AUTO_FRACTION if counted and counts <= LOW_DOSE_COUNTS and n >= AUTO_MIN_POSITIONS else 0.0
    return float(setting)


def split_positions(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(fitted, held out) flat indices: ``round(fraction·n)`` positions drawn with ``seed`` (at least 1 when the
    fraction is positive; None when none are held out), both sorted."""
    k = min(n - 1, max(1, round(fraction * n))) if fraction > 0 else 0
    if k <= 0:
        return torch.arange(n), None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(10007 * seed + 17))
    held = perm[:k].sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[held] = False
    return torch.arange(n)[mask], held


@torch.no_grad()
def heldout_loss(model, data, losses, held: torch.Tensor, batch_size: int) -> float:
    """Mean data loss per pattern (the fit's Gaussian and Poisson terms at their weights) of the held-out positions
    ``held`` under the current model."""
    total = 0.0
    for idx in held.split(batch_size):
        idx_d = idx.to(model.device)
        meas, meas_p = data.batch(idx_d if isinstance(data, PreparedData) else idx,
                                  need_meas=losses.weight("poisson") > 0)
        _, parts = total_loss(losses, model(idx_d), meas, meas_p, None, None, data.counts, len(idx))
        total += float(sum(losses.weight(k) * v for k, v in parts.items() if losses.terms[k].data_term)) * len(idx)
    return total / len(held)


class HeldOutStop(Callback):
    """After every epoch: the held-out loss (``record['heldout']``); keep the lowest's state, stop after
    ``run.holdout_patience`` epochs without a new lowest, and end on the lowest's state (see the module)."""

    def __init__(self, held: torch.Tensor, batch_size: int):
        self.held, self.batch_size = held, batch_size

    def score(self, loop) -> float:
        """The held-out loss of the model as it stands (lower: better)."""
        return heldout_loss(loop.model, loop.data, loop.losses, self.held, self.batch_size)

    def on_epoch_end(self, loop) -> None:
        model, state = loop.model, loop.state
        value = self.score(loop)
        loop.record["heldout"] = value
        if math.isfinite(value) and value < state.holdout_best_loss:
            state.holdout_best_loss = value
            state.holdout_best = (loop.epoch, snapshot(model.state_dict()))
            state.holdout_waited = 0
        else:
            state.holdout_waited += 1
        if state.holdout_waited >= loop.run.holdout_patience:
            loop.stop = True

    def on_end(self, loop) -> None:
        model, state = loop.model, loop.state
        if state.holdout_best is None or state.holdout_best[0] == model.epoch:
            return
        epoch, params = state.holdout_best
        ran = model.epoch
        rewind_to(model, state, epoch, params)
        log.info("held-out positions (%d): their loss was lowest after epoch %d of %d run (%.5g); %s, kept that "
                 "state", len(self.held), epoch, ran, state.holdout_best_loss,
                 "stopped" if loop.stop else "rewound")


def rewind_to(model, state, epoch: int, params: dict) -> None:
    """``model`` back to the kept state ``params`` of ``epoch``: its epoch count, loss and geometry histories cut
    there, and the divergence check's best (in ``state``, the run's :class:`~phasestem.recon.run_state.RunState`)
    dropped, since it may lie after the state now kept."""
    model.load_state_dict(params)
    model.history.rewind(epoch)
    state.best = None
