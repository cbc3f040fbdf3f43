"""A crystal's straight columns as the specimen tilt: the shear of a multislice object's slices, measured and moved
into the tilt (``constraints.obj_shear``; see :func:`transfer_slice_shear`)."""
from __future__ import annotations

import math

import torch

from ..physics.fourier import fourier_shift


def slice_shear(slices: torch.Tensor, window: torch.Tensor | None = None,
                max_walk: float = 0.5) -> tuple[tuple[float, float], float]:
    """The shear that best aligns a stack of slices, and how well they then agree.

    ``slices``: (S, H, W) real; ``window``: (H, W) weights of the region that counts (default: a Hann window
    over the whole stack). Slice k is moved by k·(dy, dx) px (a Fourier shift), then weighted by the window; d
    maximises ρ(d) = ‖Σ_k m_k‖² / Σ_k ‖m_k‖² of the moved, weighted slices m_k (each slice's weighted mean removed
    first): S when all agree, about 1 when they are independent. Normalising by the slices' own energy under the
    window keeps d from favouring whatever content a shift brings into the window; give the window a margin of zero
    weight of about (S − 1)·``max_walk`` px for it. d is searched on a 9 × 9 grid of ±``max_walk`` px per
    slice, then on two 5 × 5 grids each 4× finer around the best, refined by a parabola per axis. Returns
    ((dy, dx), coherence) with coherence = (ρ(d) − 1) / (S − 1): the mean correlation of the aligned slices (1:
    identical; about 0 for independent ones).
    """
    S, h, w = slices.shape
    x = slices.float()
    if window is None:
        window = torch.outer(torch.hann_window(h, periodic=False, dtype=x.dtype, device=x.device),
                             torch.hann_window(w, periodic=False, dtype=x.dtype, device=x.device))
    win = window.to(x)
    x = x - (x * win).sum((-2, -1), keepdim=True) / win.sum()
    if S < 2 or float((win * x).pow(2).sum()) <= 0:
        return (0.0, 0.0), 0.0
    spec = torch.fft.rfft2(x)  # (S, h, w//2+1)
    qy = torch.fft.fftfreq(h, dtype=x.dtype, device=x.device)[:, None]
    qx = torch.fft.rfftfreq(w, dtype=x.dtype, device=x.device)[None, :]
    k = torch.arange(S, dtype=x.dtype, device=x.device)[:, None, None]

    def energy(dy: float, dx: float) -> float:  # ρ(d)
        ramp = torch.exp(-2j * math.pi * k * qy * dy) * torch.exp(-2j * math.pi * k * qx * dx)  # separable
        moved = win * torch.fft.irfft2(spec * ramp, s=(h, w))
        return float(moved.sum(0).pow(2).sum() / moved.pow(2).sum().clamp_min(1e-30))

    best, step, half = (0.0, 0.0), max_walk / 4, 4
    for level in range(3):  # a 9 × 9 grid, then two 5 × 5 grids each 4× finer around the best
        n = 2 * half + 1
        span = range(-half, half + 1)
        grid = [(best[0] + i * step, best[1] + j * step) for i in span for j in span]
        e = torch.tensor([energy(dy, dx) for dy, dx in grid]).reshape(n, n)
        i, j = divmod(int(torch.argmax(e)), n)
        best = grid[n * i + j]
        if level == 2 and 0 < i < n - 1 and 0 < j < n - 1:  # a parabola through the peak and its neighbours
            cy = float(e[i - 1, j] - 2 * e[i, j] + e[i + 1, j])
            cx = float(e[i, j - 1] - 2 * e[i, j] + e[i, j + 1])
            best = (best[0] + (step * 0.5 * float(e[i - 1, j] - e[i + 1, j]) / cy if cy < 0 else 0.0),
                    best[1] + (step * 0.5 * float(e[i, j - 1] - e[i, j + 1]) / cx if cx < 0 else 0.0))
        step, half = step / 4, 2
    return best, (energy(*best) - 1) / (S - 1)


@torch.no_grad()
def transfer_slice_shear(model, min_coherence: float = 0.3, max_walk: float = 0.5) -> tuple[float, float]:
    """Straighten the object's slices and move their shear into the specimen tilt; returns the tilt added
    (dθy, dθx) in mrad ((0, 0) when nothing moved).

    A specimen tilted by θ gives the patterns of the untilted one whose slice k is moved by −k·Δz·tanθ
    (``tests/test_physics.py``): the wave's walk through the thickness can sit in the propagator or in the
    object, and the data do not say which. A reconstruction started at the wrong tilt therefore builds the walk
    into its slices. For a crystal near a zone axis the physical choice is the one whose columns are straight:
    the shear d that best aligns the slices over the scanned field (:func:`slice_shear`) is measured, slice k is
    moved by k·d (slice 0 stays: the patterns do not change) and the tilt takes the walk, tanθ += d·px/Δz. Nothing
    moves when the aligned slices correlate less than ``min_coherence`` (independent atoms in every slice carry no
    column to straighten) or with one or two slices. That guard is not enough for a reconstruction of such a
    specimen: its depth blur correlates neighbouring slices whatever the tilt, and the shear measured then walks
    the tilt away (on ``benchmarks/independent``'s random-atom cases: dev_tilt's r @ 20 0.95 → 0.66, dev_strong's
    0.99 → 0.41). Use it for crystals, where it finds the tilt (dev_tilt_crystal: (2.70, −2.19) mrad for (2.5,
    −2.0)).
    """
    S = model.n_slices
    if S < 3:
        return 0.0, 0.0
    sampling = tuple(float(v) for v in model.sampling)
    pos_px = model.positions.detach() / torch.tensor(sampling, dtype=model.positions.dtype, device=model.device)
    ny, nx = model.obj_phase.shape[-2:]
    lo = [max(0, int(math.floor(float(v)))) for v in pos_px.min(0).values]  # the scanned field (probe centres)
    hi = [min(n, int(math.ceil(float(v))) + 1) for v, n in zip(pos_px.max(0).values, (ny, nx), strict=True)]
    if hi[0] - lo[0] < 8 or hi[1] - lo[1] < 8:
        return 0.0, 0.0
    margin = int(math.ceil(max_walk * (S - 1))) + 1  # room for what the shear moves into the field
    y0, x0 = max(0, lo[0] - margin), max(0, lo[1] - margin)
    y1, x1 = min(ny, hi[0] + margin), min(nx, hi[1] + margin)
    window = torch.zeros((y1 - y0, x1 - x0), dtype=torch.float64, device=model.device)
    window[lo[0] - y0 : hi[0] - y0, lo[1] - x0 : hi[1] - x0] = torch.outer(
        torch.hann_window(hi[0] - lo[0], periodic=False, dtype=torch.float64, device=model.device),
        torch.hann_window(hi[1] - lo[1], periodic=False, dtype=torch.float64, device=model.device))
    phase = model.obj_phase.detach()
    w = model.obj_weights.detach()
    w = (w / w.sum()).to(phase.dtype)
    stack = (w[:, None, None, None] * phase).sum(0)[:, y0:y1, x0:x1]  # (S, h, w) the field and its margin
    (dy, dx), coherence = slice_shear(stack, window, max_walk)
    if coherence < min_coherence or not (math.isfinite(dy) and math.isfinite(dx)):
        return 0.0, 0.0
    walk = torch.arange(S, device=model.device, dtype=torch.float32)[:, None] * torch.tensor(
        [dy, dx], device=model.device)  # (S, 2): slice k moves by k·d
    for param in (model.obj_phase, model.obj_amplitude):
        param.copy_(fourier_shift(param.detach(), walk).real.to(param.dtype))
    dz = float(model.slice_thickness.detach())
    tan = torch.tan(model.tilt.detach().double() * 1e-3)
    new = torch.atan(tan + torch.tensor([dy * sampling[0] / dz, dx * sampling[1] / dz], dtype=tan.dtype,
                                        device=tan.device)) * 1e3
    added = (new - model.tilt.detach().double()).reshape(-1, 2).mean(0)
    model.tilt.copy_(new.to(model.tilt.dtype))
    return float(added[0]), float(added[1])
