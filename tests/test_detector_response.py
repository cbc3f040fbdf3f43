"""One bin-centring rule: the simulator, the reconstruction's model and the detector bin a known far field alike."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from phasestem.detector import PixelatedDetector, bin_window
from phasestem.physics.experiment import Experiment
from phasestem.physics.fourier import fft2
from phasestem.physics.optics import antialias_mask
from phasestem.simulate.scan import DetectorGeometry, simulate_patterns

SAMPLING, ENERGY = (0.2, 0.2), 300e3


def _random_probe(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)) / n


@pytest.mark.parametrize("factor", [2, 3, 4, 5])
def test_simulator_reconstruction_and_detector_bin_a_known_far_field_alike(factor):
    """A random probe over vacuum: every pattern is |F ψ|² (a shift is a phase ramp in k), a far field with no
    symmetry, so a bin that moved by one fine pixel would show. The detector bins it (with the simulator's
    band limit for the simulator), and the simulator's patterns and the model's oversampled patterns must be
    those bins to float precision."""
    h = 8
    n = factor * h
    probe = _random_probe(n)
    far = torch.fft.fftshift(fft2(probe).abs().square(), dim=(-2, -1)).numpy()  # zero frequency at (n//2, n//2)
    detector = PixelatedDetector((n, n), binning=factor)

    # reconstruction: an Experiment whose window is `factor` × the detector, over vacuum
    exp = Experiment(probe, torch.tensor([[20.0, 21.3], [22.1, 19.7]]), (n + 40, n + 40), SAMPLING, ENERGY,
                     oversampling=factor)
    model = exp.patterns(torch.ones(1, 1, n + 40, n + 40, dtype=torch.complex64)).numpy()
    binned = detector.apply(far)
    assert model.shape == (2, h, h) and binned.shape == (h, h)
    np.testing.assert_allclose(model, np.broadcast_to(binned, model.shape), rtol=1e-5, atol=1e-6 * binned.max())

    # simulator: the same bins of a larger grid's far field (its crop holds whole bins), band-limited
    N = n + 2 * factor + 6
    big = _random_probe(N, seed=1)
    geo = DetectorGeometry((n, n), (factor, factor), (1.0, 1.0))
    sim = simulate_patterns(torch.ones(1, 1, N, N, dtype=torch.complex64), big, np.array([[3.0, 4.1]]), SAMPLING,
                            ENERGY, 1.0, geo)[0].numpy()
    band = torch.fft.fftshift(antialias_mask((N, N), SAMPLING).square(), dim=(-2, -1))
    far_big = torch.fft.fftshift(fft2(big).abs().square(), dim=(-2, -1)) * band
    expected = PixelatedDetector((N, N), crop=(n, n), binning=factor).apply(far_big.numpy())
    np.testing.assert_allclose(sim, expected, rtol=1e-5, atol=1e-6 * expected.max())
    np.testing.assert_allclose(geo.apply(far_big[None]).numpy()[0], expected, rtol=1e-6)


def test_the_bin_rule_centres_the_zero_frequency_in_its_bin():
    """The zero frequency (pixel n//2) is pixel (f − 1)//2 of bin h//2: its centre for odd factors."""
    for n, f in [(64, 3), (64, 2), (48, 3), (50, 5), (36, 4)]:
        first = bin_window(n, f)
        bin_of_zero, offset = divmod(n // 2 - first, f)
        assert bin_of_zero == (n // f) // 2 and offset == (f - 1) // 2, (n, f)
