"""Reconstruction losses: a weighted sum whose components are reported separately.

All data terms compare model intensities ``I`` (B, ny, nx) with measured ``D`` (B, ny, nx),
both in the same (normalised) units and pixel order. Each term is a *sum over the batch*
divided by ``n_total`` (the full mini-batch size), so the shares computed by several
processes add up to the single-process loss (see :mod:`phasestem.recon.distributed`).

* ``gaussian``: Σ (I^p − D^p)² / n_total, p = 0.5 by default (amplitude loss); patterns are
  normalised to a mean total of 1, so this is a per-pattern relative error.
* ``poisson``: Σ ((c·I + ε) − (c·D + ε) − (c·D + ε)·log((c·I + ε)/(c·D + ε))) / (c · n_total), ``c`` =
  counts per normalised unit (the mean total count of a pattern): the Poisson deviance (negative
  log-likelihood minus its value at the data, so ≥ 0 and 0 at the data) of the counts shifted by
  ε = :data:`POISSON_EPS_COUNTS` on both sides, so the minimum stays at c·I = c·D and the gradient
  stays bounded where the model is dark but a count was measured.
* ``pacbed``: Σ (mean_b I^p − PACBED^p)² × (B / n_total): the batch-mean pattern against the
  measured position-averaged CBED.
* ``sparsity``: mean |φ| of the object phase (L1), once per batch (weighted by B / n_total).

The terms are one table, :data:`TERMS` (:class:`LossTerm`: name, function, whether it fits the patterns); a new
term is one :func:`register_term` call (the parameter file's ``losses`` section,
:class:`~phasestem.recon.settings.losses.LossConfig`, then names it). Everything that lists terms (the run log, the
multi-process per-term record, the held-out loss) reads the table.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

#: the loss when no term is named: the Gaussian term on amplitudes (power 0.5) alone
DEFAULT_WEIGHTS = {"gaussian": 1.0}
#: the loss when no term is named and the data are detector counts (:mod:`phasestem.recon.data_losses`): the
#: Poisson term is right for the noise, the amplitude term keeps the fit of the dark field robust to model mismatch
#: (``benchmarks/independent``). On 64 × 64 positions of the Merlin benchmark (1e5 e⁻, 10 lsq epochs from the same
#: SSB start): phase r 0.9810 with the amplitude term alone, 0.9831 with both.
COUNTED_WEIGHTS = {"gaussian": 0.5, "poisson": 0.5}
#: shift (in counts) of measured and model counts inside the Poisson likelihood
POISSON_EPS_COUNTS = 0.5


def gaussian_loss(model_i: torch.Tensor, meas_p: torch.Tensor, power: float, eps: float, n_total: int) -> torch.Tensor:
    """Σ ((I + ε)^p − (D + ε)^p)² / n_total; ``meas_p`` = (D + ε)^p precomputed (same ε on both sides, so the
    minimum stays at I = D however dark the pixel)."""
    mp = (model_i + eps).sqrt() if power == 0.5 else (model_i.clamp_min(0) + eps).pow(power)
    return (mp - meas_p).square().sum() / n_total


def poisson_loss(model_i: torch.Tensor, meas: torch.Tensor, counts: float, eps: float, n_total: int) -> torch.Tensor:
    """Poisson deviance Σ ((cI + ε) − (cD + ε) − (cD + ε)·log((cI + ε)/(cD + ε))) / (c · n_total),
    ε = :data:`POISSON_EPS_COUNTS` counts (``eps``, the Gaussian term's floor, is not used: a count is the
    natural unit here).

    The negative log-likelihood minus its value at the data: the same gradients, but ≥ 0 with its minimum 0
    at c·I = c·D, so loss ratios (divergence checks, relative changes) mean what they do for the other terms;
    the plain NLL is negative and its size depends on the counts."""
    ci = model_i.clamp_min(0) * counts + POISSON_EPS_COUNTS
    cd = meas * counts + POISSON_EPS_COUNTS
    return (ci - cd - cd * torch.log(ci / cd)).sum() / (counts * n_total)


def pacbed_loss(model_i: torch.Tensor, pacbed_p: torch.Tensor, power: float, eps: float, n_total: int):
    """Batch-mean pattern^p against PACBED^p (unshifted, same units), weighted by B / n_total."""
    mean = model_i.mean(0)
    return (mean.clamp_min(0) + eps).pow(power).sub(pacbed_p).square().sum() * (model_i.shape[0] / n_total)


def sparsity_loss(phase: torch.Tensor, batch: int, n_total: int) -> torch.Tensor:
    """L1 sparsity of the object phase: mean |φ|, weighted by B / n_total."""
    return phase.abs().mean() * (batch / n_total)


class LossWeights(Protocol):
    """What the terms read of the loss settings (the parameter file's ``losses`` section,
    :class:`phasestem.recon.settings.losses.LossConfig`)."""

    power: float
    eps: float
    terms: dict[str, LossTerm]

    def weight(self, name: str) -> float: ...


class LossBatch(NamedTuple):
    """What a term may read of one mini-batch: model and measured intensities (B, ny, nx), ``meas_p`` = (D + ε)^p,
    the PACBED^p (ny, nx) or None, the object phase or None (given when an active term ``needs_phase``), the counts
    per normalised unit and the full mini-batch size."""

    model_i: torch.Tensor
    meas: torch.Tensor | None
    meas_p: torch.Tensor | None
    pacbed_p: torch.Tensor | None
    phase: torch.Tensor | None
    counts: float
    n_total: int


@dataclass(frozen=True)
class LossTerm:
    """One term of the loss: ``compute(cfg, batch)`` → its (unweighted) value, or None when the batch lacks what it
    needs; ``data_term``: it fits the patterns (the held-out loss sums these, and a run needs one); ``needs_phase``:
    the step hands it the object phase."""

    name: str
    compute: Callable[[LossWeights, LossBatch], torch.Tensor | None]
    data_term: bool = False
    needs_phase: bool = False


def _gaussian(cfg: LossWeights, b: LossBatch):
    return gaussian_loss(b.model_i, b.meas_p, cfg.power, cfg.eps, b.n_total)


def _poisson(cfg: LossWeights, b: LossBatch):
    return poisson_loss(b.model_i, b.meas, b.counts, cfg.eps, b.n_total)


def _pacbed(cfg: LossWeights, b: LossBatch):
    return None if b.pacbed_p is None else pacbed_loss(b.model_i, b.pacbed_p, cfg.power, cfg.eps, b.n_total)


def _sparsity(cfg: LossWeights, b: LossBatch):
    return None if b.phase is None else sparsity_loss(b.phase, b.model_i.shape[0], b.n_total)


#: the loss terms by name, in the order they are summed and reported
TERMS: dict[str, LossTerm] = {}


def register_term(term: LossTerm) -> LossTerm:
    """Add ``term`` to :data:`TERMS` (a name already there is refused); ``LossConfig(name=weight)`` runs it."""
    if term.name in TERMS or term.name == "power":
        raise ValueError(f"loss term {term.name!r} is already registered")
    TERMS[term.name] = term
    return term


for _term in (LossTerm("gaussian", _gaussian, data_term=True), LossTerm("poisson", _poisson, data_term=True),
              LossTerm("pacbed", _pacbed), LossTerm("sparsity", _sparsity, needs_phase=True)):
    TERMS[_term.name] = _term
#: the terms that are fields of the parameter file's ``losses`` section (:class:`~.settings.losses.LossConfig`)
BUILTIN = tuple(TERMS)


def total_loss(
    cfg: LossWeights,
    model_i: torch.Tensor,
    meas: torch.Tensor | None,
    meas_p: torch.Tensor | None,
    pacbed_p: torch.Tensor | None,
    phase: torch.Tensor | None,
    counts: float,
    n_total: int,
    detach: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the active terms and the (detached) components by name.

    ``meas`` (B, ny, nx) is needed by the Poisson term and ``meas_p`` = meas^p by the Gaussian one
    (computed from ``meas`` when None). ``detach`` False: the components as computed (a function compiled by
    torch.compile detaches them outside: returned beside the total, torch 2.14's compiled detached copies lose the
    total's gradient).
    """
    if meas_p is None and cfg.weight("gaussian") > 0:
        meas_p = (meas.clamp_min(0) + cfg.eps).pow(cfg.power)
    batch = LossBatch(model_i, meas, meas_p, pacbed_p, phase, counts, n_total)
    parts: dict[str, torch.Tensor] = {}
    for name, term in cfg.terms.items():
        value = term.compute(cfg, batch)
        if value is not None:
            parts[name] = value
    total = sum(cfg.weight(k) * v for k, v in parts.items())
    return total, ({k: v.detach() for k, v in parts.items()} if detach else parts)


def ptyrad_gaussian_loss(model_i: torch.Tensor, meas: torch.Tensor, power: float = 0.5) -> torch.Tensor:
    """PtyRAD's normalised Gaussian loss √⟨(I_model^p − I_meas^p)²⟩ / ⟨I_meas^p⟩, means over all pixels and patterns.

    A report only (not part of :func:`total_loss`): it is independent of the intensity units and comparable with the
    ``loss`` PtyRAD prints for ``dp_pow`` = ``power``. Negative intensities count as 0.
    """
    mp = model_i.clamp_min(0).pow(power)
    dp = meas.clamp_min(0).pow(power)
    return (mp - dp).square().mean().sqrt() / dp.mean().clamp_min(1e-30)
