"""Scan distortion: --auto refines the scan positions where the data can place them (:data:`AUTO_POSITIONS`,
:func:`refines_positions`).

Data: the independent NumPy multislice (``benchmarks/independent/numpy_multislice.py``), a weak phase object, the
patterns simulated where the probe was (random errors of σ 0.3 Å) and reconstructed from the nominal raster, as a
real scan is. A drift is left out: it is an affine warp of the object that the data cannot tell from the specimen,
and --auto removes the affine part of the corrections (with a 1 Å drift added, r is 0.77 refined or not).
"""
import pytest
from numpy_cases import numpy_scan
from numpy_cases import pearson as _pearson

from phasestem.metrics import align_to
from phasestem.recon import Constraints, Ptychography
from phasestem.recon.auto import AUTO_POSITIONS, refines_positions
from phasestem.recon.settings.losses import LossConfig

WINDOW, SAMPLING, ENERGY, SEMIANGLE, DEFOCUS, SCAN, STEP = 64, 0.2, 300e3, 20.0, 80.0, (16, 16), 0.5
ERROR = 0.3  # Å

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def distorted():
    return numpy_scan(11, WINDOW, SAMPLING, SCAN, STEP, DEFOCUS, atoms_per_area=0.15, margin=8,
                      position_error=ERROR, dose=1e6, energy=ENERGY, semiangle=SEMIANGLE)


def _run(ds, truth, positions, epochs=20):
    """r after the best shift and the position corrections (N, 2) Å, --auto's way where positions are refined
    (their affine part removed each epoch)."""
    model = Ptychography.from_dataset(ds)
    start = model.dataset_positions().cpu().numpy().copy()
    model.set_learning_rates(positions=positions)
    constraints = Constraints(position_affine={"enabled": bool(positions)})
    for _ in model.LSQ_optimize(epochs, ds, batch_size=16, losses=LossConfig(gaussian=0.5, poisson=0.5),
                                progress=False, precondition_batches=16, lr_decay="cosine", constraints=constraints):
        pass
    moved = model.dataset_positions().cpu().numpy() - start
    return _pearson(align_to(model.phase_in_dataset_frame(truth.shape), truth), truth), moved


def test_the_rule_refines_positions_of_uncounted_and_well_counted_data_only():
    assert refines_positions(None) and refines_positions(1e5)
    assert not refines_positions(1e4) and not refines_positions(1e3)


def test_refined_positions_follow_the_scan_errors_and_sharpen_the_phase(distorted):
    """With --auto's position schedule the phase correlates better with the truth than from the nominal raster
    (measured, 20 epochs, after the best shift: r 0.950 → 0.985), and the positions move with the true errors
    (their non-affine part; measured correlation 0.90)."""
    ds, truth, error = distorted
    r_fixed, _ = _run(ds, truth, 0.0)
    r_refined, moved = _run(ds, truth, dict(AUTO_POSITIONS))
    assert r_refined > r_fixed + 0.02, (r_fixed, r_refined)
    centred = error - error.mean(0)
    moved = moved - moved.mean(0)
    assert _pearson(moved.ravel(), centred.ravel()) > 0.5


def test_row_adam_moves_only_the_positions_of_the_batch_and_is_adam_where_all_are():
    """A position whose pattern is not in the mini-batch keeps its place (plain Adam's momentum moves it on every
    later batch of the epoch); with every row in every batch the steps are torch's Adam's."""
    import torch

    from phasestem.recon.optimizers import RowAdam

    torch.manual_seed(0)
    grads = [torch.randn(6, 2, dtype=torch.float64) for _ in range(4)]

    def run(make, masks):
        x = torch.zeros(6, 2, dtype=torch.float64, requires_grad=True)
        opt, seen = make([x]), []
        for g, mask in zip(grads, masks, strict=True):
            x.grad = g * mask
            opt.step()
            seen.append(x.detach().clone())
        return seen

    def adam(p):
        return torch.optim.Adam(p, lr=0.03)

    def row_adam(p):
        return RowAdam(p, lr=0.03)

    every = [torch.ones(6, 1, dtype=torch.float64)] * 4
    torch.testing.assert_close(run(row_adam, every)[-1], run(adam, every)[-1])
    first_only = torch.tensor([[1.0], [1.0], [1.0], [0.0], [0.0], [0.0]], dtype=torch.float64)
    rest_only = 1.0 - first_only
    masks = [first_only, rest_only, rest_only, rest_only]  # rows 0–2 in the first batch only
    row, plain = run(row_adam, masks), run(adam, masks)
    torch.testing.assert_close(row[0], plain[0])
    assert torch.equal(row[-1][:3], row[0][:3])  # not moved after their batch
    assert (plain[-1][:3] - plain[0][:3]).abs().min() > 0.01  # plain Adam carried them 3 more steps


def test_the_affine_part_of_the_position_corrections_is_removed_and_the_local_part_kept():
    import torch

    from phasestem.recon.constraints import remove_affine_corrections

    class Model:
        pass

    g = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1).reshape(-1, 2) * 0.5
    local = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)) * 0.1
    design = torch.cat([g - g.mean(0), torch.ones(64, 1)], 1)
    local = local - design @ torch.linalg.lstsq(design, local).solution  # no affine part of its own
    affine = g @ torch.tensor([[0.02, -0.05], [0.04, 0.01]]) + torch.tensor([0.3, -0.2])
    m = Model()
    m.initial_positions, m.positions = g.clone(), torch.nn.Parameter(g + affine + local)
    remove_affine_corrections(m)
    torch.testing.assert_close(m.positions.data - g, local, atol=1e-5, rtol=0)
