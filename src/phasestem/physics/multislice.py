"""Multislice: the Fresnel propagator, probe windows in the object (window index, patch gather), sub-pixel
shifted probes and the mixed-state multislice of incident waves through sliced transmission functions.

Shapes use B = scan positions in a batch, M = probe modes, K = object modes, S = slices, (ny, nx) = probe
window, (Ny, Nx) = full object. Every function is differentiable w.r.t. its floating-point inputs.
"""
from __future__ import annotations

import copy
import functools
import math
from typing import NamedTuple

import torch

from .fourier import fft2, ifft2, real_dtype, shift_ramp
from .optics import antialias_mask, wavelength


def propagator(
    shape: tuple[int, int],
    sampling: tuple[float, float],
    energy: float,
    dz: float | torch.Tensor,
    tilt: torch.Tensor | None = None,
    antialias: bool = False,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """Fresnel propagator M(k) for one slice of thickness ``dz`` (Å).

    ``M(k) = exp(−iπλ|k|²Δz − 2πiΔz(ky·tanθy + kx·tanθx))`` with ``tilt`` = (θy, θx) in
    mrad, shape (2,) (global) or (B, 2) (per position): through a tilted specimen the wave moves by
    +Δz·tanθ per slice, as in abTEM (docs/conventions.md). Returns (ny, nx) or (B, ny, nx),
    complex, fftfreq order; differentiable w.r.t. ``dz`` and ``tilt``.
    """
    if isinstance(dz, torch.Tensor):
        dtype, device = dz.dtype, dz.device
    elif tilt is not None:
        dtype, device = tilt.dtype, tilt.device
    lam = wavelength(energy)
    ky = torch.fft.fftfreq(shape[0], d=sampling[0], device=device, dtype=dtype)
    kx = torch.fft.fftfreq(shape[1], d=sampling[1], device=device, dtype=dtype)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    phase = -math.pi * lam * k2 * dz
    if tilt is not None:
        t = torch.tan(tilt.to(dtype) * 1e-3)
        tilt_term = ky[:, None] * t[..., 0, None, None] + kx[None, :] * t[..., 1, None, None]
        phase = phase - 2 * math.pi * dz * tilt_term
    out = torch.polar(torch.ones_like(phase), phase)
    if antialias:
        out = out * antialias_mask(shape, sampling, device=device)
    return out


def window_origins(positions_px: torch.Tensor, window: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Split probe-centre positions (B, 2) px into integer window corners and sub-pixel rests.

    Returns ``(top_left, frac)``: top-left object pixel (B, 2) long of each (ny, nx) window
    and the residual shift (B, 2) in [−0.5, 0.5] px to apply to the probe. Gradients flow
    through ``frac``.
    """
    rounded = torch.round(positions_px.detach())
    frac = positions_px - rounded
    corners = rounded.long()  # a new tensor: the half window is taken off in place (no host-to-device copy)
    corners[:, 0] -= window[0] // 2
    corners[:, 1] -= window[1] // 2
    return corners, frac


@functools.lru_cache(maxsize=32)
def _pixel_scale(sampling: tuple[float, float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(sampling, dtype=dtype, device=device)


def positions_in_pixels(positions: torch.Tensor, sampling: tuple[float, float]) -> torch.Tensor:
    """Positions (B, 2) Å → pixels of ``sampling`` (dy, dx) Å. The (2,) divisor is made once per dtype and device
    and kept, so a step captured as a CUDA graph copies nothing from the host."""
    sampling = (float(sampling[0]), float(sampling[1]))
    if torch.compiler.is_compiling():  # a constant of the compiled graph
        return positions / torch.tensor(sampling, dtype=positions.dtype, device=positions.device)
    return positions / _pixel_scale(sampling, positions.dtype, positions.device)


class PolarTransmission(NamedTuple):
    """An object's transmission given as ``amplitude`` and ``phase`` (rad), each (K, S, Ny, Nx) or (S, Ny, Nx) real:
    the reconstruction's parameters, which the fused operator (:mod:`phasestem.physics.fused`) makes complex on the
    probe windows only."""

    amplitude: torch.Tensor
    phase: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.phase.shape

    def dim(self) -> int:
        return self.phase.dim()

    def with_modes_axis(self) -> PolarTransmission:
        """(S, Ny, Nx) → (1, S, Ny, Nx)."""
        return PolarTransmission(self.amplitude[None], self.phase[None]) if self.dim() == 3 else self

    def complex(self) -> torch.Tensor:
        """The complex transmission amplitude · exp(i·phase) of the whole object."""
        return torch.polar(self.amplitude, self.phase)


class WindowIndex:
    """Where the B probe windows (ny, nx) sit in an (Ny, Nx) object.

    ``corners`` (B, 2) long are top-left object pixels. Windows that lie inside the object are
    read and written as slices on CPU (``slices`` set); otherwise, or on other devices, through
    a flat periodic index (``flat``) with ``index_select`` / ``index_add_``.
    """

    def __init__(self, corners: torch.Tensor, window: tuple[int, int], obj_shape: tuple[int, int]):
        self.window = (int(window[0]), int(window[1]))
        self.obj_shape = (int(obj_shape[0]), int(obj_shape[1]))
        ny, nx = self.window
        Ny, Nx = self.obj_shape
        self.n = len(corners)
        self.slices: list[tuple[int, int]] | None = None
        self.flat: torch.Tensor | None = None
        if corners.device.type == "cpu":
            pairs = corners.tolist()
            if all(0 <= y <= Ny - ny and 0 <= x <= Nx - nx for y, x in pairs):
                self.slices = [(int(y), int(x)) for y, x in pairs]
                return
        iy = (corners[:, 0, None] + torch.arange(ny, device=corners.device)) % Ny
        ix = (corners[:, 1, None] + torch.arange(nx, device=corners.device)) % Nx
        self.flat = (iy[:, :, None] * Nx + ix[:, None, :]).reshape(-1)

    def subset(self, rows: slice) -> WindowIndex:
        """The windows ``rows`` (a slice of the B positions) as their own index."""
        part = copy.copy(self)
        if self.slices is not None:
            part.slices = self.slices[rows]
            part.n = len(part.slices)
        else:
            start, stop, _ = rows.indices(self.n)
            part.n = stop - start
            size = self.window[0] * self.window[1]
            part.flat = self.flat[start * size : stop * size]
        return part

    def gather(self, plane: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Windows of ``plane`` (..., Ny, Nx) → (B, ..., ny, nx), the window axis B at ``dim`` (e.g. 1: (L, B, …,
        ny, nx), whose leading planes are then each contiguous)."""
        ny, nx = self.window
        if self.slices is not None:
            return torch.stack([plane[..., y : y + ny, x : x + nx] for y, x in self.slices], dim=dim)
        lead = plane.shape[:-2]
        out = plane.flatten(-2).index_select(-1, self.flat)  # a view of any plane whose rows are contiguous: no copy
        return out.reshape(*lead, self.n, ny, nx).movedim(len(lead), dim)

    def add_into(self, target: torch.Tensor, values: torch.Tensor) -> None:
        """``target`` (..., Ny, Nx) += ``values`` (B, ..., ny, nx) at the windows (overlaps add)."""
        ny, nx = self.window
        if self.slices is not None:
            for v, (y, x) in zip(values.unbind(0), self.slices, strict=True):
                target[..., y : y + ny, x : x + nx] += v
            return
        n = values.dim() - 3
        v = values.permute(*range(1, n + 1), 0, n + 1, n + 2).reshape(*values.shape[1 : n + 1], -1)
        target.view(*target.shape[:-2], -1).index_add_(-1, self.flat, v)


class _GatherWindows(torch.autograd.Function):
    """Object windows at a :class:`WindowIndex`; the backward adds each window's gradient back."""

    @staticmethod
    def forward(ctx, obj: torch.Tensor, where: WindowIndex):
        ctx.where, ctx.obj_shape = where, obj.shape
        return where.gather(obj)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_zeros(ctx.obj_shape)
        ctx.where.add_into(out, grad)
        return out, None


def gather_patches(obj: torch.Tensor, top_left: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Crop windows from ``obj`` (..., Ny, Nx) at ``top_left`` (B, 2), periodically.

    Returns (B, ..., ny, nx). Indices wrap modulo the object size, so a window that leaves
    the object continues on its other side (a periodic cell; pad the object to avoid it).
    """
    return _GatherWindows.apply(obj, WindowIndex(top_left, window, obj.shape[-2:]))


def shifted_probes(probe: torch.Tensor, frac: torch.Tensor, probe_spectrum: torch.Tensor | None = None) -> torch.Tensor:
    """Probe modes (M, ny, nx) shifted by sub-pixel ``frac`` (B, 2) → (B, M, ny, nx)."""
    spec = fft2(probe) if probe_spectrum is None else probe_spectrum
    ramp = shift_ramp(frac.to(real_dtype(spec)), spec.shape[-2:])  # (B, ny, nx)
    return ifft2(spec[None] * ramp[:, None])


def multislice(
    psi: torch.Tensor, transmission: torch.Tensor, prop: torch.Tensor | None, propagate_last: bool = False
) -> torch.Tensor:
    """Exit waves of incident waves through sliced transmission functions.

    ``psi`` (B, M, ny, nx) incident waves; ``transmission`` (B, K, S, ny, nx) complex
    transmission patches; ``prop`` the propagator (ny, nx) or (B, ny, nx) for one slice.
    Each slice transmits, then (except after the last, unless ``propagate_last``) the
    wave propagates by one slice thickness. Returns (B, M, K, ny, nx).
    """
    n_slices = transmission.shape[2]
    if prop is not None and prop.dim() == 3:
        prop = prop[:, None, None]
    wave = psi[:, :, None]  # (B, M, 1, ny, nx)
    slices = transmission.unbind(2)  # views: no full-size zero gradient per slice in the backward pass
    for s in range(n_slices):
        wave = wave * slices[s][:, None]
        if s < n_slices - 1 or propagate_last:
            wave = ifft2(fft2(wave) * prop)
    return wave
