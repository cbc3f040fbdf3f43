"""The ptychographic forward operator A: (object, probe, positions, tilt, Δz) → far-field intensities.

Conventions (FFT normalisation, shift and propagation signs, window centre) are those stated in
:mod:`phasestem.physics.optics`. Shapes use B = scan positions in a batch, M = probe modes, K = object modes,
S = slices, (ny, nx) = probe window, (Ny, Nx) = full object. Every function is differentiable w.r.t. its
floating-point inputs and runs on any device and dtype (complex64 by default, complex128 for gradient checks).
"""
from __future__ import annotations

import torch

from .fourier import detector_ramp, fft2, ifft2, real_dtype, squared_modulus
from .fused import fused_intensity
from .multislice import (
    PolarTransmission,
    gather_patches,
    multislice,
    positions_in_pixels,
    propagator,
    shifted_probes,
    window_origins,
)


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
        if isinstance(obj, PolarTransmission):
            obj = obj.with_modes_axis()
        elif obj.dim() == 3:
            obj = obj[None]
        if probe.dim() == 2:
            probe = probe[None]
        top_left, frac = window_origins(positions_in_pixels(positions, self.sampling), self.window)
        return obj, probe, top_left, frac

    def exit_waves(
        self,
        obj: torch.Tensor,
        probe: torch.Tensor,
        positions: torch.Tensor,
        dz: float | torch.Tensor = 1.0,
        tilt: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exit waves (B, M, K, ny, nx) for transmission ``obj`` (K, S, Ny, Nx) (or (S, Ny, Nx); complex or a
        :class:`PolarTransmission`), probe modes ``probe`` (M, ny, nx) (or (ny, nx)) and probe centres ``positions``
        (B, 2) in Å."""
        obj, probe, top_left, frac = self._prepare(obj, probe, positions)
        if isinstance(obj, PolarTransmission):
            obj = obj.complex()
        patches = gather_patches(obj, top_left, self.window)  # (B, K, S, ny, nx)
        psi = shifted_probes(probe, frac)
        prop = None
        if obj.shape[1] > 1:
            prop = self.propagator(dz, tilt, real_dtype(probe), probe.device)
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
        """Diffraction intensities (B, ny, nx); each sums to the probe's total intensity × |O|². ``obj``: complex
        transmission (K, S, Ny, Nx) or (S, Ny, Nx), or a :class:`PolarTransmission` (made complex on the windows only).

        Computed by the fused operator :func:`phasestem.physics.fused.fused_intensity` (one autograd
        node with a hand-written backward; the same values as ``farfield_intensity(exit_waves(…))``).
        Positions get gradients through an autograd probe shift when they require them.
        ``detector_shifts`` (B, 2) px displaces each pattern on the detector (descan) by a real-space
        ramp on the incident probe (:func:`detector_ramp`): exact for one slice; with S slices the tilt
        of s·Δk (≈ 0.3 mrad for half a pixel) walks the wave by a hundredth of an Å over 100 Å.
        """
        obj, probe, top_left, frac = self._prepare(obj, probe, positions)
        shifted = shifted_probes(probe, frac) if positions.requires_grad and torch.is_grad_enabled() else None
        if detector_shifts is not None:
            ramp = detector_ramp(detector_shifts.to(real_dtype(probe)), self.window)  # (B, ny, nx)
            shifted = (shifted if shifted is not None else shifted_probes(probe, frac)) * ramp[:, None]
        prop = None
        if obj.shape[1] > 1:
            prop = self.propagator(dz, tilt, real_dtype(probe), probe.device)
        inten = fused_intensity(obj, probe, top_left, frac, prop, object_weights, shifted_probe=shifted)
        return torch.fft.fftshift(inten, dim=(-2, -1)) if self.centred else inten


def transmission_function(phase: torch.Tensor, amplitude: torch.Tensor | None = None) -> torch.Tensor:
    """Complex transmission ``amplitude · exp(i·phase)`` (amplitude 1 when omitted)."""
    amp = torch.ones_like(phase) if amplitude is None else amplitude
    return torch.polar(amp, phase)
