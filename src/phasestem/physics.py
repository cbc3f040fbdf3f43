"""The differentiable forward model shared by simulation and reconstruction.

Conventions (FFT normalisation, shift and propagation signs, window centre) are those
stated in :mod:`phasestem.optics`. Shapes use B = scan positions in a batch, M = probe
modes, K = object modes, S = slices, (ny, nx) = probe window, (Ny, Nx) = full object.
Every function is differentiable w.r.t. its floating-point inputs and runs on any device
and dtype (complex64 by default, complex128 for gradient checks).
"""
from __future__ import annotations

import copy
import math

import torch

from .optics import antialias_mask, wavelength


def fft2(x: torch.Tensor) -> torch.Tensor:
    """Unitary 2-D FFT over the last two axes."""
    return torch.fft.fft2(x, norm="ortho")


def ifft2(x: torch.Tensor) -> torch.Tensor:
    """Unitary inverse 2-D FFT over the last two axes."""
    return torch.fft.ifft2(x, norm="ortho")


def _real_dtype(t: torch.Tensor) -> torch.dtype:
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
    shifts = shifts.to(_real_dtype(wave))
    return ifft2(fft2(wave) * shift_ramp(shifts, wave.shape[-2:]))


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

    ``M(k) = exp(−iπλ|k|²Δz + 2πiΔz(ky·tanθy + kx·tanθx))`` with ``tilt`` = (θy, θx) in
    mrad, shape (2,) (global) or (B, 2) (per position). Returns (ny, nx) or (B, ny, nx),
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
        phase = phase + 2 * math.pi * dz * tilt_term
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
    half = torch.tensor([window[0] // 2, window[1] // 2], device=positions_px.device)
    return rounded.long() - half, frac


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

    def gather(self, plane: torch.Tensor) -> torch.Tensor:
        """Windows of ``plane`` (..., Ny, Nx) → (B, ..., ny, nx)."""
        ny, nx = self.window
        if self.slices is not None:
            return torch.stack([plane[..., y : y + ny, x : x + nx] for y, x in self.slices])
        lead = plane.shape[:-2]
        out = plane.reshape(-1, self.obj_shape[0] * self.obj_shape[1]).index_select(1, self.flat)
        out = out.reshape(*lead, self.n, ny, nx)
        n = len(lead)
        return out.permute(n, *range(n), n + 1, n + 2)

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
    ramp = shift_ramp(frac.to(_real_dtype(spec)), spec.shape[-2:])  # (B, ny, nx)
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


def squared_modulus(x: torch.Tensor) -> torch.Tensor:
    """|x|² of a complex tensor as a contiguous real tensor (cheaper than ``x.abs().square()``)."""
    return torch.addcmul(x.real.square(), x.imag, x.imag)


def add_squared_modulus(out: torch.Tensor, x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``out += weight·|x|²`` in place for complex ``x`` of ``out``'s shape (no temporary)."""
    re, im = x.real, x.imag
    return out.addcmul_(re, re, value=weight).addcmul_(im, im, value=weight)


class _FarfieldIntensity(torch.autograd.Function):
    """Σ_m Σ_k w_k |F[ψ_mk]|² with the backward ∂L/∂ψ = F⁻¹[2·w_k·(∂L/∂I)·F[ψ]] (unitary F).

    Same values as autograd through ``abs``, without its complex ``abs``/``sgn`` chain; the
    far-field waves are kept from the forward pass.
    """

    @staticmethod
    def forward(ctx, exit_waves: torch.Tensor, weights: torch.Tensor | None = None):
        far = fft2(exit_waves)
        inten = squared_modulus(far)  # (B, M, K, ny, nx)
        if weights is not None:
            inten = inten * weights[:, None, None]
        ctx.save_for_backward(far, weights)
        B, M, K, ny, nx = inten.shape
        return inten.view(B, ny, nx) if M * K == 1 else inten.sum(dim=(1, 2))

    @staticmethod
    def backward(ctx, grad_i: torch.Tensor):
        far, weights = ctx.saved_tensors
        g = 2 * grad_i[:, None, None]  # (B, 1, 1, ny, nx)
        if weights is not None:
            g = g * weights[:, None, None]
        grad_w = None
        if weights is not None and ctx.needs_input_grad[1]:
            grad_w = (squared_modulus(far) * grad_i[:, None, None]).sum(dim=(0, 1, 3, 4))
        grad_psi = ifft2(far * g) if ctx.needs_input_grad[0] else None
        return grad_psi, grad_w


def farfield_intensity(exit_waves: torch.Tensor, object_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_m Σ_k w_k |F[ψ_mk]|² of exit waves (B, M, K, ny, nx) → (B, ny, nx), fftfreq order."""
    if torch.is_grad_enabled() and (exit_waves.requires_grad or (object_weights is not None
                                                                  and object_weights.requires_grad)):
        return _FarfieldIntensity.apply(exit_waves, object_weights)
    inten = squared_modulus(fft2(exit_waves))
    if object_weights is not None:
        inten = inten * object_weights[:, None, None]
    return inten.sum(dim=(1, 2))


class ForwardModel:
    """The ptychographic forward operator A: (object, probe, positions, tilt, Δz) → patterns.

    Parameters
    ----------
    window : (ny, nx) probe window / diffraction pattern size in pixels.
    sampling : (dy, dx) real-space pixel size in Å (object and probe share it).
    energy : beam energy in eV.
    antialias : multiply each propagator by the 2/3-Nyquist band-limit mask.
    centred : return patterns ``fftshift``-ed (zero frequency at (ny//2, nx//2)).
    """

    def __init__(self, window, sampling, energy: float, antialias: bool = False, centred: bool = True):
        self.window = (int(window[0]), int(window[1]))
        self.sampling = (float(sampling[0]), float(sampling[1]))
        self.energy = float(energy)
        self.antialias = antialias
        self.centred = centred

    def propagator(self, dz, tilt=None, dtype=torch.float32, device=None) -> torch.Tensor:
        return propagator(self.window, self.sampling, self.energy, dz, tilt, self.antialias, dtype, device)

    def _prepare(self, obj, probe, positions):
        """(K, S, Ny, Nx) object, (M, ny, nx) probe, window corners and sub-pixel rests of ``positions`` (Å)."""
        if obj.dim() == 3:
            obj = obj[None]
        if probe.dim() == 2:
            probe = probe[None]
        scale = torch.tensor(self.sampling, dtype=positions.dtype, device=positions.device)
        top_left, frac = window_origins(positions / scale, self.window)
        return obj, probe, top_left, frac

    def exit_waves(
        self,
        obj: torch.Tensor,
        probe: torch.Tensor,
        positions: torch.Tensor,
        dz: float | torch.Tensor = 1.0,
        tilt: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exit waves (B, M, K, ny, nx) for transmission ``obj`` (K, S, Ny, Nx) (or (S, Ny, Nx)),
        probe modes ``probe`` (M, ny, nx) (or (ny, nx)) and probe centres ``positions`` (B, 2) in Å."""
        obj, probe, top_left, frac = self._prepare(obj, probe, positions)
        patches = gather_patches(obj, top_left, self.window)  # (B, K, S, ny, nx)
        psi = shifted_probes(probe, frac)
        prop = None
        if obj.shape[1] > 1:
            prop = self.propagator(dz, tilt, _real_dtype(probe), probe.device)
        return multislice(psi, patches, prop)

    def __call__(
        self,
        obj: torch.Tensor,
        probe: torch.Tensor,
        positions: torch.Tensor,
        dz: float | torch.Tensor = 1.0,
        tilt: torch.Tensor | None = None,
        object_weights: torch.Tensor | None = None,
        detector_shifts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Diffraction intensities (B, ny, nx); each sums to the probe's total intensity × |O|².

        Computed by the fused operator :func:`phasestem.fused.fused_intensity` (one autograd
        node with a hand-written backward; the same values as ``farfield_intensity(exit_waves(…))``).
        Positions get gradients through an autograd probe shift when they require them.
        ``detector_shifts`` (B, 2) px displaces each pattern on the detector (descan) by a real-space
        ramp on the incident probe (:func:`detector_ramp`): exact for one slice; with S slices the tilt
        of s·Δk (≈ 0.3 mrad for half a pixel) walks the wave by a hundredth of an Å over 100 Å.
        """
        from .fused import fused_intensity

        obj, probe, top_left, frac = self._prepare(obj, probe, positions)
        shifted = shifted_probes(probe, frac) if positions.requires_grad and torch.is_grad_enabled() else None
        if detector_shifts is not None:
            ramp = detector_ramp(detector_shifts.to(_real_dtype(probe)), self.window)  # (B, ny, nx)
            shifted = (shifted if shifted is not None else shifted_probes(probe, frac)) * ramp[:, None]
        prop = None
        if obj.shape[1] > 1:
            prop = self.propagator(dz, tilt, _real_dtype(probe), probe.device)
        inten = fused_intensity(obj, probe, top_left, frac, prop, object_weights, shifted_probe=shifted)
        return torch.fft.fftshift(inten, dim=(-2, -1)) if self.centred else inten


def transmission_function(phase: torch.Tensor, amplitude: torch.Tensor | None = None) -> torch.Tensor:
    """Complex transmission ``amplitude · exp(i·phase)`` (amplitude 1 when omitted)."""
    amp = torch.ones_like(phase) if amplitude is None else amplitude
    return torch.polar(amp, phase)
