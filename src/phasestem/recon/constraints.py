"""Scheduled constraints applied to a :class:`~phasestem.recon.model.Ptychography` after an epoch.

Each constraint has a schedule ``{start_iter, step, end_iter}`` (1-based epochs; the legacy key
``freq`` is accepted as ``step``): it runs at epochs ``start_iter, start_iter + step, …`` up
to ``end_iter`` (``None`` = the end). A constraint is off unless ``enabled`` (``probe_aperture``, ``obj_clamp``,
``obj_blur``, ``obj_band`` and ``obj_shear``: 'auto', decided from the data and the grid).

=====================  =====================================================================
name                   effect
=====================  =====================================================================
``ortho_probe``        orthogonalise probe modes (SVD), each kept closest to its previous self
``probe_mask``         zero the probe spectrum beyond ``radius_mrad`` (soft edge ``width``)
``probe_aperture``     hold the probe's spectrum amplitude (modes summed) to the nominal probe's: the
                       aperture is known, only the aberrations (the spectrum's phase) are refined;
                       'auto' (the default): decided from the data when a run starts
                       (:mod:`phasestem.recon.aperture_rule`)
``obj_clamp``          clamp amplitude to [amp_min, amp_max] and phase to [phase_min, phase_max] (default
                       [0, 1] and ≥ 0: the physical object); 'auto' (the default): on for a multislice
                       crystal (:func:`~phasestem.recon.crystal.obj_clamp_rule`)
``obj_blur``           lateral Gaussian blur of amplitude and phase, ``sigma`` px; 'auto' (the default): on
                       for counted data but crystals, σ from the dose (:mod:`phasestem.recon.dose_regularisation`)
``obj_band``           hold amplitude and phase to the object grid's anti-aliased band; 'auto' (the
                       default): on where the grid is finer than the detector's
                       (:mod:`phasestem.recon.object_band`)
``kz_filter``          missing-wedge filter W = 1 − (2/π)·atan(β²k_z²/(k_x²+k_y²+ε)) over slices
``rz_filter``          real-space Gaussian depth blur over slices, ``sigma`` Å (no wrap-around)
``tilt_smooth``        Gaussian smoothing of per-position tilts, ``sigma`` Å over the scan
``position_limit``     clamp position corrections to ``max_shift`` Å from the start positions
``position_affine``    remove the affine part (shift, scale, rotation, shear) of the position corrections
``tv``                 total-variation denoising of phase and/or amplitude: ``n_iter`` steps of size
                       ``weight`` down the gradient of Σ√(|∇x|² + ε²) (per slice, lateral)
``obj_ramp``           move the object's phase ramp over the scanned area into the probe as a tilt
                       (the data cannot tell the two apart; see :func:`transfer_phase_ramp`)
``obj_shear``          straighten the object's slices (a crystal's columns) and move their shear into the
                       specimen tilt (the data cannot tell the two apart; see
                       :func:`~phasestem.recon.shear.transfer_slice_shear`); 'auto' (the default): on for
                       a mistilted crystal (:func:`~phasestem.recon.shear.obj_shear_rule`)
=====================  =====================================================================
"""
from __future__ import annotations

import logging
import math

import torch

from ..physics import optics
from ..physics.fourier import fft2, ifft2
from .settings.constraints import (  # noqa: F401  (the settings: this module's API too)
    AutoSchedule,
    Constraints,
    KzFilter,
    ObjBand,
    ObjBlur,
    ObjClamp,
    ObjRamp,
    ObjShear,
    PositionLimit,
    ProbeAperture,
    ProbeMask,
    RzFilter,
    Schedule,
    TiltSmooth,
    TotalVariation,
)
from .shear import transfer_slice_shear

log = logging.getLogger("phasestem.recon")


# ---- the operations (in place, no gradients) --------------------------------------------
def orthogonalize_probe(model, tol: float = 1e-4) -> None:
    """Make the probe modes mutually orthogonal without changing the incoherent sum Σ_m ψ_m ψ_m*.

    New modes are ``W·ψ`` with ``W = D·Uᴴ`` from the SVD ``ψ = U S Vᴴ``; ``D`` (a permutation with
    phases) keeps each new mode as close as possible to the old one of the same index, so the
    optimiser's moments stay meaningful. Modes already orthogonal (relative overlap < ``tol``)
    are left alone.
    """
    p = torch.view_as_complex(model.probe.data)
    M = p.shape[0]
    if M < 2:
        return
    flat = p.reshape(M, -1)
    gram = flat @ flat.conj().T
    norms = gram.diagonal().real.clamp_min(1e-30).sqrt()
    off = (gram / (norms[:, None] * norms[None, :])).abs() - torch.eye(M, device=p.device)
    if float(off.max()) < tol:
        return
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    new = s[:, None] * vh  # = Uᴴ ψ, row j ↔ column j of U
    order, used = [], set()
    for i in range(M):  # greedy match: old mode i ← new mode with the largest |U[i, j]|
        cand = [j for j in torch.argsort(u[i].abs(), descending=True).tolist() if j not in used]
        order.append(cand[0])
        used.add(cand[0])
    out = torch.stack([new[j] * (u[i, j] / u[i, j].abs().clamp_min(1e-30)) for i, j in enumerate(order)])
    model.probe.data.copy_(torch.view_as_real(out.reshape(p.shape).to(p.dtype)))


def probe_fourier_mask(model, radius_mrad: float, width_mrad: float = 1.0) -> None:
    """Multiply the probe spectrum by a soft aperture of ``radius_mrad``."""
    p = torch.view_as_complex(model.probe.data)
    lam = optics.wavelength(model.energy)
    KY, KX = optics.k_grid(model.window, model.sampling, device=p.device)
    alpha = torch.sqrt(KY**2 + KX**2) * lam * 1e3
    mask = torch.clamp((radius_mrad - alpha) / max(width_mrad, 1e-6) + 0.5, 0, 1) if width_mrad > 0 else (
        alpha <= radius_mrad).float()
    model.probe.data.copy_(torch.view_as_real(ifft2(fft2(p) * mask)))


@torch.no_grad()
def hold_probe_aperture(model) -> None:
    """Give the probe spectrum the nominal probe's amplitude, keep its phase and its total intensity (in place).

    With M modes ψ̂_m(k) each is scaled by √(Σ_m |ψ̂⁰_m(k)|² · c / Σ_m |ψ̂_m(k)|²), ψ⁰ the nominal modes
    (:attr:`Experiment.probe`: the aperture with the nominal aberrations, or the probe given) and c the ratio of the
    two total intensities, so Σ_m |ψ̂_m(k)|² becomes the nominal one while each mode keeps its phase and the modes
    their shares at each k. The modes of a source of finite size are shifted copies of one probe, whose summed
    spectrum is the aperture's; a truncated set departs from it (4 modes of a 0.8 Å source: 0.3 % of the
    intensity moves). Where the probe's spectrum has vanished and the nominal's has not, the nominal's is taken.

    Measured on independent multislice data (``benchmarks/independent``, 20 lsq epochs, r of the summed phase):
    with strong phase in several slices and the crossover inside the specimen the free probe takes up scattering
    that belongs to the object (12 slices of 2.5 rad, crossover 50 Å inside: val_strong 0.8165 → 0.9268 held;
    a copy of dev_strong's specimen in that geometry 0.820 → 0.926, 0.947 with the probe frozen at the true optics).
    It costs where the nominal aperture is not the data's effective one: on a 12 Å window, whose edge crops the
    probe's tails in the independent simulator, a single slice ends at 0.976 instead of 0.993; at 1e3–1e4 counts
    0.002–0.004, and with 4 truncated partial-coherence modes 0.002. A defocus 30 Å off is still corrected (the
    phase is free); a semi-angle 5 % too large is not (dev_strong 0.991 → 0.939), and even 1 % costs a weak case
    0.025. Hence held by default ('auto', :mod:`phasestem.recon.aperture_rule`) only on a strong scatterer whose
    disk edge matches the nominal aperture's.
    """
    spec = fft2(torch.view_as_complex(model.probe.data))  # (M, ny, nx), ψ·probe_scale
    nominal = fft2(model.experiment.probe.to(spec))
    power = (spec.real.square() + spec.imag.square()).sum(0)  # (ny, nx)
    nominal_power = (nominal.real.square() + nominal.imag.square()).sum(0)
    ratio = power.sum() / nominal_power.sum().clamp_min(1e-30)  # the probe's intensity is kept
    lost = power <= 1e-12 * power.max()
    held = torch.where(lost, nominal * ratio.sqrt(),
                       spec * torch.sqrt(nominal_power * ratio / torch.where(lost, torch.ones_like(power), power)))
    model.probe.data.copy_(torch.view_as_real(ifft2(held)))


def clamp_object(model, c: ObjClamp) -> None:
    model.obj_amplitude.data.clamp_(c.amp_min, c.amp_max)
    if c.phase_min is not None or c.phase_max is not None:
        model.obj_phase.data.clamp_(c.phase_min, c.phase_max)


def _gauss_kernel_fourier(shape, sigma_px: float, device) -> torch.Tensor:
    ky = torch.fft.fftfreq(shape[0], device=device)
    kx = torch.fft.fftfreq(shape[1], device=device)
    return torch.exp(-2 * math.pi**2 * sigma_px**2 * (ky[:, None] ** 2 + kx[None, :] ** 2))


def _filter_object(model, kernel: torch.Tensor) -> None:
    """Amplitude and phase of every slice and mode multiplied in Fourier space (periodic) by ``kernel`` (Ny, Nx),
    fftfreq order. A constant plane (an amplitude held at its start) passes a low-pass kernel unchanged and is left
    bit-exact."""
    for t in (model.obj_amplitude, model.obj_phase):
        if bool(t.data.max() == t.data.min()):
            continue
        t.data.copy_(torch.fft.ifft2(torch.fft.fft2(t.data) * kernel.to(t.dtype)).real)


def blur_object(model, sigma_px: float) -> None:
    """Lateral Gaussian blur (periodic) of amplitude and phase; a constant one is left bit-exact."""
    _filter_object(model, _gauss_kernel_fourier(model.object_shape, sigma_px, model.device))


def band_limit_object(model) -> None:
    """Amplitude and phase held to the object grid's anti-aliased band (``constraints.obj_band``): the
    anti-aliasing mask the propagator uses (:func:`phasestem.physics.optics.antialias_mask`: 1 inside 2/3 of
    Nyquist, a raised-cosine edge just inside) on the object's grid; a constant plane is left bit-exact."""
    _filter_object(model, optics.antialias_mask(model.object_shape, tuple(float(s) for s in model.sampling),
                                                device=model.device))


def kz_filter(model, c: KzFilter) -> None:
    """Missing-wedge filter over (slices, y, x) of phase and/or amplitude (PtyRAD-style arctan)."""
    S = model.n_slices
    if S < 2:
        return
    dz = float(model.slice_thickness.detach())
    Ny, Nx = model.object_shape
    kz = torch.fft.fftfreq(S, d=dz, device=model.device)
    ky = torch.fft.fftfreq(Ny, d=model.sampling[0], device=model.device)
    kx = torch.fft.fftfreq(Nx, d=model.sampling[1], device=model.device)
    kr2 = ky[:, None] ** 2 + kx[None, :] ** 2
    w = 1 - 2 / math.pi * torch.atan(c.beta**2 * kz[:, None, None] ** 2 / (kr2[None] + 1e-3))
    targets = {"both": (model.obj_phase, model.obj_amplitude), "phase": (model.obj_phase,),
               "amplitude": (model.obj_amplitude,)}[c.obj_type]
    for t in targets:
        filt = torch.fft.ifftn(torch.fft.fftn(t.data, dim=(-3, -2, -1)) * w, dim=(-3, -2, -1)).real
        t.data.mul_(1 - c.alpha).add_(c.alpha * filt)


def rz_filter(model, sigma_angstrom: float) -> None:
    """Real-space Gaussian blur along z (slices) with replicate edges: no top/bottom wrap-around."""
    S = model.n_slices
    if S < 2:
        return
    dz = float(model.slice_thickness.detach())
    sig = sigma_angstrom / dz  # in slices
    r = max(1, int(math.ceil(3 * sig)))
    z = torch.arange(-r, r + 1, dtype=torch.float32, device=model.device)
    ker = torch.exp(-0.5 * (z / sig) ** 2)
    ker = ker / ker.sum()
    for t in (model.obj_phase, model.obj_amplitude):
        x = t.data  # (K, S, Ny, Nx)
        K, _, Ny, Nx = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(-1, 1, S)
        flat = torch.nn.functional.pad(flat, (r, r), mode="replicate")
        out = torch.nn.functional.conv1d(flat, ker.view(1, 1, -1))
        t.data.copy_(out.reshape(K, Ny, Nx, S).permute(0, 3, 1, 2))


def total_variation(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Isotropic TV Σ√(|∇x|² + ε²) over the last two axes (forward differences, nothing across the edges)."""
    dy = torch.nn.functional.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    dx = torch.nn.functional.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    return (dy.square() + dx.square() + eps**2).sqrt().sum()


def tv_step(x: torch.Tensor, weight: float, eps: float, n_iter: int = 1) -> torch.Tensor:
    """``n_iter`` steps x ← x − weight · ∇TV_ε(x) (the analytic gradient of :func:`total_variation`)."""
    for _ in range(n_iter):
        dy = torch.nn.functional.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
        dx = torch.nn.functional.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
        norm = (dy.square() + dx.square() + eps**2).sqrt()
        py, px = dy / norm, dx / norm
        # ∇TV = −div(p) with the adjoint of the forward differences
        div = py - torch.nn.functional.pad(py[..., :-1, :], (0, 0, 1, 0))
        div = div + px - torch.nn.functional.pad(px[..., :, :-1], (1, 0, 0, 0))
        x = x + weight * div
    return x


def tv_regularize(model, c: TotalVariation) -> None:
    """Apply :func:`tv_step` to the object phase and/or amplitude (every mode and slice) in place."""
    targets = {"both": (model.obj_phase, model.obj_amplitude), "phase": (model.obj_phase,),
               "amplitude": (model.obj_amplitude,)}[c.obj_type]
    for t in targets:
        t.data.copy_(tv_step(t.data, c.weight, c.eps, c.n_iter))


def smooth_tilt(model, sigma_angstrom: float) -> None:
    """Gaussian-weighted average of per-position tilts over neighbours within the scan."""
    if model.tilt.dim() == 1:
        return
    pos = model.positions.detach()
    d2 = torch.cdist(pos, pos).square()
    w = torch.exp(-d2 / (2 * sigma_angstrom**2))
    model.tilt.data.copy_((w @ model.tilt.data) / w.sum(1, keepdim=True))


def remove_affine_corrections(model) -> None:
    """Subtract from the position corrections d = p − p₀ (N, 2) their least-squares affine fit A·p₀ + b."""
    p0 = model.initial_positions.double()
    d = (model.positions.data - model.initial_positions).double()
    design = torch.cat([p0 - p0.mean(0), torch.ones_like(p0[:, :1])], 1)  # (N, 3)
    coef = torch.linalg.lstsq(design, d).solution
    model.positions.data.copy_(model.initial_positions + (d - design @ coef).to(model.positions.dtype))


def limit_positions(model, max_shift: float) -> None:
    """Clamp each position correction (vector length) to ``max_shift`` Å."""
    d = model.positions.data - model.initial_positions
    n = d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    scale = torch.clamp(max_shift / n, max=1.0)
    model.positions.data.copy_(model.initial_positions + d * scale)


@torch.no_grad()
def transfer_phase_ramp(model, smooth_steps: float = 1.0) -> tuple[float, float]:
    """Move the plane that best fits the object phase over the scanned area into the probe; returns the
    ramp removed (gy, gx) in rad per object pixel.

    An object phase ramp exp(i·g·r) and a probe tilt exp(i·g·r) give the same intensities: the exit
    wave O(R + r)·P(r) becomes O(R + r)·e^(−i·g·(R + r))·P(r)·e^(i·g·r) = O·P·e^(−i·g·R), a constant
    phase per position (exact for one slice and whole-pixel positions; a sub-pixel position shifts the
    tilted probe in its periodic window, ~0.2 % of the intensity for a 0.1-px tilt in a 64-px window and
    no change of the loss in its sixth digit at 256 px; with several slices the tilt's walk through the
    thickness, λ·|g|/2π·t, is far below a pixel for any ramp this removes). The data therefore do not fix the
    ramp, and a residual shift δ of the patterns (a descan or centre error of a few hundredths of a
    pixel) puts one of 2π·δ/N rad per pixel into the object: 0.3 rad across a 57 Å field for δ = 0.03
    px of 256 (``benchmarks/real_data``), enough to take a weak object's r from 0.90 to 0.36. The
    plane is fitted to the slice-summed phase, low-passed (Gaussian of ``smooth_steps`` scan steps),
    at the probe positions; it is removed evenly from every slice and the probe gets the tilt.
    """
    pos_px = model.positions.detach() / torch.tensor(model.sampling, dtype=model.positions.dtype,
                                                     device=model.device)  # (N, 2) probe centres, object px
    if pos_px.shape[0] < 3:
        return 0.0, 0.0
    phase = model.obj_phase.detach()
    w = model.obj_weights.detach()
    w = w / w.sum() if model.n_object_modes > 1 else torch.ones_like(w)
    total = (w[:, None, None] * phase.sum(1)).sum(0) if phase.shape[0] > 1 else phase[0].sum(0)  # (Ny, Nx)
    d = torch.diff(pos_px, dim=0).norm(dim=1)
    step_px = float(d[d > 1e-3].median()) if bool((d > 1e-3).any()) else 1.0
    ny, nx = total.shape
    sigma = smooth_steps * step_px
    u = torch.fft.fftfreq(ny, device=model.device)[:, None]
    v = torch.fft.rfftfreq(nx, device=model.device)[None, :]
    low = torch.fft.irfft2(torch.fft.rfft2(total) * torch.exp(-2 * math.pi**2 * sigma**2 * (u**2 + v**2)), s=(ny, nx))
    iy = pos_px[:, 0].round().long().clamp(0, ny - 1)
    ix = pos_px[:, 1].round().long().clamp(0, nx - 1)
    A = torch.stack([iy.double(), ix.double(), torch.ones_like(iy, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(A, low[iy, ix].double()[:, None]).solution[:, 0]
    gy, gx = float(coef[0]), float(coef[1])
    if not (math.isfinite(gy) and math.isfinite(gx)):
        return 0.0, 0.0
    yy = torch.arange(ny, device=model.device, dtype=phase.dtype)[:, None]
    xx = torch.arange(nx, device=model.device, dtype=phase.dtype)[None, :]
    model.obj_phase.sub_((gy * yy + gx * xx) / model.n_slices)
    wy, wx = model.window
    ry = torch.arange(wy, device=model.device, dtype=torch.float32)[:, None]
    rx = torch.arange(wx, device=model.device, dtype=torch.float32)[None, :]
    tilt = torch.polar(torch.ones((wy, wx), device=model.device), gy * ry + gx * rx)
    probe = torch.view_as_complex(model.probe.detach()) * tilt
    model.probe.copy_(torch.view_as_real(probe))
    return gy, gx


def _probe_refined(model, epoch: int) -> bool:
    """Whether the probe took steps in ``epoch`` (a frozen or not yet started probe is left as it is)."""
    schedule = getattr(model, "schedules", {}).get("probe")
    return model.probe.requires_grad and (schedule is None or schedule.active(epoch))


def _hold_probe_aperture(model, setting, epoch: int) -> bool:
    if not _probe_refined(model, epoch):  # a frozen or not yet started probe is left as it is
        return False
    hold_probe_aperture(model)
    return True


def _blur(model, setting, epoch: int) -> None:
    blur_object(model, setting.sigma_px())


def _shear(model, setting, epoch: int) -> None:
    dty, dtx = transfer_slice_shear(model, setting.min_coherence, setting.max_walk)
    log.info("constraints.obj_shear: tilt %+.2f, %+.2f mrad (now %s)", dty, dtx,
             ", ".join(f"{v:.2f}" for v in model.tilt.detach().reshape(-1, 2).mean(0).tolist()))


#: every constraint, in the order they apply after an epoch: its ``Constraints`` field → action(model, setting,
#: epoch), which returns False where it did not apply (a new constraint: its settings in
#: constraint_settings.py, its function here, one row)
ACTIONS = {
    "ortho_probe": lambda model, s, epoch: orthogonalize_probe(model),
    "probe_mask": lambda model, s, epoch: probe_fourier_mask(model, s.radius_mrad, s.width_mrad),
    "probe_aperture": _hold_probe_aperture,
    "obj_blur": _blur,
    "obj_band": lambda model, s, epoch: band_limit_object(model),
    "kz_filter": lambda model, s, epoch: kz_filter(model, s),
    "rz_filter": lambda model, s, epoch: rz_filter(model, s.sigma),
    "tv": lambda model, s, epoch: tv_regularize(model, s),
    "obj_ramp": lambda model, s, epoch: transfer_phase_ramp(model, s.smooth),
    "obj_shear": _shear,
    "obj_clamp": lambda model, s, epoch: clamp_object(model, s),
    "tilt_smooth": lambda model, s, epoch: smooth_tilt(model, s.sigma),
    "position_affine": lambda model, s, epoch: remove_affine_corrections(model),
    "position_limit": lambda model, s, epoch: limit_positions(model, s.max_shift),
}


def apply_constraints(model, c: Constraints, epoch: int) -> list[str]:
    """Apply every constraint due at ``epoch`` (:data:`ACTIONS`, in its order); returns the names applied."""
    done = []
    with torch.no_grad():
        for name, action in ACTIONS.items():
            setting = getattr(c, name)
            if setting.due(epoch) and action(model, setting, epoch) is not False:
                done.append(name)
    return done
