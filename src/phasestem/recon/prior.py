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
development half's choice, gave 0.221 on the validation half against 0.217 without it. The pull lasts to the last
epoch, so keep the best epoch rather than the final one.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..base.errors import ConfigError
from .callbacks import Callback


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


class RefreshedPrior(Callback):
    """A :class:`PhasePrior` whose target is recomputed by a callable during the run (a learned prior, issue 48).

    ``target_fn(model) -> (H, W)`` phase (rad) in the dataset frame at the object pixel (what
    :meth:`~phasestem.recon.model.Ptychography.phase_in_dataset_frame` gives) is called after epoch ``start`` and
    then every ``every`` epochs; from ``start`` on, every epoch is pulled towards the latest target with weight
    ``weight`` (λ). The engine only sees a callback: the callable (e.g. a restoring network, built in
    :mod:`phasestem.learn.hybrid`) stays outside recon. Records ``prior_weight`` and ``prior_refreshed``; the first
    refresh is logged (``phasestem.recon``) with ``name``, what the target is."""

    def __init__(self, target_fn, every: int = 2, weight: float = 0.1, start: int = 2, name: str = "a callable"):
        if int(every) < 1 or int(start) < 0:
            raise ConfigError(f"prior: every must be ≥ 1 and start ≥ 0, got every {every}, start {start}")
        if not np.isfinite(weight) or weight < 0:
            raise ConfigError(f"prior weight must be a finite number ≥ 0, got {weight}")
        self.target_fn, self.every, self.weight, self.start = target_fn, int(every), float(weight), int(start)
        self.prior: PhasePrior | None = None
        self.name = name

    def on_record(self, loop) -> None:
        self(loop.model, loop.record)

    def __call__(self, model, record: dict) -> None:
        epoch = int(record["epoch"])
        if epoch < self.start or self.weight == 0:
            return
        refreshed = (epoch - self.start) % self.every == 0 or self.prior is None
        if refreshed:
            if self.prior is None:
                logging.getLogger("phasestem.recon").info(
                    "learned prior (%s): target after epoch %d, then every %d epochs; pull weight %g", self.name,
                    epoch, self.every, self.weight)
            self.prior = PhasePrior(model, self.target_fn(model), None, self.weight)
        self.prior.apply(model)
        record["prior_weight"] = self.weight
        record["prior_refreshed"] = float(refreshed)


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
