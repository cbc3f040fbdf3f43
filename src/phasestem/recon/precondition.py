"""Illumination preconditioning: the ``lsq`` solver's scaled gradient steps.

Plain gradient steps on the object are large where many probe positions overlap and tiny
where the probe is dim, so a learning rate that is safe in the bright centre of a scan is
slow everywhere else (and Adam's per-pixel normalisation is noisy on mini-batches). The
``lsq`` solver divides each gradient by the diagonal of the Gauss–Newton curvature of the
data term for the current mini-batch, as the least-squares updates of ePIE/LSQML-type
solvers do, while the gradients themselves still come from autograd through the one forward
model (:class:`phasestem.physics.ForwardModel`), so positions, tilt, thickness and modes keep
refining by Adam beside it.

For the amplitude loss Σ_j ‖|Ψ_j| − √D_j‖² / B, with Ψ_j = F[P_j·O_j], the Gauss–Newton
curvature with respect to a transmission value o(r) is ≈ Σ_j |P_j(r)|² / B (half of the
perturbation of Ψ survives the modulus on average; Parseval turns the rest into the
illumination). Hence, per pixel, with the probe modes summed and object modes weighted:

* object amplitude a: H_a = S · w_k · Σ_j |P_j|² / B; object phase φ: H_φ = a² · H_a
  (the factor S: a change in every slice adds up in the exit wave, so a full step per slice
  would overshoot S times);
* probe (stored as ψ·s, real view): H_ψ = Σ_j Σ_k w_k Π_s a_jks² / (B s²).

The Poisson term has twice the curvature of the amplitude term in these units. Each gradient
is divided by H + ``reg``·max(H), so dim pixels get steps of at most 1/``reg`` of a bright
pixel's. A step of 1 is then one Gauss–Newton step for that parameter alone. Object and probe
move the same exit wave, so their steps add up: on independently simulated data (NumPy
multislice, 1 and 3 slices) object + probe steps up to ≈ 0.9 were stable and 1.6 diverged; the
defaults (``model.SOLVER_DEFAULTS``: object phase 0.7, probe 0.2) keep that margin.

The object *amplitude* takes a step of 0.1: electron specimens are nearly pure phase objects, the
amplitude is weakly determined by the data, and a full step fills it with noise and with what a
coherent single-state model cannot explain (thermal diffuse scattering, partial coherence), which
then leaks into the phase. On independent data (the cases of ``benchmarks/independent``, 20
iterations, Poisson term) amplitude steps of 0.07 / 0 instead of 0.7 raised the peak r from 0.9934
to 0.9955 / 0.9957 (abTEM SrTiO3, frozen phonons, 1e5 e⁻), a step of 0 from 0.9924 to 0.9938
(8 slices, 1e6 e⁻), and a step of 0.1 left the noise-free thin case at 0.9992 (0.9993). An
absorbing specimen still gets its amplitude, more slowly (raise ``obj_amplitude``'s learning
rate for one).
"""
from __future__ import annotations

import torch

from ..physics import WindowIndex, window_origins
from .losses import LossConfig

#: parameters the lsq solver scales (the rest are stepped by Adam)
PRECONDITIONED = ("obj_amplitude", "obj_phase", "probe")


def curvature_scale(losses: LossConfig) -> float:
    """Curvature of the data terms relative to the amplitude loss of weight 1 (Poisson: twice; the Gaussian term
    is counted as the amplitude loss whatever its power)."""
    return max(losses.gaussian + 2.0 * losses.poisson, 1e-12)


def _illumination(model, index: torch.Tensor) -> tuple[torch.Tensor, WindowIndex]:
    """Σ_j Σ_m |P_m(r − r_j)|² (Ny, Nx) of the positions ``index`` and their windows."""
    probe = model.get_probe().detach()
    scale = torch.tensor(model.sampling, dtype=model.positions.dtype, device=model.device)
    top_left, _ = window_origins(model.positions.detach()[index] / scale, model.window)
    where = WindowIndex(top_left, model.window, model.object_shape)
    p_int = probe.real.square().add_(probe.imag.square()).sum(0)  # (ny, nx)
    illum = torch.zeros(model.object_shape, dtype=p_int.dtype, device=model.device)
    where.add_into(illum, p_int.expand(len(index), *p_int.shape))
    return illum, where


@torch.no_grad()
def precondition_gradients(model, index: torch.Tensor, n_total: int, losses: LossConfig, reg: float) -> None:
    """Divide the object and probe gradients (in place) by their Gauss–Newton curvature for batch ``index``.

    ``n_total`` is the mini-batch size the loss is normalised by; ``reg`` the relative floor of the curvature.
    """
    c = curvature_scale(losses) / max(int(n_total), 1)
    S = model.n_slices
    w = model.obj_weights.detach()
    w = w / w.sum() if model.n_object_modes > 1 else torch.ones_like(w)
    amp = model.obj_amplitude.detach()
    illum, where = _illumination(model, index)
    if model.obj_amplitude.grad is not None or model.obj_phase.grad is not None:
        h_a = (c * S) * w[:, None, None, None] * illum  # (K, 1, Ny, Nx)
        floor = reg * float(h_a.max())
        if model.obj_amplitude.grad is not None:
            model.obj_amplitude.grad.div_(h_a + floor)
        if model.obj_phase.grad is not None:
            h_p = h_a * amp.square()
            model.obj_phase.grad.div_(h_p + reg * float(h_p.max()))
    if model.probe.grad is not None:
        a2 = amp.square().prod(1)  # (K, Ny, Nx): Π_s a²
        a2 = (w[:, None, None] * a2).sum(0)
        h_psi = where.gather(a2).sum(0) * (c / model.probe_scale**2)  # (ny, nx)
        model.probe.grad.div_((h_psi + reg * float(h_psi.max()))[None, :, :, None])
