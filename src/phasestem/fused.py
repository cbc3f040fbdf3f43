"""The ptychographic forward operator as one autograd node with a hand-written backward.

Computes exactly what :class:`phasestem.physics.ForwardModel` computes (same conventions,
checked against it in the tests) — sub-pixel-shifted probe modes, object patches at the scan
positions, mixed-state multislice and the far-field intensity
``I_b = Σ_m Σ_k w_k |F[ψ_bmk]|²`` — but the backward pass is written out so that it costs
fewer full-size passes over memory than autograd through the separate steps:

* it runs on **conjugated adjoint waves** χ̄ (unitary FFT: conj(F x) = F⁻¹ conj(x)), so the
  products ``χ·conj(T)`` and ``conj(ψ)·χ`` of the transmission and probe gradients never
  materialise a conjugated copy of a (B, M, K, ny, nx) tensor; the one conjugation left is
  on the small object/probe gradients;
* object patches are gathered inside the node and their gradients added straight into the
  object gradient (window slices on CPU, one ``index_add_`` elsewhere);
* the probe shift is applied as two separable 1-D phase ramps and its gradient is summed
  over the batch in place.

Gradients flow to the object (K, S, Ny, Nx), the probe spectrum (M, ny, nx), the propagator
(so Δz and tilt refine through it) and the object-mode weights; positions are not
differentiated here (:meth:`ForwardModel.__call__` handles them through autograd).
On CPU with 2 threads this halves the time of one batch step against the composed autograd
graph (see ``benchmarks/recon_speed.py``).
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .physics import WindowIndex, fft2, ifft2


class _FusedIntensity(torch.autograd.Function):
    """I (B, ny, nx) from object (K, S, Ny, Nx), probe spectrum (M, ny, nx) or shifted probes
    (B, M, ny, nx), propagator and object-mode weights; see the module docstring."""

    @staticmethod
    def forward(ctx, obj, probe_in, prop, weights, ramps, where: WindowIndex):
        K, S = obj.shape[:2]
        if ramps is not None:  # probe_in = spectrum (M, ny, nx); shifts as separable ramps
            ey, ex = ramps
            ramps = ey[:, :, None] * ex[:, None, :]  # (B, ny, nx): one pass over (B, M, ny, nx) below
            psi = ifft2(probe_in[None] * ramps[:, None])  # (B, M, ny, nx)
        else:
            psi = probe_in
        patches = [where.gather(obj[:, s]) for s in range(S)]  # S × (B, K, ny, nx)
        if prop is not None and prop.dim() == 3:
            prop_b = prop[:, None, None]
        else:
            prop_b = prop
        wave = psi[:, :, None]  # (B, M, 1, ny, nx)
        incident = []  # wave entering each slice
        spectra = []  # F[wave after slice s], s < S−1 (for the propagator gradient)
        keep_spectra = prop is not None and ctx.needs_input_grad[2]
        for s in range(S):
            incident.append(wave)
            wave = wave * patches[s][:, None]
            if s < S - 1:
                w_hat = fft2(wave)
                if keep_spectra:
                    spectra.append(w_hat)
                    w_hat = w_hat * prop_b
                else:
                    w_hat.mul_(prop_b)
                wave = ifft2(w_hat)
        far = fft2(wave)  # (B, M, K, ny, nx)
        B, M = far.shape[:2]
        ny, nx = far.shape[-2:]
        inten = far.real.new_zeros((B, ny, nx))
        re, im = far.real, far.imag
        for m in range(M):
            for k in range(K):
                if weights is None:
                    inten.addcmul_(re[:, m, k], re[:, m, k]).addcmul_(im[:, m, k], im[:, m, k])
                else:
                    inten.addcmul_(re[:, m, k], re[:, m, k], value=float(weights[k])).addcmul_(
                        im[:, m, k], im[:, m, k], value=float(weights[k]))
        ctx.where = where
        ctx.ramps = ramps
        ctx.obj_shape = obj.shape
        ctx.n_spectra = len(spectra)
        ctx.save_for_backward(far, prop, weights, *patches, *incident, *spectra)
        return inten

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_i):
        far, prop, weights, *rest = ctx.saved_tensors
        K, S = ctx.obj_shape[:2]
        patches, incident, spectra = rest[:S], rest[S : 2 * S], rest[2 * S :]
        where, ramps = ctx.where, ctx.ramps
        need_obj, need_probe, need_prop, need_w = ctx.needs_input_grad[:4]
        grad_w = None
        if weights is not None and need_w:
            grad_w = torch.stack([
                (far[:, :, k].real.square() + far[:, :, k].imag.square()).mul_(grad_i[:, None]).sum()
                for k in range(K)])
        # conjugated adjoint of the exit waves: χ̄ = conj(F⁻¹[2 w g · far]) = F[2 w g · conj(far)]
        g = grad_i[:, None, None] * 2.0  # (B, 1, 1, ny, nx)
        if weights is not None:
            g = g * weights[:, None, None].to(g.dtype)
        chi = ifft2(far * g)  # (B, M, K, ny, nx)
        del g
        torch.view_as_real(chi)[..., 1].neg_()
        prop_b = prop[:, None, None] if prop is not None and prop.dim() == 3 else prop
        grad_obj = patches[0].new_zeros(ctx.obj_shape) if need_obj else None
        grad_prop_c = None
        for s in range(S - 1, -1, -1):
            if s < S - 1:  # back through the propagation after slice s: χ̄ ← F[P · F⁻¹ χ̄]
                c_hat = ifft2(chi)
                if need_prop:
                    term = spectra[s] * c_hat
                    if prop.dim() == 3:
                        term = term.sum(dim=(1, 2))
                    else:
                        term = term.sum(dim=(0, 1, 2))
                    grad_prop_c = term if grad_prop_c is None else grad_prop_c + term
                chi = fft2(c_hat.mul_(prop_b))
                del c_hat
            if need_obj:  # conj of ∂L/∂T = Σ_m ψ_in · χ̄
                inc = incident[s]
                gt = inc[:, 0] * chi[:, 0]  # (B, K, ny, nx); more probe modes accumulate in place
                for m in range(1, chi.shape[1]):
                    gt.addcmul_(inc[:, m], chi[:, m])
                where.add_into(grad_obj[:, s], gt)
                del gt
            if s > 0 or need_probe:
                chi.mul_(patches[s][:, None])
        grad_probe = None
        if need_probe:
            chi = chi[:, :, 0] if K == 1 else chi.sum(2)  # (B, M, ny, nx): conj of ∂L/∂ψ
            if ramps is not None:  # conj of ∂L/∂spec = Σ_b F⁻¹[χ̄_b] · ramp_b
                h = ifft2(chi)
                grad_probe = h.mul_(ramps[:, None]).sum(0).conj().resolve_conj()
            else:
                grad_probe = chi.conj().resolve_conj()
        if grad_obj is not None:
            torch.view_as_real(grad_obj)[..., 1].neg_()
        if grad_prop_c is not None:
            grad_prop = grad_prop_c.conj().resolve_conj()
            if prop.dim() == 2:
                grad_prop = grad_prop.reshape(prop.shape)
        else:
            grad_prop = None
        return grad_obj, grad_probe, grad_prop, grad_w, None, None


def separable_ramps(frac: torch.Tensor, shape: tuple[int, int],
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D phase ramps exp(−2πi k·s) along y (B, ny) and x (B, nx) for shifts ``frac`` (B, 2) px."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    f = frac.detach().to(real)
    ky = torch.fft.fftfreq(shape[0], device=f.device, dtype=real)
    kx = torch.fft.fftfreq(shape[1], device=f.device, dtype=real)
    ey = torch.polar(torch.ones_like(ky).expand(len(f), -1), -2 * math.pi * ky * f[:, 0:1])
    ex = torch.polar(torch.ones_like(kx).expand(len(f), -1), -2 * math.pi * kx * f[:, 1:2])
    return ey, ex


def fused_intensity(
    obj: torch.Tensor,
    probe: torch.Tensor,
    corners: torch.Tensor,
    frac: torch.Tensor,
    prop: torch.Tensor | None,
    weights: torch.Tensor | None = None,
    shifted_probe: torch.Tensor | None = None,
) -> torch.Tensor:
    """Far-field intensities (B, ny, nx), fftfreq order, of the mixed-state multislice model.

    ``obj`` (K, S, Ny, Nx) complex transmission; ``probe`` (M, ny, nx) probe modes; ``corners``
    (B, 2) long top-left window pixels and ``frac`` (B, 2) sub-pixel probe shifts (from
    :func:`phasestem.physics.window_origins`); ``prop`` (ny, nx) or (B, ny, nx) propagator for
    one slice (None for one slice); ``weights`` (K,) object-mode occupancies. Pass
    ``shifted_probe`` (B, M, ny, nx) instead of shifting here when the shifts need gradients.
    """
    where = WindowIndex(corners, probe.shape[-2:], obj.shape[-2:])
    if shifted_probe is not None:
        return _FusedIntensity.apply(obj, shifted_probe, prop, weights, None, where)
    ramps = separable_ramps(frac, probe.shape[-2:], probe.dtype)
    return _FusedIntensity.apply(obj, fft2(probe), prop, weights, ramps, where)
