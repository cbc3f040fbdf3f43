"""The Fisher operator of the phase and the marginal variance diag(F⁻¹) (issue 65, phasestem.recon.fisher), on a
tiny scan of the independent NumPy multislice (100 Å defocus, 4 × 4 positions, the model at the true phase)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy_cases import numpy_scan

from phasestem.base.errors import ConfigError, ShapeError
from phasestem.recon import Ptychography
from phasestem.recon.fisher import (
    FisherOperator,
    exact_fisher,
    hutchinson_diagonal,
    marginal_variance,
    positions_lighting,
)
from phasestem.recon.uncertainty import UNCONSTRAINED_FRACTION, fisher_diagonal

pytestmark = pytest.mark.usefixtures("one_torch_thread")
COUNTS = 1e4


def _at_truth(scan: tuple[int, int]) -> Ptychography:
    """A model of a ``scan`` of the NumPy multislice (1 Å step, 100 Å defocus, 32² patterns of 0.2 Å) at the true
    phase."""
    ds, truth, _ = numpy_scan(3, 32, 0.2, scan, 1.0, 100.0, atoms_per_area=0.6)
    model = Ptychography.from_dataset(ds, n_slices=1)
    model.set_initial_phase(truth)
    return model


@pytest.fixture(scope="module")
def model():
    return _at_truth((4, 4))


def _random(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _constrained_pixels(model, count: int) -> np.ndarray:
    """``count`` (row, col) of the pixels uncertainty.py calls constrained, drawn at random."""
    analytic = fisher_diagonal(model, COUNTS).numpy()
    pixels = np.argwhere(analytic >= UNCONSTRAINED_FRACTION * analytic.max())
    return pixels[np.random.default_rng(0).choice(len(pixels), count, replace=False)]


def _exact_over_analytic(model, pixels: np.ndarray) -> np.ndarray:
    dense = exact_fisher(FisherOperator(model, counts=COUNTS), pixels)
    return np.diag(dense) / fisher_diagonal(model, COUNTS).double().numpy()[pixels[:, 0], pixels[:, 1]]


def test_the_operator_is_symmetric_and_positive(model):
    op = FisherOperator(model, counts=COUNTS)
    u, v = _random(op.shape, 1), _random(op.shape, 2)
    fu, fv = op.apply(u), op.apply(v)
    uv, vu = float((u * fv).sum()), float((fu * v).sum())
    assert abs(uv - vu) <= 1e-3 * abs(uv)
    checker = torch.from_numpy(np.indices(op.shape).sum(0) % 2 * 2.0 - 1.0)  # the highest frequency
    for w, fw in ((u, fu), (v, fv), (checker, op.apply(checker))):
        assert float((w * fw).sum()) > 0


@pytest.mark.parametrize("noise_sigma", [None, 3.0])
def test_the_quadratic_form_is_the_weighted_norm_of_the_patterns_change(model, noise_sigma):
    """⟨v, F v⟩ = Σ W (J v)², J v from the model's own patterns at φ ± 10⁻⁶ v (float64), W = c / I (Poisson) or
    c² / σ_n² (Gaussian): the backward pass is the adjoint of the change of the patterns, with the noise's
    weights."""
    op = FisherOperator(model, counts=COUNTS, noise_sigma=noise_sigma)
    v = _random(op.shape, 3)
    twin, index = op.model, torch.arange(model.positions.shape[0])
    start = twin.obj_phase.detach().clone()
    with torch.no_grad():
        twin.obj_phase[0, 0] += 1e-6 * v
        plus = twin(index)
        twin.obj_phase[0, 0] -= 2e-6 * v
        minus = twin(index)
        twin.obj_phase.copy_(start)
    change = (plus - minus) / 2e-6
    weight = COUNTS / (0.5 * (plus + minus)) if noise_sigma is None else COUNTS**2 / noise_sigma**2
    expected = float((weight * change**2).sum())
    assert float((v * op.apply(v)).sum()) == pytest.approx(expected, rel=1e-4)


def test_the_exact_diagonal_is_the_analytic_one_for_a_scattering_object(model):
    """uncertainty.fisher_diagonal (2c Σ_j |ψ_j|²) against F e_i · e_i at 40 constrained pixels: the median ratio
    within 3 %."""
    ratio = _exact_over_analytic(model, _constrained_pixels(model, 40))
    assert abs(np.median(ratio) - 1.0) <= 0.03, np.median(ratio)


def test_a_flat_object_is_informed_by_the_bright_field_alone():
    """At a flat phase the far field has no dark field, whose first-order information the analytic diagonal counts:
    the exact diagonal is the bright-field disk's share of the detector (a round aperture of 20 mrad in a detector
    of ±49 mrad: π (20/98)² ≈ 0.13) of the analytic one, not the whole."""
    ds, _, _ = numpy_scan(3, 32, 0.2, (4, 4), 1.0, 100.0, atoms_per_area=0.6)
    flat = Ptychography.from_dataset(ds, n_slices=1)
    pattern = flat.simulate([0])[0]
    share = float((pattern > 1e-3 * pattern.max()).double().mean())
    ratio = _exact_over_analytic(flat, _constrained_pixels(flat, 20))
    assert np.median(ratio) == pytest.approx(share, rel=0.2), (np.median(ratio), share)
    assert np.median(ratio) < 0.3


@pytest.fixture(scope="module")
def central(model):
    """The operator, a 10 × 10 pixel region at the object's centre and the dense F over it."""
    op = FisherOperator(model, counts=COUNTS)
    cy, cx = op.shape[0] // 2, op.shape[1] // 2
    region = np.zeros(op.shape, bool)
    region[cy - 5:cy + 5, cx - 5:cx + 5] = True
    return op, region, exact_fisher(op, np.argwhere(region))


def test_hutchinson_probes_give_the_diagonal(central):
    op, region, dense = central
    estimate = hutchinson_diagonal(op, probes=16, region=region).numpy()[region]
    assert np.median(estimate / np.diag(dense)) == pytest.approx(1.0, abs=0.05)


def test_the_marginal_variance_is_the_diagonal_of_the_inverse(central):
    """Hutchinson probes with CG solves on the region (the rest held fixed) against diag((F_RR + λ)⁻¹) of the
    dense matrix: the median within 10 %, most pixels within 15 %."""
    op, region, dense = central
    result = marginal_variance(op, probes=16, cg_iters=60, tol=1e-4, damping=1e-3, region=region)
    exact = np.diag(np.linalg.inv(dense + result.damping * np.eye(len(dense))))
    estimate = result.variance[region]
    assert result.converged
    assert np.isnan(result.variance[~region]).all()
    assert np.median(estimate) == pytest.approx(np.median(exact), rel=0.1)
    assert np.median(np.abs(estimate / exact - 1.0)) <= 0.15


def test_the_positions_lighting_a_region_carry_its_information():
    """A 6 × 6 pixel region at the first position of a 6 × 6 scan: the positions holding 99.9 % of its illumination are
    fewer than all, and the operator over them alone keeps ⟨z, F z⟩ of a vector on the region within 0.2 %."""
    model = _at_truth((6, 6))
    region = np.zeros(model.object_shape, bool)
    y, x = (model.positions[0].detach() / torch.tensor(model.sampling)).round().long().tolist()
    region[y - 3:y + 3, x - 3:x + 3] = True
    index = positions_lighting(model, region, share=0.999)
    assert len(index) < model.positions.shape[0]
    z = _random(model.object_shape, 5) * torch.from_numpy(region)
    full = float((z * FisherOperator(model, counts=COUNTS).apply(z)).sum())
    part = float((z * FisherOperator(model, counts=COUNTS, index=index).apply(z)).sum())
    assert 0.998 * full <= part <= full * (1 + 1e-9)


def test_the_model_is_left_as_it_was(model):
    phase = model.obj_phase.detach().clone()
    op = FisherOperator(model, counts=COUNTS)
    twin_phase = op.model.obj_phase.detach().clone()
    op.apply(_random(op.shape, 4))
    assert torch.equal(model.obj_phase, phase)
    assert torch.equal(op.model.obj_phase, twin_phase)
    assert twin_phase.dtype == torch.float64 and torch.equal(twin_phase, phase.double())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in op.model.parameters())


def test_bad_input_is_refused_in_one_line(model):
    op = FisherOperator(model, counts=COUNTS)
    with pytest.raises(ShapeError, match="v must be"):
        op.apply(torch.zeros(3, 3))
    with pytest.raises(ConfigError, match="at most 4096"):
        exact_fisher(op, np.zeros((4097, 2), int))
    with pytest.raises(ConfigError, match="counts per pattern"):
        FisherOperator(model)  # a model that made no epoch has no counts
    with pytest.raises(ConfigError, match="no pixel"):
        marginal_variance(op, region=np.zeros(op.shape, bool))
