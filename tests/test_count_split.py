"""Held-out counts (``run.holdout_counts``, :mod:`phasestem.recon.count_split`, issue 81 item 2): every pattern's
counts split binomially once, the fit on one part, the other part's Poisson deviance choosing the epoch the run
returns; the split exact and reproducible, the score's minimum where the physics puts it, the run's return, resume
and refusals.

Data: the independent NumPy multislice (``benchmarks/independent/numpy_multislice.py``), a weak phase object at
1e3 e⁻ per pattern (Poisson), 20 × 20 positions at 0.5 Å.
"""
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from numpy_cases import numpy_scan, tiny_params

from phasestem.base.errors import ConfigError
from phasestem.io import hdf5
from phasestem.io.counts import CountsDecision, counts_decision
from phasestem.recon import Ptychography
from phasestem.recon.count_split import check_split, held_counts_nll, split_counts
from phasestem.recon.engine import optimize_with_options
from phasestem.recon.losses import poisson_loss
from phasestem.recon.settings.losses import LossConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEP, COUNTED, Q = 0.5, LossConfig(gaussian=0.5, poisson=0.5), 0.1
YES = CountsDecision(True, "test")


@pytest.fixture(scope="module")
def low_dose():
    ds, truth, _ = numpy_scan(3, 64, 0.2, (20, 20), STEP, 80.0, atoms_per_area=0.15, dose=1e3, energy=300e3,
                              semiangle=20.0)
    return ds, truth


def test_the_split_is_exact_whole_seeded_and_the_same_however_the_file_is_read(low_dose, tmp_path):
    ds, _ = low_dose
    counts = np.asarray(ds.patterns, dtype=np.float64)
    counts_decision(ds).remember(ds)
    fit, held = split_counts(ds, Q, 0, counts_decision(ds), 1e12)
    d_fit = np.asarray(fit.patterns, dtype=np.float64)
    d_held = torch.fft.fftshift(held.counts, dim=(-2, -1)).numpy().reshape(counts.shape)
    assert np.array_equal(d_fit + d_held, counts) and d_fit.min() >= 0 and d_held.min() >= 0
    assert fit.patterns.dtype == np.uint8 and fit.metadata["stored_dtype"] == "uint8"
    assert counts_decision(fit).counted and fit.metadata["holdout_counts"] == Q  # the decision travels with it
    total = counts.sum()
    assert abs(d_held.sum() - Q * total) < 4 * np.sqrt(Q * (1 - Q) * total)
    assert held.fit_per_pattern + held.held_per_pattern == pytest.approx(total / ds.n_patterns)
    again = split_counts(ds, Q, 0, YES, 1e12)[1]
    assert torch.equal(again.counts, held.counts) and again.fingerprint == held.fingerprint
    assert not torch.equal(split_counts(ds, Q, 1, YES, 1e12)[1].counts, held.counts)
    lazy = hdf5.read(hdf5.write(tmp_path / "scan.h5", ds))  # read from a file, as a run reads it
    assert torch.equal(split_counts(lazy, Q, 0, YES, 1e12)[1].counts, held.counts)


@pytest.mark.parametrize("case, match", [
    ("not counted", "needs detector counts: .* is not counted"),
    ("fraction", "does not hold whole counts"),
    ("negative", "holds negative counts|does not hold whole counts"),
    ("budget", "more than run.memory_budget_gb allows"),
    ("share", r"must lie in \(0, 0.5\)"),
])
def test_what_cannot_be_split_is_refused_in_one_line(low_dose, case, match):
    ds, _ = low_dose
    decision, budget, q = YES, 1e12, Q
    if case == "not counted":
        decision = CountsDecision(False, "the patterns are not whole numbers")
    elif case == "fraction":
        ds = ds._replace(patterns=np.asarray(ds.patterns) * 0.37)
    elif case == "negative":
        ds = ds._replace(patterns=np.asarray(ds.patterns) - 1)
    elif case == "budget":
        budget = 1e6
    else:
        q = 0.5
    with pytest.raises(ConfigError, match=match) as err:
        split_counts(ds, q, 0, decision, budget)
    assert "\n" not in str(err.value)


class _Pattern:
    """A forward model that predicts ``intensity`` (N, H, W, the dataset's pixel order, normalised to the fit's
    counts): what :func:`held_counts_nll` reads of a model."""

    def __init__(self, intensity: np.ndarray, data_total: float):
        self.i = torch.fft.ifftshift(torch.as_tensor(intensity), dim=(-2, -1))
        self.data_total, self.device = data_total, torch.device("cpu")

    def __call__(self, idx):
        return self.i[idx]


def test_the_held_deviance_is_lowest_at_the_patterns_mean_and_not_at_the_fitted_noise(low_dose):
    """No ptychography: along the path from the mean pattern μ to the fitted part's own noisy counts, the fit's
    Poisson term falls to its floor while the held part's deviance rises from μ on; along s·μ it is lowest at s = 1
    (the held scale r = q/(1−q) is right)."""
    ds, _ = low_dose
    rng = np.random.default_rng(7)
    mu = np.asarray(ds.patterns, np.float64).reshape(-1, 64, 64).mean(0)  # a smooth mean pattern, ~1e3 counts
    mu = np.broadcast_to(mu / mu.sum(), (200, 64, 64))
    d = rng.poisson(mu * 1e3).astype(np.float64).reshape(10, 20, 64, 64)
    data = ds._replace(patterns=d, positions=None, scan_step=(STEP, STEP))
    fit, held = split_counts(data, Q, 3, YES, 1e12)
    d_fit = np.asarray(fit.patterns, np.float64).reshape(200, 64, 64)
    c_fit = d_fit.sum((-2, -1)).mean()
    ts = np.linspace(0, 1, 6)
    path = [(1 - t) * mu + t * d_fit / c_fit for t in ts]
    fitted = [float(poisson_loss(torch.as_tensor(i), torch.as_tensor(d_fit / c_fit), c_fit, 0, 200)) for i in path]
    scored = [held_counts_nll(_Pattern(i, c_fit), held, 64) for i in path]
    assert all(b < a for a, b in zip(fitted, fitted[1:], strict=False)), fitted  # the fit's term rewards the noise
    assert int(np.argmin(scored)) <= 1 and scored[-1] > scored[0], scored  # the held one does not
    scales = [0.8, 0.9, 1.0, 1.1, 1.25]
    by_scale = [held_counts_nll(_Pattern(s * mu, c_fit), held, 64) for s in scales]
    assert int(np.argmin(by_scale)) == 2, by_scale


def _run(ds, held, epochs, **options):
    model = Ptychography.from_dataset(ds)
    model.set_learning_rates(positions=0.0, obj_amplitude=0.1)
    for _ in optimize_with_options(model, ds, epochs, losses=COUNTED, batch_size=32, progress=False,
                                   precondition_batches=16, lr_decay="none", heldout_counts=held, **options):
        pass
    return model


def test_the_run_returns_its_lowest_held_epoch_exactly_as_a_run_of_that_many(low_dose, caplog):
    ds, _ = low_dose
    fit, held = split_counts(ds, Q, 0, YES, 1e12)
    with caplog.at_level(logging.INFO, logger="phasestem.recon"):
        model = _run(fit, held, 12, holdout_patience=2)
    kept = model.epoch
    assert f"returned epoch {kept} of {kept + 2}: the lowest Poisson deviance" in caplog.text
    assert "stopped after 2 epochs without a new lowest" in caplog.text
    assert all("heldout" in h for h in model.loss_history) and len(model.loss_history) == kept
    assert model.heldout_returned.startswith(f"epoch {kept} of {kept + 2}")
    again = _run(fit, held, kept, holdout_patience=50)
    for name, value in again.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    with pytest.raises(ConfigError, match="two held-out rules"):
        _run(fit, held, 1, holdout=0.05)
    with pytest.raises(ConfigError, match="the held counts have 400 patterns, the data 399"):
        check_split(held, 399, 1, 0.0, SimpleNamespace(count_split=None), False)


def test_a_run_from_a_file_splits_records_and_resumes_only_with_the_same_split(low_dose, tmp_path, caplog):
    from phasestem.recon.results import load_results
    from phasestem.recon.run import run_reconstruction

    ds, _ = low_dose
    path = hdf5.write(tmp_path / "counted.h5", ds)
    whole = run_reconstruction(tiny_params(path, STEP, tmp_path / "whole", n_epochs=3, holdout_counts=Q,
                                           holdout_patience=50, checkpoint_every=1))
    log_text = (tmp_path / "whole" / "reconstruct.log").read_text()
    assert "held out of the fit: 10 % of every pattern's counts (binomial split, seed 0)" in log_text
    assert whole.counts_per_pattern == pytest.approx(0.9 * np.asarray(ds.patterns).sum((-2, -1)).mean(), rel=0.02)
    res = load_results(tmp_path / "whole" / "results.h5")
    assert res["provenance"]["run.holdout_counts"]["value"] == Q
    assert "binomial split, seed 0" in res["provenance"]["run.holdout_counts"]["note"]
    assert res["provenance"]["run.holdout_counts.returned_epoch"]["value"] == whole.epoch
    assert np.isfinite(res["loss"]["heldout"]).all() and len(res["loss"]["heldout"]) == whole.epoch
    other = tiny_params(path, STEP, tmp_path / "whole", n_epochs=4, holdout_counts=Q, seed=1)
    with pytest.raises(ConfigError, match="the checkpoint was written by a run with run.holdout_counts 0.1 and "
                                          "run.seed 0: resume with the same settings"):
        run_reconstruction(other, resume=True)


def test_a_run_killed_and_resumed_scores_and_returns_as_the_uninterrupted_one(low_dose, tmp_path):
    from phasestem.recon.engine import load_checkpoint

    ds, _ = low_dose
    fit, held = split_counts(ds, Q, 0, YES, 1e12)
    ckpt = tmp_path / "checkpoint.pt"

    def run(model, epochs, **more):
        model.set_learning_rates(positions=0.0, obj_amplitude=0.1)
        return optimize_with_options(model, fit, epochs, losses=COUNTED, batch_size=32, progress=False,
                                     precondition_batches=16, lr_decay="cosine", heldout_counts=held,
                                     holdout_patience=50, checkpoint_path=ckpt, checkpoint_every=1, **more)

    ref = Ptychography.from_dataset(fit)
    gen = run(ref, 5)
    next(gen), next(gen)
    saved = ckpt.read_bytes()
    list(gen)
    ckpt.write_bytes(saved)
    model = Ptychography.from_dataset(fit)
    list(run(model, 3, state=load_checkpoint(ckpt, model)))
    assert model.epoch == ref.epoch and [h["heldout"] for h in model.loss_history] == \
        [h["heldout"] for h in ref.loss_history]
    for name, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    fresh = Ptychography.from_dataset(fit)
    state = load_checkpoint(ckpt, fresh)
    state.count_split = None  # a checkpoint of a run without the split
    with pytest.raises(ConfigError, match="written by a run with no count split"):
        list(run(fresh, 1, state=state))


def test_a_prior_keeps_the_target_of_its_twins_lowest_held_deviance_and_the_twin_stops(low_dose, caplog):
    """With held-out counts a learned prior scores its twin (plain AD of the same recipe) at every refresh: here
    (1e3 e⁻, the amplitude refined) the twin fits the noise from its first epochs on, its held deviance rises, and
    the prior keeps the target of the refresh where it was lowest, stops the twin and adds no stop of its own (the
    run goes on to its end)."""
    from phasestem.recon.count_split import held_counts_nll
    from phasestem.recon.prior import RefreshedPrior
    from phasestem.recon.twin import TwinRun

    ds, truth = low_dose
    fit, held = split_counts(ds, Q, 0, YES, 1e12)
    options = dict(losses=COUNTED, batch_size=32, progress=False, precondition_batches=16, lr_decay="none")

    def model_of():
        m = Ptychography.from_dataset(fit)
        m.set_learning_rates(positions=0.0, obj_amplitude=0.1)
        return m

    plain = model_of()
    twin = TwinRun(plain, optimize_with_options(plain, fit, 12, **options))
    seen = {}

    def target(m):  # a stand-in restorer: the truth, scaled by the twin's epoch (so each refresh's target differs)
        seen[m.epoch] = held_counts_nll(m, held, 64)
        return truth * (1 + 0.01 * m.epoch)

    prior = RefreshedPrior(target, every=2, weight=0.5, start=2, name="stand-in", twin=twin)
    model = model_of()
    with caplog.at_level(logging.INFO, logger="phasestem.recon"):
        for _ in optimize_with_options(model, fit, 12, prior=prior, heldout_counts=held, **options):
            pass
    best = min(seen, key=seen.get)
    assert prior.frozen_at is not None and prior.target_best[1] == best < prior.frozen_at
    assert seen[prior.frozen_at] > seen[best] and max(seen) == prior.frozen_at  # no refresh after the freeze
    assert twin.done and plain.epoch == prior.frozen_at  # the twin stopped there
    assert torch.equal(prior.prior.prior, prior.target_best[2].prior)
    assert f"the twin's held-count deviance was lowest after epoch {best}" in caplog.text
    assert "they judge the learned prior's target" in caplog.text
    assert model.epoch == 12 and "heldout" not in model.loss_history[-1]  # no held-out stop of the run's own
    assert [h.get("prior_target_frozen") for h in model.loss_history][prior.frozen_at - 1:] == \
        [float(prior.frozen_at)] * (12 - prior.frozen_at + 1)
