"""PhasePrior: the proximal pull of the AD object towards a phase image (the learned prior used with the physics)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from phasestem.base.errors import ConfigError
from phasestem.recon import Ptychography
from phasestem.recon.prior import PhasePrior
from phasestem.recon.synthetic import synthetic_scan


@pytest.fixture(scope="module")
def scan():
    torch.manual_seed(0)
    ds = synthetic_scan(scan_shape=(8, 8), scan_step=1.0, max_phase=0.5, seed=3)
    return ds, np.asarray(ds.truth["phase"], np.float32), tuple(ds.truth["sampling"])


def test_pull_is_the_proximal_point_on_the_image_and_leaves_the_rest(scan):
    ds, truth, samp = scan
    model = Ptychography.from_dataset(ds, n_slices=2)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        model.obj_phase.copy_(torch.from_numpy(rng.normal(0, 0.2, model.obj_phase.shape).astype(np.float32)))
    before = model.obj_phase.detach().clone()
    prior = PhasePrior(model, truth, samp, weight=0.5)
    sy, sx = prior.region
    record = {}
    prior(model, record)
    after = model.obj_phase.detach()
    p = torch.from_numpy(truth[: sy.stop - sy.start, : sx.stop - sx.start]) / 2  # per slice
    old = before[:, :, sy, sx]
    offset = (old - p).mean(dim=(-2, -1), keepdim=True)
    np.testing.assert_allclose(after[:, :, sy, sx], (old + 0.5 * (p + offset)) / 1.5, atol=1e-6)
    mask = torch.ones_like(after, dtype=torch.bool)
    mask[:, :, sy, sx] = False
    assert torch.equal(after[mask], before[mask])  # the padding is not pulled
    # the pull moves structure, not the constant phase the data cannot see
    np.testing.assert_allclose(after[:, :, sy, sx].mean(), old.mean(), atol=1e-6)
    assert record["prior_weight"] == 0.5


def test_weight_zero_is_the_plain_hybrid_and_negative_weights_are_refused(scan):
    ds, truth, samp = scan
    model = Ptychography.from_dataset(ds, initial_phase=truth, initial_phase_sampling=samp)
    before = model.obj_phase.detach().clone()
    PhasePrior(model, truth * 0, samp, weight=0.0).apply(model)
    assert torch.equal(model.obj_phase.detach(), before)
    with pytest.raises(ConfigError, match="prior weight"):
        PhasePrior(model, truth, samp, weight=-1.0)


def test_a_strong_pull_keeps_ad_near_a_good_prior_on_noisy_data(scan):
    """Low-dose patterns: AD from the truth drifts away by fitting the noise; pulled towards the truth after every
    epoch it stays closer (the mechanism that lets a good prediction help at low dose)."""
    from phasestem.cli.demo import field_of_view
    from phasestem.metrics import phase_error
    from phasestem.physics.resample import sample_on_grid

    _, _, _ = scan
    ds = synthetic_scan(scan_shape=(6, 6), scan_step=1.0, max_phase=0.5, seed=3, dose=200.0)
    truth = np.asarray(ds.truth["phase"], np.float32)
    samp = tuple(ds.truth["sampling"])
    fov = field_of_view(ds, samp, truth.shape)
    errors = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = Ptychography.from_dataset(ds, initial_phase=truth, initial_phase_sampling=samp,
                                          learning_rates={"probe": 0.0})
        prior = PhasePrior(model, truth, samp, weight=weight)
        for _ in model.LSQ_optimize(3, ds, batch_size=16, progress=False, callbacks=[prior]):
            pass
        rec = sample_on_grid(model.phase_in_dataset_frame(), model.sampling, samp, truth.shape)
        errors[weight] = phase_error(rec[fov], truth[fov])
    assert errors[1.0] < 0.8 * errors[0.0], errors
