"""run.lr_decay: auto (the default of a parameter file's run): counted data get a cosine over their first 20 epochs,
a strong scatterer without counts none, any other data the whole run's cosine.

The rule reads the data term the run uses (a Poisson part: counted data, whose noise full steps late in a run go on
fitting) and the mean pattern's share beyond the disk (the probe-aperture rule's measure of a strong scatterer); the
engine steps with the resolved decay, says so in the log and keeps the reason for results.h5's provenance.
Plumbing on phasestem's own simulator (the accuracy it was chosen for is measured on independent data in
``benchmarks/independent``, issue 69).
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from phasestem.recon.callbacks import Callback
from phasestem.recon.constraints import Constraints
from phasestem.recon.decay_rule import (
    COUNTED_DECAY_EPOCHS,
    CRYSTAL_DECAY_KEY,
    crystal_decay,
    resolve_lr_decay,
)
from phasestem.recon.engine import optimize
from phasestem.recon.model import Ptychography
from phasestem.recon.optimizers import decay_factor
from phasestem.recon.params import RunConfig
from phasestem.recon.report import auto_settings
from phasestem.recon.settings.losses import LossConfig
from phasestem.recon.synthetic import synthetic_scan

COUNTED = LossConfig(gaussian=0.5, poisson=0.5)


def _mean_pattern(halo: float) -> np.ndarray:
    """A 64² mean pattern: a disk of radius 16 px holding 1 − ``halo`` of the intensity, a ring at 24–30 px the rest."""
    yy, xx = np.indices((64, 64)) - 32
    r = np.hypot(yy, xx)
    disk, ring = (r <= 16).astype(float), ((r >= 24) & (r <= 30)).astype(float)
    return (1 - halo) * disk / disk.sum() + halo * ring / ring.sum()


def test_the_rule_reads_the_data_term_and_the_scattering():
    assert RunConfig().lr_decay == "auto"
    assert resolve_lr_decay("auto", COUNTED, _mean_pattern(0.05))[:2] == ("cosine", COUNTED_DECAY_EPOCHS)
    assert resolve_lr_decay("auto", LossConfig(poisson=1.0))[:2] == ("cosine", COUNTED_DECAY_EPOCHS)
    kind, span, why = resolve_lr_decay("auto", LossConfig(), _mean_pattern(0.05))
    assert (kind, span) == ("none", None) and why.startswith("none (no Poisson term and a strong scatterer, 5 % ")
    kind, span, why = resolve_lr_decay("auto", LossConfig(), _mean_pattern(0.002))
    assert (kind, span) == ("cosine", None) and "0.2 % of the mean pattern" in why and "not a strong scatterer" in why
    assert resolve_lr_decay("auto", LossConfig(), np.ones((64, 64)))[:2] == ("cosine", None)  # no disk to measure by
    assert resolve_lr_decay("auto", LossConfig())[:2] == ("cosine", None)  # no pattern given
    assert resolve_lr_decay("cosine", LossConfig(), _mean_pattern(0.05)) == ("cosine", None, None)  # named: kept
    assert resolve_lr_decay("none", COUNTED) == ("none", None, None)


def test_a_longer_counted_run_takes_the_shorter_runs_steps():
    """The span: a 40-epoch run's first 20 factors are the 20-epoch run's, lr_final held after them (the engine ends
    an 'auto' run there: test_a_counted_run_ends_with_its_decay); a run shorter than the span decays over itself;
    'cosine' without a span spans the whole run."""
    twenty = [decay_factor("cosine", k, 20, 0.1) for k in range(20)]
    forty = [decay_factor("cosine", k, 40, 0.1, 20) for k in range(40)]
    assert forty[:20] == twenty and forty[20:] == [pytest.approx(0.1)] * 20
    assert twenty[0] == 1.0 and twenty[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(twenty[:-1], twenty[1:], strict=True))
    assert [decay_factor("cosine", k, 8, 0.1, 20) for k in range(8)] == [decay_factor("cosine", k, 8, 0.1)
                                                                          for k in range(8)]
    assert decay_factor("cosine", 20, 40, 0.1) > 0.5  # the whole-run cosine is still high half-way
    assert decay_factor("none", 30, 40, 0.1, 20) == 1.0


class _Rates(Callback):
    """The object phase's learning rate of every epoch."""

    def __init__(self):
        self.rates = []

    def on_epoch_end(self, loop) -> None:
        self.rates.append(next(g["lr"] for g in loop.optimizer.param_groups if g["name"] == "obj_phase"))


CASES = [(LossConfig(), 0.5, "cosine"), (LossConfig(), 6.0, "none"),
         (COUNTED, 0.5, "cosine over the first 20 epochs to lr_final, where the run ends")]


@pytest.mark.parametrize("losses, max_phase, expected", CASES)
def test_the_run_steps_with_the_resolved_decay_and_records_why(losses, max_phase, expected, caplog):
    """A weak and a strong scatterer without counts, and counted data (phasestem's simulator: plumbing)."""
    caplog.set_level("INFO", logger="phasestem.recon")
    counted = losses.weight("poisson") > 0
    ds = synthetic_scan(window=(32, 32), sampling=0.4, scan_shape=(4, 4), max_phase=max_phase,
                          dose=1e5 if counted else None, seed=2)
    model = Ptychography.from_dataset(ds)
    rates = _Rates()
    run = RunConfig(n_epochs=4, batch_size=8, progress=False)
    list(optimize(model, ds, 4, run, losses, callbacks=[rates]))
    assert len(rates.rates) == 4
    if expected == "none":
        assert rates.rates == [rates.rates[0]] * 4
    else:
        assert rates.rates[-1] == pytest.approx(rates.rates[0] * run.lr_final)  # the cosine ends at lr_final
    assert f"run.lr_decay auto: {expected} (" in caplog.text
    rows = auto_settings(model, SimpleNamespace(run=run, constraints=Constraints()))
    (row,) = [r for r in rows if r.field == "run.lr_decay"]
    assert row.value == expected.split()[0] and row.source == "default" and row.note.startswith(f"auto: {expected} (")
    named = RunConfig(n_epochs=4, lr_decay="auto")
    (row,) = [r for r in auto_settings(model, SimpleNamespace(run=named, constraints=Constraints()))
              if r.field == "run.lr_decay"]
    assert row.source == "YAML"  # 'auto' written in the parameter file


def test_a_counted_run_ends_with_its_decay(caplog):
    """Counted data asked for 23 epochs: the first 20 rates fall by the cosine to lr_final and the run ends there
    (20 epochs yielded and recorded, the model at epoch 20, one log line); 'cosine' named runs all 23."""
    caplog.set_level("INFO", logger="phasestem.recon")
    ds = synthetic_scan(window=(32, 32), sampling=0.4, scan_shape=(4, 4), max_phase=0.5, dose=1e5, seed=2)
    model = Ptychography.from_dataset(ds)
    rates = _Rates()
    run = RunConfig(n_epochs=23, batch_size=8, progress=False)
    losses = list(optimize(model, ds, 23, run, COUNTED, callbacks=[rates]))
    first = rates.rates[0]
    assert len(losses) == len(rates.rates) == 20 and model.epoch == 20 and len(model.loss_history) == 20
    assert rates.rates[19] == pytest.approx(first * run.lr_final)
    assert "run ends after epoch 20 of 23: its learning-rate decay (run.lr_decay auto, counted data)" in caplog.text
    named = Ptychography.from_dataset(ds)
    assert len(list(optimize(named, ds, 23, run.model_copy(update={"lr_decay": "cosine"}), COUNTED))) == 23


def test_a_strong_crystal_keeps_the_cosine_from_its_second_epoch(caplog):
    """crystal_decay: a lattice in the object after the first epoch switches 'none' to the run's cosine (logged, the
    reason replaced, the decision kept for a resumed run); random atoms keep 'none'."""
    caplog.set_level("INFO", logger="phasestem.recon")
    ds = synthetic_scan(window=(32, 32), sampling=0.4, scan_shape=(8, 8), n_slices=2, seed=3)
    lattice = Ptychography.from_dataset(ds, n_slices=2, slice_thickness=10.0)
    ny, nx = lattice.object_shape
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    columns = 0.5 * (1 + np.cos(2 * np.pi * yy / 5.0) * np.cos(2 * np.pi * xx / 5.0))  # a 2 Å lattice of columns
    with torch.no_grad():
        lattice.obj_phase.copy_(torch.as_tensor(columns, dtype=lattice.obj_phase.dtype).expand_as(lattice.obj_phase))
    assert crystal_decay(lattice, 2) == "cosine"
    assert lattice.history.decided[CRYSTAL_DECAY_KEY] is True
    assert lattice.history.notes["run.lr_decay"].startswith("cosine from epoch 2 (a strong scatterer without counts, "
                                                           "but a crystal: ")
    assert "run.lr_decay auto: cosine from epoch 2" in caplog.text
    with torch.no_grad():
        lattice.obj_phase.zero_()
    assert crystal_decay(lattice, 3) == "cosine"  # decided once: the object no longer matters
    random = Ptychography.from_dataset(ds, n_slices=2, slice_thickness=10.0)
    with torch.no_grad():
        random.obj_phase.copy_(torch.rand(random.obj_phase.shape, generator=torch.Generator().manual_seed(0)))
    assert crystal_decay(random, 2) == "none" and random.history.decided[CRYSTAL_DECAY_KEY] is False
    assert "run.lr_decay" not in random.history.notes
