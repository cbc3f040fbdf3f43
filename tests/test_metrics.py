"""Metrics: PSNR/MSE against analytic values, SSIM/MS-SSIM limits, phase error invariances, FRC."""
from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_msssim
import torch

from phasestem import metrics as M
from phasestem.base.errors import ShapeError


def smooth_field(n: int = 64, seed: int = 0, width: float = 0.08) -> np.ndarray:
    """A periodic band-limited random image (Fourier shifts are exact on it)."""
    rng = np.random.default_rng(seed)
    f = np.fft.fft2(rng.normal(size=(n, n)))
    ky, kx = np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None]
    return np.fft.ifft2(f * np.exp(-(ky**2 + kx**2) / (2 * width**2))).real


def test_psnr_and_mse_of_known_error():
    target = np.zeros((2, 16, 16))
    target[:, 0, 0] = 2.0  # data range 2
    pred = target + 0.1  # MSE = 0.01 everywhere
    assert M.mse(pred, target) == pytest.approx(0.01)
    assert M.psnr(pred, target) == pytest.approx(10 * math.log10(4 / 0.01))
    assert M.psnr(pred, target, data_range=1.0) == pytest.approx(20.0)
    per = M.psnr(pred, target, reduction="none")
    assert per.shape == (2,)


def test_shapes_and_types_accepted():
    x = torch.rand(3, 1, 20, 20, requires_grad=True)
    y = torch.rand(3, 20, 20)
    v = M.psnr(x, y)
    assert isinstance(v, torch.Tensor) and v.ndim == 0
    v.backward()
    assert x.grad is not None
    assert isinstance(M.mse(x.detach().numpy()[0, 0], y.numpy()[0]), float)
    with pytest.raises(ShapeError, match="same shape"):
        M.mse(np.zeros((4, 4)), np.zeros((5, 5)))
    with pytest.raises(ShapeError, match="expected shape"):
        M.mse(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 4)))


def test_ssim_identical_and_matches_pytorch_msssim():
    g = smooth_field(76)
    assert M.ssim(g, g) == pytest.approx(1.0)
    assert M.ms_ssim(g, g) == pytest.approx(1.0, abs=1e-6)
    noisy = g + np.random.default_rng(1).normal(size=g.shape) * 0.05
    assert M.ssim(noisy, g) < 0.99
    # same numbers as pytorch-msssim called directly with the documented window/offset rule
    r = float(g.max() - g.min())
    x = torch.tensor(noisy - g.min())[None, None]
    y = torch.tensor(g - g.min())[None, None]
    win, sigma = M.ms_ssim_window(76)
    assert win == 5
    ref = pytorch_msssim.ms_ssim(x, y, data_range=r, win_size=win, win_sigma=sigma)
    assert M.ms_ssim(noisy, g) == pytest.approx(float(ref), rel=1e-9)
    assert M.ms_ssim_window(256)[0] == 11 and M.ms_ssim_window(128)[0] == 7 and M.ms_ssim_window(64)[0] == 3
    with pytest.raises(ShapeError, match="MS-SSIM"):
        M.ms_ssim(np.zeros((32, 32)), np.zeros((32, 32)))


def test_ssim_invariant_to_common_offset_of_target_min():
    g = smooth_field(48)
    noisy = g + np.random.default_rng(2).normal(size=g.shape) * 0.05
    assert M.ssim(noisy, g) == pytest.approx(M.ssim(noisy + 5, g + 5), rel=1e-6)


def test_phase_error_invariant_to_offset_and_subpixel_shift():
    gt = smooth_field(64) + 0.5
    moved = M.apply_shift(gt, (0.37, -1.71)) + 1.234
    assert M.phase_error(gt + 0.8, gt, align=False) == pytest.approx(0.0, abs=1e-12)
    assert M.phase_error(moved, gt, align=False) > 0.1
    assert M.phase_error(moved, gt, align=True) < 1e-6
    np.testing.assert_allclose(M.shift_between(moved, gt), (-0.37, 1.71), atol=0.011)
    # a genuine error survives alignment: E = ||δ|| / ||gt|| for a zero-mean perturbation
    delta = 0.1 * smooth_field(64, seed=5, width=0.3)
    delta -= delta.mean()
    expected = np.sqrt((delta**2).sum() / (gt**2).sum())
    assert M.phase_error(gt + delta, gt, align=False) == pytest.approx(expected, rel=1e-9)


def test_remove_offset_torch_and_numpy():
    gt = np.random.default_rng(0).random((8, 8))
    assert np.allclose(M.remove_offset(gt + 3, gt), gt)
    out = M.remove_offset(torch.tensor(gt + 3), gt)
    assert isinstance(out, torch.Tensor) and torch.allclose(out, torch.tensor(gt))


def test_pearson():
    g = smooth_field(32)
    assert M.pearson(3 * g + 1, g) == pytest.approx(1.0)
    assert M.pearson(-g, g) == pytest.approx(-1.0)


def test_frc_identical_is_one_and_noise_lowers_it():
    g = smooth_field(64)
    f, c = M.frc(g, g, sampling=0.5)
    np.testing.assert_allclose(c, 1.0, atol=1e-9)
    assert f[1] == pytest.approx(2 * 1.0 / (64 * 0.5) / 2)  # ring step 1/(N·dx) in 1/Å
    assert f[-1] < 1.0  # below Nyquist 1/(2·0.5 Å)
    noisy = g + np.random.default_rng(3).normal(size=g.shape) * 0.1
    f, c = M.frc(g, noisy)
    res = M.frc_resolution(f, c)
    assert c[1] > 0.9 and c[-1] < 0.5
    assert 2.0 < res < 20.0  # px


def test_frc_resolution_ignores_the_lowest_rings_and_a_single_ring_dip():
    """Rings below 1/7 before the curve first holds above it (the lowest rings of a small field, or a background
    ptychography left free) are not the resolution; with sustain=2 a single ring's dip later is not either."""
    f = np.arange(8) * 0.1
    lowest = np.array([1.0, -0.9, 0.9, 0.9, 0.8, 0.2, 0.1, 0.05])  # ring 1 anti-correlated, then above to 0.5
    assert 1 / 0.6 < M.frc_resolution(f, lowest) < 1 / 0.5
    assert M.frc_resolution(f, lowest, sustain=2) == M.frc_resolution(f, lowest)
    low3 = np.array([1.0, -0.5, 0.0, -0.2, 0.9, 0.9, 0.9, 0.9])  # three low rings below: measured 7.2 Å before
    assert M.frc_resolution(f, low3, sustain=2) == pytest.approx(1 / 0.7)
    dip = np.array([1.0, 0.9, 0.9, 0.1, 0.9, 0.2, 0.1, 0.05])  # one ring's dip after the curve held above
    assert 1 / 0.3 < M.frc_resolution(f, dip) < 1 / 0.2  # the single-ring rule stops at it
    assert 1 / 0.6 < M.frc_resolution(f, dip, sustain=2) < 1 / 0.5
    last = np.r_[np.full(7, 0.9), 0.1]  # only the last ring below: the rings past it count as below
    assert M.frc_resolution(f, last, sustain=2) == M.frc_resolution(f, last) < 1 / 0.6
    assert M.frc_resolution(f, np.ones(8), sustain=2) == pytest.approx(1 / 0.7)  # never below: the last ring
    never = np.array([1.0, 0.1, 0.2, 0.1, 0.3, 0.1, 0.0, 0.1])  # never holds above: searched from ring 1
    assert 1 / 0.5 < M.frc_resolution(f, never, sustain=2) < 1 / 0.4  # the first pair below: rings 5 and 6


def test_truth_on_grid_follows_the_frame_given_by_the_positions():
    """A periodic truth sampled at 0.2 Å, seen from a frame rotated by 20° and shifted (as a calibrated dataset
    frame is): the resampled truth is the analytic one at the mapped points, on the other pixel size."""
    L, n = 12.0, 60  # Å, px: truth pixel 0.2 Å

    def f(y, x):
        return np.cos(2 * np.pi * y / L) + 0.5 * np.sin(2 * np.pi * 2 * x / L)

    yy, xx = np.meshgrid(np.arange(n) * L / n, np.arange(n) * L / n, indexing="ij")
    th = np.radians(20.0)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    grid = np.stack(np.meshgrid(np.arange(5.0), np.arange(6.0), indexing="ij"), -1).reshape(-1, 2) * 0.7
    truth_positions = grid @ rot.T + (3.0, 4.5)
    out = M.truth_on_grid(f(yy, xx), L / n, truth_positions, grid, 0.3, (9, 11), periodic=True)
    iy, ix = np.meshgrid(np.arange(9) * 0.3, np.arange(11) * 0.3, indexing="ij")
    where = np.stack([iy.ravel(), ix.ravel()], -1) @ rot.T + (3.0, 4.5)
    np.testing.assert_allclose(out.ravel(), f(where[:, 0], where[:, 1]), atol=2e-3)
    with pytest.raises(ShapeError):
        M.truth_on_grid(f(yy, xx), 0.2, truth_positions[:5], grid, 0.3, (9, 11))
