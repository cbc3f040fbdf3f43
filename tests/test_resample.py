"""The one resampler (phasestem.resample): both mappings on images whose right answer is known."""
from __future__ import annotations

import numpy as np
import torch

from phasestem.resample import resample_image, resize, sample_on_grid


def test_sample_on_grid_puts_pixel_zero_at_zero_angstrom():
    """A ramp of value = y + 2x Å sampled at the points of a finer grid gives those points' coordinates."""
    s, t = (0.5, 0.5), (0.2, 0.25)
    yy, xx = np.mgrid[:20, :20] * 0.5
    out = sample_on_grid((yy + 2 * xx).astype(np.float32), s, t, (30, 30))
    y, x = np.mgrid[:30, :30]
    np.testing.assert_allclose(out, y * 0.2 + 2 * x * 0.25, rtol=1e-5, atol=1e-5)
    same = sample_on_grid(np.ones((4, 4), np.float32), s, s, (6, 3))
    assert same.shape == (6, 3) and same[:4].sum() == 12 and same[4:].sum() == 0


def test_resize_keeps_the_field_of_view_for_arrays_and_tensors_alike():
    img = np.random.default_rng(0).random((3, 12, 10)).astype(np.float32)
    out = resize(img, (24, 20))
    assert isinstance(out, np.ndarray) and out.shape == (3, 24, 20)
    t = resize(torch.as_tensor(img, dtype=torch.float64).requires_grad_(), (24, 20))
    assert t.requires_grad and t.dtype == torch.float64
    np.testing.assert_allclose(t.detach().numpy(), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.mean((-2, -1)), img.mean((-2, -1)), rtol=0.05)  # the same picture, finer
    assert resize(img, (12, 10)) is img
    # same field of view: 0.4 Å pixels → 0.2 Å pixels doubles the grid
    assert tuple(resample_image(torch.ones(10, 7), (0.4, 0.4), (0.2, 0.2)).shape) == (20, 14)
