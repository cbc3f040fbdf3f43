"""Illumination preconditioning: the ``lsq`` solver's scaled gradient steps.

Plain gradient steps on the object are large where many probe positions overlap and tiny
where the probe is dim, so a learning rate that is safe in the bright centre of a scan is
slow everywhere else (and Adam's per-pixel normalisation is noisy on mini-batches). The
``lsq`` solver divides each gradient by the diagonal of the Gauss–Newton curvature of the
data term for the current mini-batch, as the least-squares updates of ePIE/LSQML-type
solvers do, while the gradients themselves still come from autograd through the one forward
model (:class:`phasestem.physics.operator.ForwardModel`), so positions, tilt, thickness and modes keep
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
defaults (``schedule.SOLVER_DEFAULTS``: object phase 0.7, probe 0.2) keep that margin.

The object *amplitude* takes a step of 0.1: electron specimens are nearly pure phase objects, the
amplitude is weakly determined by the data, and a full step fills it with noise and with what a
coherent single-state model cannot explain (thermal diffuse scattering, partial coherence), which
then leaks into the phase. On independent data (the cases of ``benchmarks/independent``, 20
iterations, Poisson term) amplitude steps of 0.07 / 0 instead of 0.7 raised the peak r from 0.9934
to 0.9955 / 0.9957 (abTEM SrTiO3, frozen phonons, 1e5 e⁻), a step of 0 from 0.9924 to 0.9938
(8 slices, 1e6 e⁻), and a step of 0.1 left the noise-free thin case at 0.9992 (0.9993). An
absorbing specimen still gets its amplitude, more slowly (raise ``obj_amplitude``'s learning
rate for one).

**Steps per epoch** (``run.precondition_batches`` = T). The curvature above is the batch's own: a
pixel lit by one pattern of the batch takes a full step towards fitting that one pattern. On a dense
scan every pixel is lit by hundreds of patterns per epoch, so it takes hundreds of such steps, each
fitting the noise of one pattern. With T set, each curvature gets the whole scan's share
H_scan · (B/N) · (N/T)/B = H_scan / T added, H_scan being the curvature of all N patterns at the start of
the epoch: the epoch then moves a pixel by about T Gauss–Newton steps of the whole data, as T batches of
N/T patterns would, whatever the batch size, and a small batch keeps its speed (large batches of 256²
patterns leave the cache: batch 1024 ran 2.5× slower per epoch than batch 16 on the CPU).
"""
from __future__ import annotations

import torch

from ..physics.multislice import WindowIndex, positions_in_pixels, window_origins
from .settings.losses import LossConfig

#: parameters the lsq solver scales (the rest are stepped by Adam)
PRECONDITIONED = ("obj_amplitude", "obj_phase", "probe")


def curvature_scale(losses: LossConfig) -> float:
    """Curvature of the data terms relative to the amplitude loss of weight 1 (Poisson: twice; the Gaussian term
    is counted as the amplitude loss whatever its power)."""
    return max(losses.weight("gaussian") + 2.0 * losses.weight("poisson"), 1e-12)


#: steps per epoch that ``precondition_batches: auto`` takes for counted data (a Poisson term in the loss)
COUNTED_DATA_BATCHES = 16


def resolve_batches(value: int | str | None, losses: LossConfig) -> int | None:
    """``run.precondition_batches`` as a number or None: 'auto' → :data:`COUNTED_DATA_BATCHES` when the data term
    has a Poisson part (counted data, whose noise the per-batch steps would fit), else None. Measured on the
    independent cases (``benchmarks/independent``, 20 lsq iterations) with 16 instead of None: the counted cases
    noisy 0.9928 → 0.9933, partially coherent 0.9846 → 0.9849, abTEM 0.9955 → 0.9968; the noise-free ones
    lose speed and, thick, accuracy (thin 0.9992 → 0.9978, thick 0.9967 → 0.9955), so they keep None."""
    if value == "auto":
        return COUNTED_DATA_BATCHES if losses.weight("poisson") > 0 else None
    if value is None or isinstance(value, int):
        return value
    raise ValueError(f"precondition_batches must be a positive integer, 'auto' or None, got {value!r}")


class ScanCurvature:
    """The whole scan's illumination Σ_j Σ_m |P_m|² (Ny, Nx) and object transmission Σ_j Π_s a² (ny, nx),
    divided by ``batches`` (T), for :func:`precondition_gradients`; the engine makes one per epoch.

    Both are sums over the N windows, i.e. a convolution (illumination) and a correlation (transmission) of the
    windows' corners with |P|² and with the object's transmission: computed by FFTs on the object grid, periodic as
    :class:`~phasestem.physics.multislice.WindowIndex` places windows, in float64 (float32 on MPS) and exact to
    rounding. Summing the windows one by one took 4.5 s for 16384 windows of 128² on two cores (the N × window²
    adds), a third of an epoch."""

    @torch.no_grad()
    def __init__(self, model, batches: int):
        illum, trans = scan_sums(model)
        self.illumination = illum / int(batches)
        self.transmission = trans / int(batches)

    def clone(self) -> ScanCurvature:
        """A copy with its own tensors."""
        out = object.__new__(ScanCurvature)
        out.illumination, out.transmission = self.illumination.clone(), self.transmission.clone()
        return out

    def copy_(self, other: ScanCurvature) -> None:
        """Take ``other``'s values into this one's tensors (in place)."""
        self.illumination.copy_(other.illumination)
        self.transmission.copy_(other.transmission)


@torch.no_grad()
def scan_sums(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_j Σ_m |P_m(r − r_j)|² over the object (Ny, Nx), Σ_j Σ_k w_k Π_s a²(r_j + u) over the window (ny, nx)) for
    all N positions of ``model``, in its float dtype (see :class:`ScanCurvature`)."""
    probe = model.get_probe().detach()
    p_int = probe.real.square().add_(probe.imag.square()).sum(0)  # (ny, nx)
    Ny, Nx = model.object_shape
    ny, nx = model.window
    corners, _ = window_origins(positions_in_pixels(model.positions.detach(), model.sampling), model.window)
    wide = torch.float32 if model.device.type == "mps" else torch.float64
    density = torch.zeros(Ny, Nx, dtype=wide, device=model.device)
    density.index_put_((corners[:, 0] % Ny, corners[:, 1] % Nx),
                       torch.ones(len(corners), dtype=wide, device=model.device), accumulate=True)
    kernel = torch.zeros(Ny, Nx, dtype=wide, device=model.device)
    kernel[:ny, :nx] = p_int.to(wide)
    d_hat = torch.fft.rfft2(density)
    illum = torch.fft.irfft2(d_hat * torch.fft.rfft2(kernel), s=(Ny, Nx))
    trans = torch.fft.irfft2(d_hat.conj() * torch.fft.rfft2(mean_transmission(model).to(wide)), s=(Ny, Nx))
    illum = illum.masked_fill_(illum < 1e-9 * float(illum.max()), 0.0)  # rounding where no window reaches
    return illum.to(p_int.dtype), trans[:ny, :nx].clamp_min_(0.0).to(p_int.dtype)


def mean_transmission(model) -> torch.Tensor:
    """Σ_k w_k Π_s a_ks² (Ny, Nx): the intensity the object passes, object modes weighted."""
    w = model.obj_weights.detach()
    w = w / w.sum() if model.n_object_modes > 1 else torch.ones_like(w)
    a2 = model.obj_amplitude.detach().square().prod(1)  # (K, Ny, Nx)
    return (w[:, None, None] * a2).sum(0)


def window_illumination(model, index: torch.Tensor) -> tuple[torch.Tensor, WindowIndex]:
    """Σ_j Σ_m |P_m(r − r_j)|² (Ny, Nx) of the positions ``index`` and their windows."""
    probe = model.get_probe().detach()
    top_left, _ = window_origins(positions_in_pixels(model.positions.detach()[index], model.sampling), model.window)
    where = WindowIndex(top_left, model.window, model.object_shape)
    p_int = probe.real.square().add_(probe.imag.square()).sum(0)  # (ny, nx)
    illum = torch.zeros(model.object_shape, dtype=p_int.dtype, device=model.device)
    where.add_into(illum, p_int.expand(len(index), *p_int.shape))
    return illum, where


@torch.no_grad()
def precondition_gradients(model, index: torch.Tensor, n_total: int, losses: LossConfig, reg: float,
                           scan: ScanCurvature | None = None) -> None:
    """Divide the object and probe gradients (in place) by their Gauss–Newton curvature for batch ``index``.

    ``n_total`` is the mini-batch size the loss is normalised by; ``reg`` the relative floor of the curvature;
    ``scan``: the whole scan's share added to it (``run.precondition_batches``, see the module docstring).
    """
    c = curvature_scale(losses) / max(int(n_total), 1)
    S = model.n_slices
    w = model.obj_weights.detach()
    w = w / w.sum() if model.n_object_modes > 1 else torch.ones_like(w)
    amp = model.obj_amplitude.detach()
    illum, where = window_illumination(model, index)
    if scan is not None:
        illum = illum + scan.illumination
    if model.obj_amplitude.grad is not None or model.obj_phase.grad is not None:
        h_a = (c * S) * w[:, None, None, None] * illum  # (K, 1, Ny, Nx)
        if model.obj_amplitude.grad is not None:
            model.obj_amplitude.grad.div_(h_a + _floor(h_a, reg))
        if model.obj_phase.grad is not None:
            h_p = h_a * amp.square()
            model.obj_phase.grad.div_(h_p + _floor(h_p, reg))
    if model.probe.grad is not None:
        trans = where.gather(mean_transmission(model)).sum(0)  # (ny, nx): Σ_j Σ_k w_k Π_s a²
        if scan is not None:
            trans = trans + scan.transmission
        h_psi = trans * (c / model.probe_scale**2)  # (ny, nx)
        model.probe.grad.div_((h_psi + _floor(h_psi, reg))[None, :, :, None])


def _floor(h: torch.Tensor, reg: float) -> torch.Tensor:
    """``reg`` · max(h) as a 0-d tensor on h's device (no host sync), rounded as ``reg * float(h.max())`` was: the
    product in float64, then h's dtype."""
    m = h.amax()
    return m * reg if m.device.type == "mps" else (m.double() * reg).to(h.dtype)  # MPS has no float64
