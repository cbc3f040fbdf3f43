"""A learned prior that never ends worse than it was (issue 68, item 4; :mod:`phasestem.recon.prior_stop`): its
weight decays per refresh, its pull stops once the data loss has risen ``patience`` epochs in a row, and the run
returns its state with the lowest data loss from the prior's start, logged and rewound as the held-out stop does.

Data: the independent NumPy multislice (``benchmarks/independent/numpy_multislice.py``), 14 × 14 positions at
1e4 e⁻ per pattern; stand-in targets in place of a restorer: the simulated phase (a good target), the same with an
invented 1 rad disk (harmful). The truth scores the returned state here; the engine never sees it but as a target.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from numpy_cases import numpy_scan

from phasestem.base.errors import ConfigError
from phasestem.learn.hybrid import ad_recipe
from phasestem.metrics import phase_error
from phasestem.recon.callbacks import Callback
from phasestem.recon.engine import optimize_with_options
from phasestem.recon.params import build_model, run_sections
from phasestem.recon.prior import RefreshedPrior

pytestmark = pytest.mark.usefixtures("one_torch_thread")

START, EVERY, WEIGHT, DECAY, PATIENCE, TOLERANCE = 2, 2, 0.5, 0.9, 2, 0.02


@pytest.fixture(scope="module")
def case():
    ds, truth, _ = numpy_scan(3, 32, 0.25, (14, 14), 0.75, 60.0, 0.15, dose=1e4)
    yy, xx = np.mgrid[:truth.shape[0], :truth.shape[1]]
    disk = (yy - truth.shape[0] / 2) ** 2 + (xx - truth.shape[1] / 2) ** 2 < 5**2
    return ds, truth, disk


class Recorder(Callback):
    """Every record of the run (the rewind drops them from the model's history) and the phase after each epoch;
    the E_φ of every state (after the data steps: on_record before the prior's; after the epoch: on_epoch_end)."""

    def __init__(self, truth):
        self.truth, self.records, self.phases, self.errors = truth, [], {}, []

    def error(self, model) -> float:
        return phase_error(model.phase_in_dataset_frame(self.truth.shape), self.truth, align=False, crop=2)

    def on_record(self, loop):
        self.errors.append(self.error(loop.model))

    def on_epoch_end(self, loop):
        self.records.append(loop.record)
        self.phases[loop.epoch] = loop.model.obj_phase.detach().clone()
        self.errors.append(self.error(loop.model))


def _run(ds, truth, target, epochs, **options):
    params = ad_recipe(epochs)
    torch.manual_seed(0)
    model = build_model(params, ds)
    recorder = Recorder(truth)
    prior = RefreshedPrior(target, every=EVERY, weight=WEIGHT, start=START, name="stand-in")
    for _ in optimize_with_options(model, ds, epochs, callbacks=[recorder, prior],
                                   **{**run_sections(params), **options}):
        pass
    return model, recorder


def _stop_epoch(losses: dict[int, float]) -> int | None:
    """The epoch whose data loss makes PATIENCE in a row more than TOLERANCE above the lowest since START."""
    lowest, rises = np.inf, 0
    for epoch in sorted(e for e in losses if e >= START):
        rises = rises + 1 if losses[epoch] > lowest * (1 + TOLERANCE) else 0
        lowest = min(lowest, losses[epoch])
        if rises >= PATIENCE:
            return epoch
    return None


def test_a_pull_that_turns_harmful_stops_and_the_run_returns_its_best_state_by_the_data(case, caplog):
    """The truth until epoch 10, then the truth with an invented disk (a prior that helps, then hurts): the data
    loss rises, the pull stops after PATIENCE rising epochs, the low-dose run ends and returns the state whose data
    loss (that of the epoch started from it) is the lowest since the prior's start, within 5 % of the best E_φ."""
    ds, truth, disk = case

    def target(model):
        return truth if model.epoch < 10 else np.where(disk, 1.0, truth)

    with caplog.at_level(logging.INFO, logger="phasestem.recon"):
        model, rec = _run(ds, truth, target, 20)
    losses = {int(r["epoch"]): r["loss"] for r in rec.records}  # the recipe's loss holds data terms only
    stop = _stop_epoch(losses)
    assert stop is not None and max(losses) == stop < 20  # the pull stopped, and the low-dose run with it
    assert [r["prior_active"] for r in rec.records] == [0.0] + [1.0] * (stop - START) + [0.0]
    assert [r["prior_weight"] for r in rec.records[1:-1]] == pytest.approx(
        [WEIGHT * DECAY ** ((e - START) // EVERY) for e in range(START, stop)])
    judged = {e - 1: v for e, v in losses.items() if e >= START}  # the state after e - 1, judged by epoch e
    kept = max(e for e, v in judged.items() if v == min(judged.values()))
    assert losses[kept + 1] == min(losses[e] for e in losses if e >= START)
    assert model.epoch == kept < stop and len(model.loss_history) == kept
    assert torch.equal(model.obj_phase.detach(), rec.phases[kept])  # exactly the state after that epoch
    assert not torch.equal(model.obj_phase.detach(), rec.phases[stop])
    assert model.loss_history[-1]["prior_stopped_at"] == stop
    line = next(m for m in caplog.messages if m.startswith("learned prior: returned the state"))
    assert f"after epoch {kept} of {stop} run" in line and f"the pull stopped after epoch {stop}" in line
    assert "the run ended there" in line and model.prior_returned.startswith(f"epoch {kept} of {stop}")
    assert rec.error(model) <= 1.05 * min(rec.errors)  # the final state against every state of the run


def test_a_good_target_keeps_the_end_and_its_weight_decays(case, caplog):
    ds, truth, _ = case
    with caplog.at_level(logging.INFO, logger="phasestem.recon"):
        model, rec = _run(ds, truth, lambda m: truth, 8)
    assert model.epoch == 8 and torch.equal(model.obj_phase.detach(), rec.phases[8])  # nothing rewound
    assert [r["prior_weight"] for r in model.loss_history] == pytest.approx(
        [0.0, 0.5, 0.5, 0.45, 0.45, 0.405, 0.405, 0.3645])  # λ·γ^n after the n-th refresh
    assert [r["prior_active"] for r in model.loss_history] == [0.0] + [1.0] * 7
    assert "learned prior: the run ends on epoch 8, the last" in caplog.text
    assert "prior_stopped_at" not in model.loss_history[-1]


def test_a_target_no_pull_ever_helped_restores_the_state_before_the_first_pull(case, caplog):
    """The model's own phase with an invented disk: the data loss rises from the first pull on; the state before
    it is restored and the run goes on as plain AD for its remaining epochs (the epoch count goes on)."""
    ds, truth, disk = case

    def target(model):
        phase = model.phase_in_dataset_frame(truth.shape).copy()
        phase[disk] = 1.0
        return phase

    with caplog.at_level(logging.INFO, logger="phasestem.recon"):
        model, rec = _run(ds, truth, target, 20)
    stop = _stop_epoch({int(r["epoch"]): r["loss"] for r in rec.records})
    assert stop is not None and model.epoch == 20
    assert f"restored the state after epoch {START - 1} (before the first pull" in caplog.text
    assert torch.equal(rec.phases[stop], rec.phases[START - 1])  # restored at the stop, no pull after it
    assert [r["prior_active"] for r in model.loss_history][stop - 1:] == [0.0] * (20 - stop + 1)
    params = ad_recipe(20)
    torch.manual_seed(0)
    plain = build_model(params, ds)
    for _ in optimize_with_options(plain, ds, 20, **run_sections(params)):
        pass
    assert rec.error(model) <= 1.05 * rec.error(plain)  # as good as AD without the prior


def test_a_resumed_run_rebuilds_the_stop_from_its_history_and_says_so(case, tmp_path, caplog):
    ds, truth, disk = case

    def target(model):
        phase = model.phase_in_dataset_frame(truth.shape).copy()
        phase[disk] = 1.0
        return phase

    ckpt = tmp_path / "checkpoint.pt"
    params = ad_recipe(8)
    torch.manual_seed(0)
    model = build_model(params, ds)
    prior = RefreshedPrior(target, every=EVERY, weight=WEIGHT, start=START)
    run = optimize_with_options(model, ds, 8, prior=prior, checkpoint_path=ckpt, checkpoint_every=1,
                                **run_sections(params))
    for _ in range(6):  # killed after epoch 6, the pull stopped before
        next(run)
    run.close()
    stopped = prior.stop.stopped_at
    assert stopped is not None and stopped < 6
    resumed = build_model(params, ds)
    again = RefreshedPrior(target, every=EVERY, weight=WEIGHT, start=START)
    with caplog.at_level(logging.INFO, logger="phasestem.recon"):
        for _ in optimize_with_options(resumed, ds, 2, prior=again, checkpoint_path=ckpt, resume=True,
                                       **run_sections(params)):
            pass
    assert f"learned prior: continues after epoch 6: the pull stopped after epoch {stopped}" in caplog.text
    assert "searched again from epoch 6 on" in caplog.text
    assert again.stop.stopped_at == stopped and [r["prior_active"] for r in resumed.loss_history[6:]] == [0.0, 0.0]


def test_with_held_out_positions_the_held_out_loss_stops_the_pull_and_the_held_out_stop_returns(case, caplog):
    ds, truth, disk = case

    def target(model):
        return truth if model.epoch < 6 else np.where(disk, 1.0, truth)

    with caplog.at_level(logging.INFO, logger="phasestem.recon"):
        model, rec = _run(ds, truth, target, 12, holdout=0.1, holdout_patience=50)
    held = {int(r["epoch"]): r["heldout"] for r in rec.records}
    stop = _stop_epoch(held)  # measured after the epoch's pull: the pull is off from the next epoch
    assert stop is not None
    assert [r["prior_active"] for r in rec.records if r["epoch"] > stop] == [0.0] * (12 - stop)
    assert model.epoch == min(held, key=held.get)  # the held-out stop's choice
    assert "chosen by the held-out stop" in caplog.text


def test_a_schedule_that_cannot_converge_is_one_line():
    for options, word in (({"decay": 0.0}, "decay"), ({"decay": 1.5}, "decay"), ({"patience": -1}, "patience"),
                          ({"patience": 1.5}, "patience")):
        with pytest.raises(ConfigError, match=word) as err:
            RefreshedPrior(lambda m: None, **options)
        assert "\n" not in str(err.value)
    from phasestem.learn.hybrid import prior_hook

    with pytest.raises(ConfigError, match="decay"):  # before the model file is read
        prior_hook("no-such-model.safetensors", decay=2.0)


def test_with_a_twin_the_target_is_made_from_plain_ad_after_the_same_epoch(case, caplog):
    """A :class:`TwinRun` (plain AD of the same recipe from the same start): the target function is given the twin's
    model after the run's epoch, never the steered one; the twin's phase is exactly a plain run's after that epoch;
    it logs nothing of its own and is closed with the run."""
    from phasestem.recon.twin import TwinRun

    ds, truth, _ = case
    params = ad_recipe(6)
    torch.manual_seed(0)
    model = build_model(params, ds)
    torch.manual_seed(0)
    shadow = build_model(params, ds)
    twin = TwinRun(shadow, optimize_with_options(shadow, ds, 8, **run_sections(params)))  # longer than the run
    given = []

    def target(m):
        given.append((m is shadow, int(m.epoch), m.obj_phase.detach().clone()))
        return m.phase_in_dataset_frame(truth.shape)

    prior = RefreshedPrior(target, every=EVERY, weight=WEIGHT, start=START, twin=twin)
    with caplog.at_level(logging.INFO, logger="phasestem.recon"):
        for _ in optimize_with_options(model, ds, 6, prior=prior, **run_sections(params)):
            pass
    assert [(is_twin, epoch) for is_twin, epoch, _ in given] == [(True, 2), (True, 4), (True, 6)]
    assert len([m for m in caplog.messages if m.startswith("epoch ")]) == 6  # the run's six lines, none of the twin's
    assert twin.done and shadow.epoch == 6  # closed with the run, not run out
    torch.manual_seed(0)
    plain = build_model(params, ds)
    epochs = optimize_with_options(plain, ds, 8, **run_sections(params))  # its decay spans 8 epochs too
    for _ in range(4):
        next(epochs)
    epochs.close()
    assert torch.allclose(given[1][2], plain.obj_phase.detach(), atol=1e-6)  # the twin after epoch 4 is plain AD's
    assert not torch.allclose(model.obj_phase.detach(), shadow.obj_phase.detach(), atol=1e-3)  # the run was pulled


def test_without_counting_noise_a_rise_must_pass_the_models_misfit(caplog):
    """Noise-free data (no Poisson term): the data term's floor is the model's misfit, so a rise counts only beyond
    MISFIT_TOLERANCE (a truth-like phase raises it on an imperfect model); a true target keeps its end, and a target
    that turns harmful (an invented 1 rad disk after epoch 10) still stops the pull and the run returns a state
    before it, within 5 % of the run's best E_φ."""
    from phasestem.recon.prior_stop import MISFIT_TOLERANCE

    ds, truth, _ = numpy_scan(3, 32, 0.25, (14, 14), 0.75, 60.0, 0.15)
    yy, xx = np.mgrid[:truth.shape[0], :truth.shape[1]]
    disk = (yy - truth.shape[0] / 2) ** 2 + (xx - truth.shape[1] / 2) ** 2 < 5**2
    model, rec = _run(ds, truth, lambda m: truth, 8)
    assert model.epoch == 8 and torch.equal(model.obj_phase.detach(), rec.phases[8])  # nothing rewound
    with caplog.at_level(logging.INFO, logger="phasestem.recon"):
        model, rec = _run(ds, truth, lambda m: truth if m.epoch < 10 else np.where(disk, 1.0, truth), 20)
    assert f"more than {100 * MISFIT_TOLERANCE:g} % above its lowest" in caplog.text
    assert model.epoch < 12 and rec.error(model) <= 1.05 * min(rec.errors)
