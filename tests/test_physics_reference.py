"""The fast forward operator against the plain reference (phasestem.physics.reference.multislice_intensity): the
same patterns for several slices, probe modes, sub-pixel positions and windows that wrap around the object."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from phasestem.physics.operator import ForwardModel
from phasestem.physics.reference import multislice_intensity


@pytest.mark.parametrize("n_slices, n_modes", [(1, 1), (3, 2)])
def test_the_fused_operator_gives_the_reference_patterns(n_slices, n_modes):
    rng = np.random.default_rng(4)
    sampling, energy, dz, window = (0.25, 0.3), 200e3, 6.0, (24, 20)
    phase = rng.normal(0, 0.4, (n_slices, 40, 36))
    transmission = np.exp(1j * phase) * rng.uniform(0.8, 1.0, phase.shape)
    probe = rng.normal(size=(n_modes, *window)) + 1j * rng.normal(size=(n_modes, *window))
    positions = np.column_stack([rng.uniform(0, 40 * 0.25, 6), rng.uniform(0, 36 * 0.3, 6)])
    positions[0] = (0.1, 0.2)  # a window that wraps over the object's corner
    expected = multislice_intensity(transmission, probe, positions, sampling, energy, dz)
    fast = ForwardModel(window, sampling, energy)(
        torch.as_tensor(transmission, dtype=torch.complex64), torch.as_tensor(probe, dtype=torch.complex64),
        torch.as_tensor(positions, dtype=torch.float32), dz=dz).double().numpy()
    assert fast.shape == expected.shape == (6, *window)
    assert np.abs(fast - expected).max() <= 1e-4 * expected.max()
    # the reference is not trivially equal to anything: a wrong propagator sign changes it
    if n_slices > 1:
        flipped = multislice_intensity(transmission, probe, positions, sampling, energy, -dz)
        assert np.abs(flipped - expected).max() > 1e-2 * expected.max()
