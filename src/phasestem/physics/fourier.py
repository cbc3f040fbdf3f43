"""Fourier-space building blocks: unitary 2-D FFTs, shift ramps, Fourier shifts and |x|².

The foundation of :mod:`phasestem.physics`; it imports nothing of phasestem's, so any module (``optics``
included) may use it. Conventions (unitary FFT, shift signs) are those stated in :mod:`phasestem.physics.optics`.
"""
from __future__ import annotations

import math

import torch


def fft2(x: torch.Tensor) -> torch.Tensor:
    """Unitary 2-D FFT over the last two axes."""
    return torch.fft.fft2(x, norm="ortho")


def ifft2(x: torch.Tensor) -> torch.Tensor:
    """Unitary inverse 2-D FFT over the last two axes."""
    return torch.fft.ifft2(x, norm="ortho")


def real_dtype(t: torch.Tensor) -> torch.dtype:
    """The real dtype of ``t`` (float32 for complex64)."""
    return t.real.dtype if t.is_complex() else t.dtype


def shift_ramp(shifts: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Phase ramps exp(−2πi k·s) for shifts ``s`` (..., 2) in pixels → (..., ny, nx) complex.

    Built as the outer product of the two 1-D ramps (no trigonometry over every pixel).
    """
    ky = torch.fft.fftfreq(shape[0], device=shifts.device, dtype=shifts.dtype)
    kx = torch.fft.fftfreq(shape[1], device=shifts.device, dtype=shifts.dtype)
    ry = ky * shifts[..., 0:1]  # (..., ny) cycles
    rx = kx * shifts[..., 1:2]  # (..., nx)
    ey = torch.polar(torch.ones_like(ry), -2 * math.pi * ry)
    ex = torch.polar(torch.ones_like(rx), -2 * math.pi * rx)
    return ey[..., :, None] * ex[..., None, :]


def detector_ramp(shifts: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Real-space ramps exp(+2πi (s_y·y/ny + s_x·x/nx)) (..., ny, nx) over window pixels y, x = 0 … n−1.

    A wave multiplied by it has its far field displaced by ``shifts`` (..., 2) px (row, col) toward larger
    detector indices, sub-pixel and without resampling: the descan of a pattern, put into the model instead
    of interpolating the measured counts. The ramp's wrap lies on the window edge, where the probe is ~0.
    """
    y = torch.arange(shape[0], device=shifts.device, dtype=shifts.dtype) / shape[0]
    x = torch.arange(shape[1], device=shifts.device, dtype=shifts.dtype) / shape[1]
    ay = 2 * math.pi * y * shifts[..., 0:1]  # (..., ny) rad
    ax = 2 * math.pi * x * shifts[..., 1:2]  # (..., nx)
    return torch.polar(torch.ones_like(ay), ay)[..., :, None] * torch.polar(torch.ones_like(ax), ax)[..., None, :]


def fourier_shift(wave: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift ``wave`` (..., ny, nx) by ``shifts`` (..., 2) pixels (y, x), periodic, sub-pixel."""
    shifts = shifts.to(real_dtype(wave))
    return ifft2(fft2(wave) * shift_ramp(shifts, wave.shape[-2:]))


def squared_modulus(x: torch.Tensor) -> torch.Tensor:
    """|x|² of a complex tensor as a contiguous real tensor (cheaper than ``x.abs().square()``)."""
    return torch.addcmul(x.real.square(), x.imag, x.imag)


def add_squared_modulus(out: torch.Tensor, x: torch.Tensor, weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``out += weight·|x|²`` in place for complex ``x`` of ``out``'s shape (no temporary for a number ``weight``;
    a 0-d tensor ``weight`` stays on the device: no host sync, the same numbers)."""
    re, im = x.real, x.imag
    if isinstance(weight, torch.Tensor):
        return out.addcmul_(re * weight, re).addcmul_(im * weight, im)
    return out.addcmul_(re, re, value=weight).addcmul_(im, im, value=weight)
