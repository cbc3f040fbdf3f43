"""The ptychographic forward operator as one autograd node with a hand-written backward.

Computes exactly what :class:`phasestem.physics.operator.ForwardModel` computes (same conventions,
checked against it in the tests) — sub-pixel-shifted probe modes, object patches at the scan
positions, mixed-state multislice and the far-field intensity
``I_b = Σ_m Σ_k w_k |F[ψ_bmk]|²`` — but the backward pass is written out so that it costs
fewer full-size passes over memory than autograd through the separate steps:

* it runs on **conjugated adjoint waves** χ̄ (unitary FFT: conj(F x) = F⁻¹ conj(x)), so the
  products ``χ·conj(T)`` and ``conj(ψ)·χ`` of the transmission and probe gradients never
  materialise a conjugated copy of a (B, M, K, ny, nx) tensor; the conjugations left are one
  in-place sign flip of the imaginary part at the far field and those of the small gradients;
* object patches are gathered inside the node and their gradients added straight into the
  object gradient (window slices on CPU, one ``index_add_`` elsewhere); on CPU one window per
  position through every slice, B slicings and adds per step instead of B × S (with 20 slices
  an epoch took 26–28 % less, benchmarks/independent);
* an object given as amplitude and phase (:class:`~phasestem.physics.multislice.PolarTransmission`, the
  reconstruction's parameters) is made complex on the batch's windows only, and its gradients go to amplitude and
  phase from the windows: no pass over the whole object forms ``a·exp(iφ)`` or its backward (each batch made and
  differentiated the whole object's transmission before, whatever the share of it the batch lights; an epoch of a
  256 × 256 scan or with 8 slices now takes 25–35 % less, docs/benchmarks.md);
* the probe shift is one multiplication by :func:`phasestem.physics.fourier.shift_ramp`, and its
  gradient is summed over the batch in place;
* probe modes accumulate into the transmission gradient in place, and on CPU the batch runs
  in cache-sized chunks (:data:`CPU_CHUNK_BYTES`).

Gradients flow to the object (K, S, Ny, Nx) (complex, or amplitude and phase), the probe spectrum
(M, ny, nx), the propagator (so Δz and tilt refine through it) and the object-mode weights; positions
are not differentiated here (:meth:`ForwardModel.__call__` handles them through autograd).
Measured on CPU with 2 threads, forward + backward of 32 patterns of 128² against autograd through
the composed steps: 0.95× the time with 1 slice, 0.87× with 8 slices, 0.77× with 8 slices and 4
probe modes.
"""
from __future__ import annotations

import functools
import math

import torch
from torch.autograd.function import once_differentiable

from .fourier import add_squared_modulus, fft2, ifft2, real_dtype, shift_ramp
from .multislice import PolarTransmission, WindowIndex

#: on CPU the batch is processed in chunks whose (b, M, K, ny, nx) waves take about this many bytes, so that the
#: chain transmit → FFT → propagate → inverse FFT of one slice runs in cache (measured with 1024 patterns of
#: 128², 4 probe modes, 8 slices: 4.9 → 4.4 s per epoch; 2–8 MiB all do as well); other devices take the whole
#: batch at once
CPU_CHUNK_BYTES = 4 << 20


def chunk_size(n: int, wave_shape: tuple[int, ...], itemsize: int, device: torch.device) -> int:
    """Positions per chunk for waves of ``wave_shape`` (M, K, ny, nx) per position."""
    if device.type != "cpu":
        return n
    per = itemsize * math.prod(wave_shape)
    return max(1, min(n, CPU_CHUNK_BYTES // per))


def _window_grads(where: WindowIndex, amp: torch.Tensor, phase: torch.Tensor, gt: torch.Tensor,
                  s: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of amplitude and phase (K, S, Ny, Nx) on the windows from ``gt``, the conjugated transmission
    gradient there: (b, K, ny, nx) of slice ``s``, or (S, b, K, ny, nx) of every slice when ``s`` is None. For
    T = a·exp(iφ) and q = gt·exp(iφ): ∂L/∂a = Re q, ∂L/∂φ = −a·Im q."""
    a, phi = (where.gather(t.transpose(0, 1), dim=1) if s is None else where.gather(t[:, s]) for t in (amp, phase))
    q = torch.view_as_real(gt * torch.polar(torch.ones_like(phi), phi))
    return q[..., 0], q[..., 1].mul(a).neg_()


class _FusedIntensity(torch.autograd.Function):
    """I (B, ny, nx) from object (K, S, Ny, Nx) — complex ``obj``, or ``amp`` and ``phase`` with ``obj`` None —,
    probe spectrum (M, ny, nx) or shifted probes (B, M, ny, nx), propagator and object-mode weights; see the module
    docstring."""

    @staticmethod
    def forward(ctx, obj, amp, phase, probe_in, prop, weights, ramps, where: WindowIndex):
        polar = obj is None
        K, S = (amp if polar else obj).shape[:2]
        ny, nx = probe_in.shape[-2:]
        M = probe_in.shape[-3]
        B = where.n
        # one window per position over every slice, each slice's windows contiguous: S × (B, K, ny, nx)
        if polar:  # the transmission on the windows only
            patches = torch.polar(*(where.gather(t.transpose(0, 1), dim=1) for t in (amp, phase))).unbind(0)
        else:
            patches = where.gather(obj.transpose(0, 1), dim=1).unbind(0)
        real = patches[0].real.dtype
        keep_spectra = prop is not None and ctx.needs_input_grad[4]
        # the weights stay on the device (0-d tensors, no host sync): |F ψ|² · w_k, the same numbers as a scalar w_k
        w = None if weights is None else weights.detach().to(real).unbind(0)
        inten = patches[0].real.new_zeros((B, ny, nx))
        saved = []
        step = chunk_size(B, (M, K, ny, nx), patches[0].element_size(), patches[0].device)
        for c0 in range(0, B, step):
            c = slice(c0, min(B, c0 + step))
            # probe_in: the spectrum (M, ny, nx) shifted by the phase ramps (B, ny, nx), or shifted probes
            psi = ifft2(probe_in[None] * ramps[c, None]) if ramps is not None else probe_in[c]  # (b, M, ny, nx)
            prop_b = prop[c, None, None] if prop is not None and prop.dim() == 3 else prop
            wave = psi[:, :, None]  # (b, M, 1, ny, nx)
            incident = []  # wave entering each slice
            spectra = []  # F[wave after slice s], s < S−1 (for the propagator gradient)
            for s in range(S):
                incident.append(wave)
                wave = wave * patches[s][c, None]
                if s < S - 1:
                    w_hat = fft2(wave)
                    if keep_spectra:
                        spectra.append(w_hat)
                        w_hat = w_hat * prop_b
                    else:
                        w_hat.mul_(prop_b)
                    wave = ifft2(w_hat)
            far = fft2(wave)  # (b, M, K, ny, nx)
            for m in range(M):
                for k in range(K):
                    add_squared_modulus(inten[c], far[:, m, k], 1.0 if w is None else w[k])
            saved += [far, *incident, *spectra]
        ctx.where, ctx.ramps, ctx.obj_shape, ctx.step = where, ramps, (amp if polar else obj).shape, step
        ctx.polar = polar
        ctx.save_for_backward(prop, weights, amp, phase, *patches, *saved)
        return inten

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_i):
        prop, weights, amp, phase, *rest = ctx.saved_tensors
        K, S = ctx.obj_shape[:2]
        patches, saved = rest[:S], rest[S:]
        where, ramps, step, polar = ctx.where, ctx.ramps, ctx.step, ctx.polar
        need_cplx, need_amp, need_phase, need_probe, need_prop, need_w = ctx.needs_input_grad[:6]
        need_obj = need_cplx or need_amp or need_phase
        B = where.n
        per_chunk = 1 + S + (S - 1 if need_prop and prop is not None else 0)
        grad_obj = patches[0].new_zeros(ctx.obj_shape) if need_cplx else None
        # amplitude and phase: both gradients are made when either is asked for (the node's outputs, not computed twice)
        grad_amp = amp.new_zeros(ctx.obj_shape) if polar and need_obj else None
        grad_phase = phase.new_zeros(ctx.obj_shape) if polar and need_obj else None
        grad_w = weights.new_zeros(K) if weights is not None and need_w else None
        grad_probe = grad_prop_c = None

        def add_object_grad(part: WindowIndex, gt: torch.Tensor, s: int | None = None) -> None:
            """Add ``gt``, the conjugated transmission gradient on the windows of ``part`` — (b, K, ny, nx) of slice
            ``s``, or (S, b, K, ny, nx) of every slice —, into the object's gradient: the complex one, or amplitude's
            and phase's."""
            pairs = (zip((grad_amp, grad_phase), _window_grads(part, amp, phase, gt, s), strict=True) if polar
                     else ((grad_obj, gt),))
            for target, values in pairs:
                if s is None:
                    part.add_into(target, values.permute(1, 2, 0, 3, 4))  # (b, K, S, ny, nx)
                else:
                    part.add_into(target[:, s], values)
        for i, c0 in enumerate(range(0, B, step)):
            c = slice(c0, min(B, c0 + step))
            far, *rest_c = saved[i * per_chunk : (i + 1) * per_chunk]
            incident, spectra = rest_c[:S], rest_c[S:]
            g_i = grad_i[c]
            if grad_w is not None:
                for k in range(K):
                    grad_w[k] += (far[:, :, k].real.square() + far[:, :, k].imag.square()).mul_(g_i[:, None]).sum()
            # conjugated adjoint of the exit waves: χ̄ = conj(F⁻¹[2 w g · far]) = F[2 w g · conj(far)]
            g = g_i[:, None, None] * 2.0  # (b, 1, 1, ny, nx)
            if weights is not None:
                g = g * weights[:, None, None].to(g.dtype)
            chi = ifft2(far * g)  # (b, M, K, ny, nx)
            del g
            torch.view_as_real(chi)[..., 1].neg_()
            prop_b = prop[c, None, None] if prop is not None and prop.dim() == 3 else prop
            part = where.subset(c)
            # window slices (CPU, chunks of a few MiB): every slice's transmission gradient of the chunk is held and
            # added into the object once per position at the end; elsewhere (one index_add_ per slice) each is added
            # as it comes, so that a whole batch's S gradients are never held at once
            hold = need_obj and where.slices is not None
            grad_t = chi.new_empty((S, chi.shape[0], K, *chi.shape[-2:])) if hold else None
            for s in range(S - 1, -1, -1):
                if s < S - 1:  # back through the propagation after slice s: χ̄ ← F[P · F⁻¹ χ̄]
                    c_hat = ifft2(chi)
                    if need_prop:
                        term = spectra[s] * c_hat
                        if prop.dim() == 3:
                            if grad_prop_c is None:
                                grad_prop_c = prop.new_zeros(prop.shape)
                            grad_prop_c[c] += term.sum(dim=(1, 2))
                        else:
                            term = term.sum(dim=(0, 1, 2))
                            grad_prop_c = term if grad_prop_c is None else grad_prop_c + term
                    chi = fft2(c_hat.mul_(prop_b))
                    del c_hat
                if need_obj:  # conj of ∂L/∂T = Σ_m ψ_in · χ̄
                    inc = incident[s]
                    # (b, K, ny, nx); more probe modes accumulate in place
                    gt = torch.mul(inc[:, 0], chi[:, 0], out=grad_t[s]) if hold else inc[:, 0] * chi[:, 0]
                    for m in range(1, chi.shape[1]):
                        gt.addcmul_(inc[:, m], chi[:, m])
                    if not hold:
                        add_object_grad(part, gt, s)
                    del gt
                if s > 0 or need_probe:
                    chi.mul_(patches[s][c, None])
            if hold:
                add_object_grad(part, grad_t)
                del grad_t
            if need_probe:
                chi = chi[:, :, 0] if K == 1 else chi.sum(2)  # (b, M, ny, nx): conj of ∂L/∂ψ
                if ramps is not None:  # conj of ∂L/∂spec = Σ_b F⁻¹[χ̄_b] · ramp_b
                    h = ifft2(chi).mul_(ramps[c, None]).sum(0)
                    grad_probe = h if grad_probe is None else grad_probe.add_(h)
                else:
                    if grad_probe is None:
                        grad_probe = chi.new_empty((B, *chi.shape[1:]))
                    grad_probe[c] = chi
        if grad_probe is not None:
            torch.view_as_real(grad_probe)[..., 1].neg_()
        if grad_obj is not None:
            torch.view_as_real(grad_obj)[..., 1].neg_()
        grad_prop = None
        if grad_prop_c is not None:
            grad_prop = grad_prop_c.conj().resolve_conj().reshape(prop.shape)
        if not need_amp:
            grad_amp = None
        if not need_phase:
            grad_phase = None
        return grad_obj, grad_amp, grad_phase, grad_probe, grad_prop, grad_w, None, None


#: :func:`fused_intensity` as :func:`torch.compiler.disable` wraps it, once :func:`run_eagerly_under_compile` made it
#: (torch.compile's tracing would lose the node's gradient); None until then, so that importing phasestem does not
#: import torch._dynamo (about 2 s of every command's start)
_EAGER_UNDER_COMPILE = None


def run_eagerly_under_compile() -> None:
    """Make :func:`fused_intensity` a graph break that runs eagerly inside :func:`torch.compile` (imports
    torch._dynamo); call before compiling anything that calls it."""
    global _EAGER_UNDER_COMPILE
    if _EAGER_UNDER_COMPILE is None:
        _EAGER_UNDER_COMPILE = torch.compiler.disable(
            _fused_intensity, reason="one node with its own backward and per-batch window slices: run eagerly")


def _fused_intensity(
    obj: torch.Tensor,
    probe: torch.Tensor,
    corners: torch.Tensor,
    frac: torch.Tensor,
    prop: torch.Tensor | None,
    weights: torch.Tensor | None = None,
    shifted_probe: torch.Tensor | None = None,
) -> torch.Tensor:
    """Far-field intensities (B, ny, nx), fftfreq order, of the mixed-state multislice model.

    ``obj`` (K, S, Ny, Nx) complex transmission, or its amplitude and phase as a :class:`PolarTransmission` (made
    complex on the windows only, gradients to amplitude and phase); ``probe`` (M, ny, nx) probe modes; ``corners``
    (B, 2) long top-left window pixels and ``frac`` (B, 2) sub-pixel probe shifts (from
    :func:`phasestem.physics.multislice.window_origins`); ``prop`` (ny, nx) or (B, ny, nx) propagator for
    one slice (None for one slice); ``weights`` (K,) object-mode occupancies. Pass
    ``shifted_probe`` (B, M, ny, nx) instead of shifting here when the shifts need gradients.
    """
    where = WindowIndex(corners, probe.shape[-2:], obj.shape[-2:])
    parts = (None, obj.amplitude, obj.phase) if isinstance(obj, PolarTransmission) else (obj, None, None)
    if shifted_probe is not None:
        return _FusedIntensity.apply(*parts, shifted_probe, prop, weights, None, where)
    ramps = shift_ramp(frac.detach().to(real_dtype(probe)), probe.shape[-2:])  # (B, ny, nx)
    return _FusedIntensity.apply(*parts, fft2(probe), prop, weights, ramps, where)


@functools.wraps(_fused_intensity)
def fused_intensity(*args, **kwargs) -> torch.Tensor:
    # the same function; inside torch.compile a graph break that runs it eagerly once run_eagerly_under_compile ran
    return (_EAGER_UNDER_COMPILE or _fused_intensity)(*args, **kwargs)
