"""The one resampler (phasestem.physics.resample): both mappings on images whose right answer is known."""
from __future__ import annotations

import numpy as np
import torch

from phasestem.physics.resample import resample_image, resize, sample_on_grid


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


def _cosine(n: int, periods: tuple[int, int], pixel_centres: bool) -> np.ndarray:
    """cos(2π(p_y·y + p_x·x)/L + 0.4) sampled on n × n pixels of a field of length L = 1 (band-limited, periodic)."""
    c = (np.arange(n) + (0.5 if pixel_centres else 0.0)) / n
    return np.cos(2 * np.pi * (periods[0] * c[:, None] + periods[1] * c[None, :]) + 0.4)


def test_fourier_order_is_exact_on_a_band_limited_cosine_and_linear_is_not():
    """A cosine of whole periods over the field, 64² → 96² and → 40² (field of view kept): the Fourier order gives
    the cosine at the new pixel centres to 1e-5; bilinear is off by > 1e-2; cubic splines lie in between."""
    img = _cosine(64, (3, 5), True).astype(np.float32)
    for n in (96, 40):
        exact = _cosine(n, (3, 5), True)
        err = {o: np.abs(resize(img, (n, n), order=o) - exact).max() for o in ("fourier", "cubic", "linear")}
        assert err["fourier"] < 1e-5, err
        assert err["linear"] > 1e-2 and err["cubic"] > err["fourier"], err


def test_sample_on_grid_fourier_is_exact_at_arbitrary_points():
    """Pixel (0, 0) at 0 Å: a cosine on 0.4 Å pixels over 25.6 Å sampled at 0.26 Å from a shifted start."""
    img = _cosine(64, (2, 4), False).astype(np.float32)  # 64 px of 0.4 Å: L = 25.6 Å
    start, t, shape = (1.3, -0.7), (0.26, 0.26), (70, 50)
    out = sample_on_grid(img, (0.4, 0.4), t, shape, start=start, order="fourier")
    y = (start[0] + np.arange(shape[0]) * t[0]) / 25.6
    x = (start[1] + np.arange(shape[1]) * t[1]) / 25.6
    exact = np.cos(2 * np.pi * (2 * y[:, None] + 4 * x[None, :]) + 0.4)
    np.testing.assert_allclose(out, exact, atol=1e-5)
    lin = sample_on_grid(img, (0.4, 0.4), t, shape, start=start)
    assert np.abs(lin - exact)[5:, 5:].max() > 1e-2


def test_band_limited_round_trip_and_tensor_gradients():
    """Up and back down returns any image of odd size (Fourier order: the up-sampling keeps its whole band; an
    even size's Nyquist row is ambiguous) and a smooth one to ~1e-3 by splines; torch tensors stay differentiable
    tensors with the array path's values."""
    rng = np.random.default_rng(1)
    img = rng.standard_normal((33, 41)).astype(np.float32)
    back = resize(resize(img, (66, 82), order="fourier"), (33, 41), order="fourier")
    np.testing.assert_allclose(back, img, atol=1e-4)
    smooth = _cosine(48, (2, 3), True).astype(np.float32)
    back3 = resize(resize(smooth, (80, 80), order="cubic"), (48, 48), order="cubic")
    assert np.abs(back3 - smooth).max() < 2e-3
    for order in ("cubic", "fourier"):
        t = torch.as_tensor(img, dtype=torch.float64).requires_grad_()
        out = resample_image(t, (0.4, 0.4), (0.3, 0.3), order=order)
        assert out.shape == (44, 55) and out.dtype == torch.float64
        out.sum().backward()
        assert t.grad is not None and torch.isfinite(t.grad).all()
        np.testing.assert_allclose(out.detach().numpy(), resize(img, (44, 55), order=order), atol=1e-5)


def test_unknown_order_is_refused_in_one_line():
    import pytest

    from phasestem.base.errors import ConfigError

    with pytest.raises(ConfigError, match="order must be one of linear, cubic, fourier"):
        resize(np.ones((4, 4), np.float32), (8, 8), order="quintic")
