"""A crystal's straight columns as the specimen tilt: the shear of a multislice object's slices, measured and moved
into the tilt (``constraints.obj_shear``; see :func:`transfer_slice_shear`), and when to do it (:func:`obj_shear_rule`,
for ``obj_shear: auto``; whether the object is a crystal: :mod:`phasestem.recon.crystal`)."""
from __future__ import annotations

import math

import torch

from ..physics.fourier import fourier_shift
from .crystal import crystal_test, field_slices, hann

#: ``obj_shear: auto`` is on for a crystal (:func:`~phasestem.recon.crystal.crystal_test`) whose slices the shear
#: that aligns them walks this many px or more over the specimen, (S − 1)·|d| (the
#: development half after one epoch: the crystal mistilted by 3.2 mrad 2.75 px, the one on its zone axis 0.17 px)
MIN_WALK_PX = 0.5


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
    win = hann(h, w, x) if window is None else window.to(x)
    x = x - (x * win).sum((-2, -1), keepdim=True) / win.sum()
    if S < 2 or float((win * x).pow(2).sum()) <= 0:
        return (0.0, 0.0), 0.0
    spec = torch.fft.rfft2(x)  # (S, h, w//2+1)
    qy = torch.fft.fftfreq(h, dtype=x.dtype, device=x.device)[:, None]
    qx = torch.fft.rfftfreq(w, dtype=x.dtype, device=x.device)[None, :]
    k = torch.arange(S, dtype=x.dtype, device=x.device)[:, None, None]
    # the shift is separable: the inverse transform along y of the spectrum shifted by dy is shared by every dx of a
    # grid row, and only the transform along x is done per point (0.58 × the time of a whole inverse per point)
    rows: dict[float, torch.Tensor] = {}

    def energy(dy: float, dx: float) -> float:  # ρ(d)
        if dy not in rows:
            rows[dy] = torch.fft.ifft(spec * torch.exp(-2j * math.pi * k * qy * dy), dim=-2)
        moved = win * torch.fft.irfft(rows[dy] * torch.exp(-2j * math.pi * k * qx * dx), n=w, dim=-1)
        return float(moved.sum(0).pow(2).sum() / moved.pow(2).sum().clamp_min(1e-30))

    best, step, half = (0.0, 0.0), max_walk / 4, 4
    for level in range(3):  # a 9 × 9 grid, then two 5 × 5 grids each 4× finer around the best
        n = 2 * half + 1
        span = range(-half, half + 1)
        rows.clear()
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


def obj_shear_rule(model, max_walk: float = 0.5) -> tuple[bool, str]:
    """Whether ``obj_shear: auto`` turns on for this model now, and why. On where (1) the object is a crystal
    (:func:`~phasestem.recon.crystal.crystal_test`) and (2) its slices are measurably sheared: the shear d that
    aligns them (:func:`slice_shear`) walks (S − 1)·|d| ≥ :data:`MIN_WALK_PX` px over the specimen, so the tilt the
    run started from is off. Without a lattice the reconstruction's depth blur alone correlates its slices, and
    the shear measured from it drives the tilt astray; on an untilted crystal there is nothing to move, and moving
    the measurement's noise costs a little r (:func:`transfer_slice_shear`)."""
    if model.n_slices < 3:
        return False, f"off: {model.n_slices} slice(s), no shear to measure"
    field = _field_stack(model, max_walk, fast_fft=True)  # a decision only: the faster transforms' stack will do
    if field is None:
        return False, "off: the scanned field is under 8 px across"
    stack, window, inner = field
    crystal, lattice = crystal_test(model, stack, inner)
    if not crystal:
        return False, f"off: {lattice}; no columns to straighten"
    (dy, dx), aligned = slice_shear(stack, window, max_walk)
    walk = (model.n_slices - 1) * math.hypot(dy, dx)
    shear = (f"the shear that aligns its slices ({dy:+.3f}, {dx:+.3f} px per slice; mean correlation then "
             f"{aligned:.2f}) walks {walk:.2f} px over the specimen")
    if not walk >= MIN_WALK_PX:
        return False, f"off: {lattice}, a crystal, but {shear}, under the {MIN_WALK_PX:g} of a mistilt; the tilt fits"
    return True, f"on: {lattice}, a crystal, and {shear}: a mistilt, which its columns give"


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
    0.99 → 0.41). It is for crystals, where it finds the tilt (dev_tilt_crystal: (2.70, −2.19) mrad for (2.5,
    −2.0)); ``obj_shear: auto`` (:func:`obj_shear_rule`) turns it on for a mistilted crystal only.
    """
    S = model.n_slices
    field = _field_stack(model, max_walk) if S >= 3 else None
    if field is None:
        return 0.0, 0.0
    (dy, dx), coherence = slice_shear(*field[:2], max_walk)
    if coherence < min_coherence or not (math.isfinite(dy) and math.isfinite(dx)):
        return 0.0, 0.0
    walk = torch.arange(S, device=model.device, dtype=torch.float32)[:, None] * torch.tensor(
        [dy, dx], device=model.device)  # (S, 2): slice k moves by k·d
    for param in (model.obj_phase, model.obj_amplitude):
        param.copy_(fourier_shift(param.detach(), walk).real.to(param.dtype))
    sampling = tuple(float(v) for v in model.sampling)
    dz = float(model.slice_thickness.detach())
    tan = torch.tan(model.tilt.detach().double() * 1e-3)
    new = torch.atan(tan + torch.tensor([dy * sampling[0] / dz, dx * sampling[1] / dz], dtype=tan.dtype,
                                        device=tan.device)) * 1e3
    added = (new - model.tilt.detach().double()).reshape(-1, 2).mean(0)
    model.tilt.copy_(new.to(model.tilt.dtype))
    return float(added[0]), float(added[1])


def _field_stack(model, max_walk: float,
                 fast_fft: bool = False) -> tuple[torch.Tensor, torch.Tensor, tuple[slice, slice]] | None:
    """The object's phase slices (modes weighted) over the scanned field and a margin of (S − 1)·``max_walk`` + 1
    px, (S, h, w); the window :func:`slice_shear` weighs them by: a Hann window over the field, zero in the margin
    (room for what a shear moves into the field); and the field's rows and columns within them. None when the field
    is under 8 px across. ``fast_fft``: the margin grown to sizes the FFT does fast (:func:`slice_shear` transforms
    the stack 132 times along x and about 20 times along y; with whole 2-D transforms, 0.45 → 0.21 s for 20 slices
    of 116² px), for :func:`obj_shear_rule`, which only decides.
    The transfer keeps the tight stack: there the measured shear moves the slices every epoch, and on the mistilted
    development crystals the grown stack's slightly different shears ended 0.003–0.004 lower in r @ 20."""
    field = field_slices(model, int(math.ceil(max_walk * (model.n_slices - 1))) + 1, fast_fft=fast_fft)
    if field is None:
        return None
    stack, inner = field
    window = torch.zeros(stack.shape[-2:], dtype=torch.float64, device=model.device)
    window[inner] = hann(inner[0].stop - inner[0].start, inner[1].stop - inner[1].start, window)
    return stack, window, inner
