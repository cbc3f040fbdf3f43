"""The Fisher information of the object phase as an operator, and the marginal variance diag(F⁻¹) (issue 65).

A diagnostic beside :mod:`phasestem.recon.uncertainty` (not the run's σ): its map uses the diagonal F_ii alone,
1/F_ii being one pixel's variance when every other pixel is known, a lower bound on the marginal [F⁻¹]_ii.

:class:`FisherOperator` applies F v = Jᵀ W J v to a phase perturbation v (Ny, Nx) rad of one slice (``slice_index``,
every object mode alike: uncertainty.py's information per slice pixel), J = ∂I/∂φ of the model's patterns
(normalised to a total of 1) with the probe and positions held. J v comes from central differences of the model's
forward (φ ± ε v, the largest |ε v| :data:`FD_STEP` rad), Jᵀ(W J v) from one backward pass of Σ I · (W J v) with
W J v held constant, batch by batch. W is c / I for Poisson counts (c per pattern, ``model.counts_per_pattern`` by
default; I the differences' midpoint, floored by :data:`INTENSITY_FLOOR`) and c² / σ_n² for Gaussian noise of σ_n
counts per detector pixel. It works on a float64 copy of the model made when it is built: in float32 round-off
needs ε ≥ 10⁻⁴ rad, where the dark field's second-order terms already err (a column of F: 0.1 % at 10⁻⁴, 2 % at
10⁻²); at 10⁻⁵ in float64 ⟨u, F v⟩ = ⟨F u, v⟩ to 10⁻⁵. The model is never changed; the copy's phase is put back
bit for bit and no gradient is left on either.

**The dark field.** A pixel's Poisson information (c ∂I)² / (c I) = 4c Re(conj(Ψ̂) ∂Ψ)² does not fall with its
intensity, so the faint dark field of a scattering object carries most of it: F is not confined to the band the
aperture transfers, and its diagonal is the analytic 2c Σ_j |ψ_j|² (tests: within 3 % at the true phase). At a flat
phase (a run's start) the dark field is empty and F_ii is the bright-field disk's share of it (0.15 for 20 mrad on a
detector of ±49 mrad). Reaching the dark field's share needs |∂Ψ δφ| ≪ |Ψ|, which its few counts may not give (not
measured here): the bound may be optimistic there.

:func:`marginal_variance` estimates diag((F + λ)⁻¹) by Hutchinson probes (Rademacher z: the mean of z ⊙ x with
(F + λ) x = z, each solved by conjugate gradients preconditioned by the analytic diagonal), over a ``region`` of
pixels with the rest held fixed (the operator M F M, M its mask): the exact marginal of the region given the rest,
which approaches the full marginal for pixels far from the region's edge. λ is ``damping`` × the median analytic
F_ii over the region, a cap on directions the data hardly determine. :func:`positions_lighting` keeps the patterns
that light a region. :func:`exact_fisher` builds the dense matrix over a few pixels (tests).

**Measured** (the issue-65 case: NumPy multislice, 300 kV, 20 mrad, 100 Å defocus, 1 Å step, 24 × 24 scan, 128²
patterns of 0.2 Å, Poisson at 10⁴ e⁻, 40 lsq epochs of the Poisson loss, probe held): medians over a central region's
inner pixels (2 Å from its edge), λ = 10⁻³ × median F_ii, 8 and 6 probes, CG converged (10⁻³) in 10–16
iterations:

=====================  ============  ===========  =============  ========
region (px)            marginal σ    √(1/F_ii)    √(b/F_ii)      ratio
=====================  ============  ===========  =============  ========
40² (409 patterns)     0.0366 rad    0.0351 rad   0.0256 rad     1.04
60² (450 patterns)     0.0366 rad    0.0351 rad   0.0256 rad     1.03
=====================  ============  ===========  =============  ========

(√(1/F_ii) analytic; exact by Hutchinson 0.0354; √(b/F_ii), b = 0.53 the band share, is the run's σ before κ;
λ = 10⁻⁴ on the 40² region: 0.0370 rad, 1.04, the same CG iterations.) The marginal is 3–4 % above the diagonal's
√(1/F_ii): the diagonal's neglect of the other pixels is not what makes σ 2.4–3.4 × too small, and a larger region
does not raise it. It is 1.43 × √(b/F_ii): the band share takes away more than marginalising adds back, F not being
band-limited. Cost on 2 shared CPU cores: 7–22 s per application (float64, 409–450 patterns), 7–21 min per region.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..base.errors import ConfigError, ShapeError

#: the largest phase change (rad) of the central differences that give J v
FD_STEP = 1e-5
#: Poisson weights divide by at least this fraction of the pattern's mean pixel intensity: it guards the division
#: only, since a dark pixel's first-order information 4c·Re(conj(Ψ̂)·∂Ψ)² does not fall with its intensity
#: (measured: a floor of 1e-6 dropped 1 % of ⟨v, F v⟩ on the tests' case)
INTENSITY_FLOOR = 1e-12
#: :func:`exact_fisher` builds at most this many rows
MAX_EXACT_PIXELS = 4096


class FisherOperator:
    """F v = Jᵀ W J v (rad⁻², (Ny, Nx) float64) at ``model``'s state when built, for a phase perturbation v (Ny, Nx)
    rad of slice ``slice_index`` (module docstring). Poisson with ``counts`` per pattern (default:
    ``model.counts_per_pattern``), or Gaussian with ``noise_sigma`` counts per detector pixel; ``batch`` patterns per
    pass; ``index`` the flat scan positions counted (default: all)."""

    def __init__(self, model, counts: float | None = None, noise_sigma: float | None = None, batch: int = 64,
                 slice_index: int = 0, index: torch.Tensor | None = None):
        counts = model.counts_per_pattern if counts is None else counts
        if counts is None or not (math.isfinite(counts) and counts > 0):
            raise ConfigError(f"FisherOperator: counts per pattern must be a positive number, got {counts}")
        if noise_sigma is not None and not (math.isfinite(noise_sigma) and noise_sigma > 0):
            raise ConfigError(f"FisherOperator: noise_sigma must be a positive number of counts, got {noise_sigma}")
        if not 0 <= slice_index < model.n_slices:
            raise ConfigError(f"FisherOperator: slice_index must be in [0, {model.n_slices}), got {slice_index}")
        self.model = float64_copy(model)
        self.counts, self.noise_sigma, self.slice_index = float(counts), noise_sigma, int(slice_index)
        every = torch.arange(model.positions.shape[0], device=model.device) if index is None else index
        self.batches = torch.split(every.to(model.device), max(1, int(batch)))
        self.shape: tuple[int, int] = model.object_shape
        self.applications = 0

    def weights(self, intensity: torch.Tensor) -> torch.Tensor:
        """W (B, h, w) of the patterns ``intensity`` (B, h, w), normalised units."""
        if self.noise_sigma is not None:
            return torch.full_like(intensity, self.counts**2 / self.noise_sigma**2)
        floor = INTENSITY_FLOOR * intensity.mean(dim=(-2, -1), keepdim=True)
        return self.counts / torch.maximum(intensity, floor)

    def apply(self, v: torch.Tensor | np.ndarray) -> torch.Tensor:
        """F v (Ny, Nx) float64 on the model's device for v (Ny, Nx) rad."""
        phase = self.model.obj_phase
        v = torch.as_tensor(v, device=phase.device).to(phase.dtype)
        if tuple(v.shape) != self.shape:
            raise ShapeError(f"FisherOperator.apply: v must be (Ny, Nx) = {self.shape}, got {tuple(v.shape)}")
        out = torch.zeros(self.shape, dtype=torch.float64, device=phase.device)
        scale = float(v.abs().max())
        if scale == 0.0:
            return out
        saved = phase.detach().clone()
        try:
            for index in self.batches:
                out += self._apply_batch(index, v, FD_STEP / scale, saved)
        finally:
            with torch.no_grad():
                phase.copy_(saved)
        self.applications += 1
        return out

    def _apply_batch(self, index: torch.Tensor, v: torch.Tensor, step: float, saved: torch.Tensor) -> torch.Tensor:
        """Jᵀ W J v (Ny, Nx) of the patterns ``index``."""
        phase, s = self.model.obj_phase, self.slice_index
        with torch.no_grad():
            phase[:, s].copy_(saved[:, s] + step * v)
            plus = self.model(index)
            phase[:, s].copy_(saved[:, s] - step * v)
            minus = self.model(index)
            phase.copy_(saved)
            weighted = self.weights(0.5 * (plus + minus)) * (plus - minus) / (2.0 * step)
        (grad,) = torch.autograd.grad((self.model(index) * weighted).sum(), phase)
        return grad[:, s].sum(0)


def float64_copy(model):
    """A float64 (complex128) copy of ``model``, its data cache, σ maps and figure left out (module docstring)."""
    skip = {id(getattr(model, name)): None for name in ("_data_cache", "uncertainty", "_inspect_figure")
            if getattr(model, name, None) is not None}
    twin = copy.deepcopy(model, memo=skip)
    for module in twin.modules():
        for param in module.parameters(recurse=False):
            param.data = _widened(param.data)
        for name, buffer in module.named_buffers(recurse=False):
            setattr(module, name, _widened(buffer))
    return twin


def _widened(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 (complex128 if complex; other dtypes as they are)."""
    if t.is_complex():
        return t.to(torch.complex128)
    return t.to(torch.float64) if t.is_floating_point() else t


def positions_lighting(model, region: np.ndarray | torch.Tensor, share: float = 0.999) -> torch.Tensor:
    """The flat scan indices (brightest first) whose probe intensity over ``region`` (Ny, Nx) bool makes up
    ``share`` of the scan's illumination of it: the operator restricted to the region needs only their patterns
    (the rest carry 1 − ``share`` of its trace), which makes a region's marginal affordable on a large scan."""
    from ..physics.multislice import positions_in_pixels, window_origins

    probe = model.get_probe().detach()
    intensity = (probe.real.square() + probe.imag.square()).sum(0).double().cpu()  # (ny, nx)
    mask = torch.as_tensor(region).double().cpu()
    corners, _ = window_origins(positions_in_pixels(model.positions.detach(), model.sampling), model.window)
    (Ny, Nx), (ny, nx) = model.object_shape, model.window
    lit = torch.empty(len(corners), dtype=torch.float64)
    for j, (y, x) in enumerate(corners.cpu().tolist()):
        rows, cols = torch.arange(y, y + ny) % Ny, torch.arange(x, x + nx) % Nx
        lit[j] = (mask[rows[:, None], cols[None, :]] * intensity).sum()
    order = torch.argsort(lit, descending=True)
    cumulative = torch.cumsum(lit[order], 0)
    keep = int(torch.searchsorted(cumulative, float(share) * float(cumulative[-1]))) + 1
    return order[:min(keep, len(order))].to(model.device)


def rademacher(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A (shape) float64 array of ±1 drawn from ``generator``."""
    return torch.randint(0, 2, shape, generator=generator, dtype=torch.float64) * 2.0 - 1.0


def hutchinson_diagonal(op: FisherOperator, probes: int = 16, seed: int = 0,
                        region: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """diag(F) (Ny, Nx) float64 estimated as the mean of z ⊙ F z over ``probes`` Rademacher vectors z, drawn on
    ``region`` (Ny, Nx) bool alone when given (0 elsewhere: fewer off-diagonal terms add noise)."""
    generator = torch.Generator().manual_seed(int(seed))
    inside = torch.ones(op.shape, dtype=torch.float64) if region is None else torch.as_tensor(region).double().cpu()
    total = torch.zeros(op.shape, dtype=torch.float64)
    for _ in range(max(1, int(probes))):
        z = rademacher(op.shape, generator) * inside
        total += z * op.apply(z).cpu()
    return total / max(1, int(probes))


@dataclass
class MarginalVariance:
    """diag((F + λ)⁻¹) of a Hutchinson estimate: ``variance`` (Ny, Nx) rad² (NaN outside ``region``), ``region``
    (Ny, Nx) bool, ``damping`` λ (rad⁻²), ``diagonal`` (Ny, Nx) the analytic F_ii (rad⁻²) that preconditioned CG,
    ``probes``, the CG ``iterations`` of each solve and its final relative ``residuals``, ``tol``, ``seconds``."""

    variance: np.ndarray
    region: np.ndarray
    damping: float
    diagonal: np.ndarray
    probes: int
    iterations: list[int]
    residuals: list[float]
    tol: float
    seconds: float

    @property
    def converged(self) -> bool:
        """Whether every solve reached ``tol``."""
        return max(self.residuals) <= self.tol


def conjugate_gradients(apply, b: torch.Tensor, inverse_diagonal: torch.Tensor, iterations: int,
                        tol: float) -> tuple[torch.Tensor, int, float]:
    """x with apply(x) ≈ b (``apply`` symmetric positive definite) by CG from x = 0, preconditioned by
    ``inverse_diagonal`` (same shape as b); returns (x, iterations taken, final ‖r‖ / ‖b‖)."""
    x, r = torch.zeros_like(b), b.clone()
    z = inverse_diagonal * r
    p, rz = z.clone(), float((r * z).sum())
    norm_b = float(b.norm()) or 1.0
    for k in range(1, int(iterations) + 1):
        ap = apply(p)
        alpha = rz / float((p * ap).sum())
        x += alpha * p
        r -= alpha * ap
        residual = float(r.norm()) / norm_b
        if residual <= tol:
            return x, k, residual
        z = inverse_diagonal * r
        rz_new = float((r * z).sum())
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, int(iterations), residual


def marginal_variance(op: FisherOperator, probes: int = 16, cg_iters: int = 100, tol: float = 1e-3,
                      damping: float = 1e-3, region: np.ndarray | torch.Tensor | None = None,
                      seed: int = 0) -> MarginalVariance:
    """diag((F + λ)⁻¹) over ``region`` (Ny, Nx) bool (default: every pixel), the rest held fixed, by ``probes``
    Hutchinson probes, each solved by at most ``cg_iters`` iterations of CG (preconditioned by the analytic
    diagonal) to relative residual ``tol``; λ = ``damping`` × the median analytic diagonal over the region."""
    from .uncertainty import fisher_diagonal

    t0 = time.perf_counter()
    mask = torch.ones(op.shape, dtype=torch.bool) if region is None else torch.as_tensor(region).bool().cpu()
    if tuple(mask.shape) != op.shape:
        raise ShapeError(f"marginal_variance: region must be (Ny, Nx) = {op.shape}, got {tuple(mask.shape)}")
    if not mask.any():
        raise ConfigError("marginal_variance: the region holds no pixel")
    diagonal = fisher_diagonal(op.model, op.counts, op.noise_sigma).double().cpu()
    lam = float(damping) * float(diagonal[mask].median())
    inside = mask.double()
    inverse_diagonal = inside / (diagonal + lam)

    def damped(x: torch.Tensor) -> torch.Tensor:
        return inside * op.apply(inside * x).cpu() + lam * x

    generator = torch.Generator().manual_seed(int(seed))
    total = torch.zeros(op.shape, dtype=torch.float64)
    iterations, residuals = [], []
    for _ in range(max(1, int(probes))):
        z = rademacher(op.shape, generator) * inside
        x, k, residual = conjugate_gradients(damped, z, inverse_diagonal, cg_iters, tol)
        total += z * x
        iterations.append(k)
        residuals.append(residual)
    variance = torch.where(mask, total / len(iterations), torch.tensor(float("nan"), dtype=torch.float64))
    return MarginalVariance(variance.numpy(), mask.numpy(), lam, diagonal.numpy(), len(iterations), iterations,
                            residuals, float(tol), time.perf_counter() - t0)


def exact_fisher(op: FisherOperator, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    """The dense Fisher matrix (P, P) rad⁻² over ``pixels`` (P, 2) (row, column) of the object, by F applied to each
    unit vector (for tests on tiny cases)."""
    pixels = np.asarray(pixels, dtype=np.int64).reshape(-1, 2)
    if len(pixels) > MAX_EXACT_PIXELS:
        raise ConfigError(f"exact_fisher: {len(pixels)} pixels, at most {MAX_EXACT_PIXELS} (a dense matrix is for "
                          "tiny cases; use marginal_variance)")
    rows, cols = pixels[:, 0], pixels[:, 1]
    dense = np.zeros((len(pixels), len(pixels)))
    for n, (r, c) in enumerate(pixels):
        unit = torch.zeros(op.shape, dtype=torch.float64)
        unit[r, c] = 1.0
        dense[:, n] = op.apply(unit).cpu().numpy()[rows, cols]
    return dense
