"""A stopping rule from counts that every position keeps: a share of each pattern's counts held out of the fit
(``run.holdout_counts``, issue 81 item 2).

Thinning a Poisson count D with probability q gives two independent Poisson counts, D_held ~ Binomial(D, q) with
mean q·μ and D_fit = D − D_held with mean (1 − q)·μ. The run fits D_fit (every scan position stays in the fit, at
(1 − q) × the counts) and after each epoch scores the model's prediction of D_held by its Poisson deviance: the
model never saw D_held's noise, so the score falls while the object improves and rises once it takes up the noise
of D_fit. :class:`HeldCountsStop` keeps the epoch with the lowest score, stops the run after
``run.holdout_patience`` epochs without a new lowest and returns that state (as the held-out positions' stop,
:mod:`phasestem.recon.holdout`, which it extends).

With a learned prior (:class:`~phasestem.recon.prior.RefreshedPrior`) the held counts judge the prior's plain-AD
twin instead (its target is kept once the twin's deviance rises) and the run adds no stop of its own: the pull moves
the phase off the data's best fit on purpose, so the pulled run's own deviance cannot choose its epoch (on abTEM
crystals at 10⁴ e⁻ it was lowest at epoch 3 while E_φ went on falling; ``benchmarks/learned/README.md``).

The split is drawn once per scan row from a generator seeded by (:data:`SPLIT_KEY`, ``run.seed``, row), so the same
file and seed give the same split however it is read, and a resumed run checks the split's fingerprint against its
checkpoint's. Only whole, non-negative counts of a Poisson detector can be split: gain, charge sharing and
flat-fielded files correlate the two parts, and the held score then rewards fitting the noise.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..base.errors import ConfigError
from .holdout import HeldOutStop, rewind_to
from .losses import POISSON_EPS_COUNTS

log = logging.getLogger("phasestem.recon")

#: the generator's stream id (the batch order and the held-out positions use others)
SPLIT_KEY = 0x5C0A
#: metadata key of a split dataset: the held share q
SPLIT_META_KEY = "holdout_counts"
#: counts per pixel above which float32 (the held part's storage) is no longer exact
EXACT_FLOAT32 = 2**24


@dataclass(frozen=True)
class HeldCounts:
    """The held part of a split: ``counts`` (N, H, W) float32 whole counts in the engine's pixel order
    (ifftshift-ed), on the host; ``fraction`` q; ``seed``; the mean counts per pattern of the fitted and the held
    part."""

    counts: torch.Tensor
    fraction: float
    seed: int
    fit_per_pattern: float
    held_per_pattern: float

    @property
    def fingerprint(self) -> list:
        """What a checkpoint stores to recognise the split: [q, seed, held total]."""
        return [float(self.fraction), int(self.seed), float(self.held_per_pattern * self.counts.shape[0])]

    def batch(self, index: torch.Tensor, device) -> torch.Tensor:
        """Rows ``index`` as float64 on ``device``."""
        return self.counts[index.cpu()].to(device, torch.float64)

    def what(self) -> str:
        return (f"held-out counts ({100 * self.fraction:g} % of every pattern, binomial split, seed {self.seed})")


def _whole_row(row: np.ndarray, source: str, r: int) -> np.ndarray:
    a = np.asarray(row)
    if np.issubdtype(a.dtype, np.integer):
        if a.size and a.min() < 0:
            raise ConfigError(f"run.holdout_counts: {source} scan row {r} holds negative counts; only whole detector "
                              "counts ≥ 0 can be split")
        return a
    if not (np.isfinite(a).all() and np.array_equal(a, np.rint(a)) and (a.size == 0 or a.min() >= 0)):
        raise ConfigError(f"run.holdout_counts: {source} scan row {r} does not hold whole counts ≥ 0 after the data "
                          "transforms (resampled, calibrated or background-subtracted patterns cannot be split); "
                          "set run.holdout_counts: 0")
    return a


def split_counts(dataset, fraction: float, seed: int, counted, budget_bytes: float):
    """(the dataset of the fitted counts, :class:`HeldCounts`): every pattern's counts split binomially, a share
    ``fraction`` held out, drawn per scan row with ``seed``. ``counted``: the run's
    :class:`~phasestem.io.counts.CountsDecision` (refused when the patterns are not counts). Both parts are read
    into memory (refused above ``budget_bytes``)."""
    from ..io._common import STORED_DTYPE_KEY

    source = str(dataset.metadata.get("source", "the patterns"))
    if not 0 < fraction < 0.5:
        raise ConfigError(f"run.holdout_counts must lie in (0, 0.5), got {fraction}")
    if not counted.counted:
        raise ConfigError(f"run.holdout_counts needs detector counts: {source} is not counted ({counted.reason})")
    sy, sx = dataset.scan_shape
    h, w = dataset.pattern_shape
    need = 2 * dataset.n_patterns * h * w * 4
    if need > budget_bytes:
        raise ConfigError(f"run.holdout_counts: splitting {source} holds both parts in memory ({need / 1024**3:.3g} "
                          f"GiB), more than run.memory_budget_gb allows ({budget_bytes / 1024**3:.3g} GiB)")
    fit = held = None
    top = 0
    for r in range(sy):
        row = _whole_row(dataset.patterns[r], source, r).astype(np.int64)
        rng = np.random.default_rng([SPLIT_KEY, int(seed), r])
        part = rng.binomial(row, fraction)
        if fit is None:
            fit, held = np.empty((sy, sx, h, w), np.uint32), np.empty((sy, sx, h, w), np.float32)
        top = max(top, int(row.max(initial=0)))
        if top >= EXACT_FLOAT32:
            raise ConfigError(f"run.holdout_counts: {source} holds {top} counts in a pixel; splits are kept exact up "
                              f"to {EXACT_FLOAT32}")
        fit[r], held[r] = row - part, part
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(t).max)
    fit = fit.astype(dtype, copy=False)
    out = dataset._replace(patterns=fit)
    out.metadata[STORED_DTYPE_KEY] = np.dtype(dtype).name
    out.metadata[SPLIT_META_KEY] = float(fraction)
    held_t = torch.fft.ifftshift(torch.from_numpy(held.reshape(-1, h, w)), dim=(-2, -1)).contiguous()
    n = dataset.n_patterns
    return out, HeldCounts(held_t, float(fraction), int(seed), float(fit.sum(dtype=np.float64)) / n,
                           float(held.sum(dtype=np.float64)) / n)


def run_split(run, dataset, counted):
    """(the dataset a run fits, its :class:`HeldCounts` or None): the split ``run`` (the parameter file's run
    section) asks for, ``run.holdout_counts`` of every pattern drawn with ``run.seed`` within
    ``run.memory_budget_gb``: what ``reconstruct`` fits and what ``restore``'s data guard replays."""
    if not run.holdout_counts:
        return dataset, None
    from .streaming import budget_bytes

    return split_counts(dataset, run.holdout_counts, run.seed, counted, budget_bytes(run.memory_budget_gb))


def refuse_processes(world: int) -> None:
    """One line when a split run would take several processes (the held score is not summed across ranks)."""
    if world > 1:
        raise ConfigError("run.holdout_counts works in one process only; set run.n_processes: 1 or "
                          "run.holdout_counts: 0")


def split_setting(held: HeldCounts, sources: dict[str, str] | None = None):
    """The run's settings row ``run.holdout_counts`` (source ``YAML`` or ``sources['run.holdout_counts']``)."""
    from ..base.provenance import Setting

    return Setting("run.holdout_counts", held.fraction, "", (sources or {}).get("run.holdout_counts", "YAML"),
                   note=f"binomial split, seed {held.seed}: fit {held.fit_per_pattern:.4g}, held "
                   f"{held.held_per_pattern:.4g} counts per pattern")


def split_line(held: HeldCounts, low_dose_counts: float) -> str:
    """The run log's line on the split."""
    low = (f"; the fit's counts are ≤ {low_dose_counts:g} per pattern: the low-dose rules apply to it"
           if held.fit_per_pattern <= low_dose_counts < held.fit_per_pattern + held.held_per_pattern else "")
    return (f"held out of the fit: {100 * held.fraction:g} % of every pattern's counts (binomial split, seed "
            f"{held.seed}): fit {held.fit_per_pattern:.4g}, held {held.held_per_pattern:.4g} counts per pattern; "
            f"the data rules, σ and a prior's twin see the fit's{low}")


@torch.no_grad()
def held_counts_nll(model, held: HeldCounts, batch_size: int) -> float:
    """The held counts' Poisson deviance per pattern under ``model``: μ = r·c_fit·I with r = q/(1−q), I the model's
    normalised pattern and c_fit its fit's mean counts (``model.data_total``), ε = r × the fit's floor
    (:data:`~phasestem.recon.losses.POISSON_EPS_COUNTS`), summed in float64. Its minimum over μ is at the held
    counts' mean, whatever ε ≥ 0."""
    r = held.fraction / (1 - held.fraction)
    scale, eps = r * float(model.data_total), r * POISSON_EPS_COUNTS
    n = held.counts.shape[0]
    total = 0.0
    for idx in torch.arange(n).split(max(1, int(batch_size))):
        mu = model(idx.to(model.device)).double().clamp_min(0) * scale + eps
        d = held.batch(idx, model.device) + eps
        total += float((mu - d - d * torch.log(mu / d)).sum())
    return total / n


def check_split(held: HeldCounts, n: int, world: int, holdout, state, resumed: bool) -> None:
    """Refusals of the engine (one line each): another number of patterns, several processes, held-out positions
    asked for too, a resumed run whose checkpoint was made with another split (or none). A new run state takes the
    split's fingerprint."""
    if held.counts.shape[0] != n:
        raise ConfigError(f"run.holdout_counts: the held counts have {held.counts.shape[0]} patterns, the data {n}")
    refuse_processes(world)
    if holdout != "auto" and float(holdout) > 0:
        raise ConfigError("run.holdout and run.holdout_counts are two held-out rules: set one of them to 0")
    if resumed and state.count_split != held.fingerprint:
        raise ConfigError("the checkpoint was written by a run with "
                          + ("no count split" if state.count_split is None else
                             f"run.holdout_counts {state.count_split[0]:g} and run.seed {state.count_split[1]}")
                          + f": resume with the same settings (this run: run.holdout_counts {held.fraction:g}, "
                          f"run.seed {held.seed})")
    state.count_split = held.fingerprint


class HeldCountsStop(HeldOutStop):
    """:class:`~phasestem.recon.holdout.HeldOutStop` scored by the held counts' Poisson deviance
    (:func:`held_counts_nll`, ``record['heldout']``); ends on its lowest epoch with one log line either way, and
    says which in ``model.heldout_returned``."""

    def __init__(self, held: HeldCounts, batch_size: int):
        super().__init__(torch.empty(0), batch_size)
        self.counts = held

    def score(self, loop) -> float:
        return held_counts_nll(loop.model, self.counts, self.batch_size)

    def on_end(self, loop) -> None:
        model, state = loop.model, loop.state
        if state.holdout_best is None:
            return
        epoch, params = state.holdout_best
        ran = model.epoch
        last = model.loss_history[-1].get("heldout", math.nan) if model.loss_history else math.nan
        if epoch != ran:
            rewind_to(model, state, epoch, params)
        how = (f"stopped after {state.holdout_waited} epochs without a new lowest" if loop.stop and epoch != ran
               else "the last epoch" if epoch == ran else "every epoch asked for ran")
        rise = "" if epoch == ran or not math.isfinite(last) else \
            f"; epoch {ran}'s lay {100 * (last / state.holdout_best_loss - 1):+.3g} %"
        note = (f"epoch {epoch} of {ran}: the lowest Poisson deviance of the held counts "
                f"({state.holdout_best_loss:.7g} per pattern{rise}); {how}")
        model.heldout_returned = note
        log.info("%s: returned %s", self.counts.what(), note)
