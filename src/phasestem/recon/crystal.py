"""Is the reconstructed object a crystal? The Bragg-peak share of its projected phase over the scanned field
(:func:`lattice_fraction`), and the two 'auto' rules keyed on it: positivity of the slices' phase
(``obj_clamp: auto``, :func:`obj_clamp_rule`) and the slice shear moved into the tilt (``obj_shear: auto``,
:func:`~phasestem.recon.shear.obj_shear_rule`)."""
from __future__ import annotations

import torch

from ..physics.experiment import scanned_field

#: a Bragg peak: a spectral pixel above this many times the median power of its annulus (for speckle, whose power
#: is exponentially distributed, a pixel passes with probability e^(−20 ln 2) ≈ 1e-6)
BRAGG_CONTRAST = 20.0
#: the lowest spatial frequency that counts, cycles across the field (below it: the field's own shape)
LATTICE_MIN_CYCLES = 3
#: the object is a crystal when at least this fraction of its projected phase's spectral power is in Bragg peaks.
#: Chosen on benchmarks/independent's development half after one epoch: its crystals (SrTiO3, mistilted or on a zone
#: axis) 0.80–0.83, its random-atom specimens 0.00–0.01
CRYSTAL_FRACTION = 0.3


def hann(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """A separable (h, w) Hann window of ``like``'s dtype and device."""
    return torch.outer(torch.hann_window(h, periodic=False, dtype=like.dtype, device=like.device),
                       torch.hann_window(w, periodic=False, dtype=like.dtype, device=like.device))


def field_slices(model, margin: int = 0, fast_fft: bool = False) -> tuple[torch.Tensor, tuple[slice, slice]] | None:
    """The object's phase slices (object modes weighted) over the scanned field and ``margin`` px around it,
    (S, h, w), and the field's rows and columns within them; None when the field is under 8 px across.
    ``fast_fft``: the margin grown, where the object holds it, until h and w are sizes the FFT does fast
    (:func:`fast_span`), for a caller that transforms the stack many times."""
    ny, nx = model.object_shape
    fy, fx = scanned_field(model.positions, model.sampling, (ny, nx))
    if fy.stop - fy.start < 8 or fx.stop - fx.start < 8:
        return None
    y0, x0 = max(0, fy.start - margin), max(0, fx.start - margin)
    y1, x1 = min(ny, fy.stop + margin), min(nx, fx.stop + margin)
    if fast_fft:
        (y0, y1), (x0, x1) = fast_span(y0, y1, ny), fast_span(x0, x1, nx)
    phase = model.obj_phase.detach()
    w = model.obj_weights.detach()
    w = (w / w.sum()).to(phase.dtype)
    stack = (w[:, None, None, None] * phase).sum(0)[:, y0:y1, x0:x1]
    return stack, (slice(fy.start - y0, fy.stop - y0), slice(fx.start - x0, fx.stop - x0))


def fast_span(start: int, stop: int, n: int) -> tuple[int, int]:
    """(start', stop') ⊇ (start, stop) within [0, n) whose length is the next size the FFT does fast (5-smooth,
    as ``scipy.fft.next_fast_len(…, real=True)``, whose cold import costs the run's first epoch 0.3 s), grown
    evenly on both sides where the bounds allow; (start, stop) when [0, n) is too short. A stack 118 px across
    (2 × 59) is transformed 2–4× slower than one of 120."""
    size = stop - start
    while not _smooth5(size):
        size += 1
    if size > n:
        return start, stop
    begin = min(max(0, start - (size - (stop - start)) // 2), n - size)
    return begin, begin + size


def _smooth5(n: int) -> bool:
    """Whether n > 0 has no prime factor above 5."""
    for f in (2, 3, 5):
        while n % f == 0:
            n //= f
    return n == 1


def lattice_fraction(image: torch.Tensor, window: torch.Tensor | None = None) -> float:
    """The fraction of an image's spectral power (beyond :data:`LATTICE_MIN_CYCLES` cycles across it) in Bragg
    peaks: pixels of the power spectrum above :data:`BRAGG_CONTRAST` × the median of their annulus. A crystal's
    projected potential puts most of its power there; independent atoms, whose spectrum is a speckle, almost none.
    ``image``: (H, W) real; ``window``: (H, W) weights (default: a Hann window)."""
    h, w = image.shape
    x = image.detach().double()
    win = hann(h, w, x) if window is None else window.to(x)
    x = win * (x - (x * win).sum() / win.sum())
    power = torch.fft.fft2(x).abs().square()
    cycles = torch.hypot(torch.fft.fftfreq(h, 1 / h, dtype=x.dtype, device=x.device)[:, None],
                         torch.fft.fftfreq(w, 1 / w, dtype=x.dtype, device=x.device)[None, :])
    ring = cycles.round().long()
    keep = ring >= LATTICE_MIN_CYCLES
    total = float(power[keep].sum())
    if not total > 0:
        return 0.0
    median = torch.zeros(int(ring.max()) + 1, dtype=x.dtype, device=x.device)
    for r in ring[keep].unique().tolist():
        median[r] = power[ring == r].median()
    peaks = keep & (power > BRAGG_CONTRAST * median[ring])
    return float(power[peaks].sum()) / total


def crystal_test(model, stack: torch.Tensor | None = None, inner: tuple[slice, slice] | None = None,
                 threshold: float = CRYSTAL_FRACTION) -> tuple[bool | None, str]:
    """(whether the object is a crystal, the measurement in words): :func:`lattice_fraction` of the projected phase
    over the scanned field ≥ ``threshold`` (default :data:`CRYSTAL_FRACTION`). None when the scanned field is under
    8 px across. ``stack``, ``inner``: :func:`field_slices`' result when the caller has it."""
    if stack is None:
        field = field_slices(model)
        if field is None:
            return None, "the scanned field is under 8 px across"
        stack, inner = field
    fraction = lattice_fraction(stack[(slice(None), *inner)].sum(0))
    words = (f"{fraction:.2f} of the projected phase's spectral power (beyond {LATTICE_MIN_CYCLES} cycles across the "
             f"scanned field) is in Bragg peaks (a crystal: {threshold:g} or more)")
    return fraction >= threshold, words


def obj_clamp_rule(model) -> tuple[bool, str]:
    """Whether ``obj_clamp: auto`` (the slices' phase held ≥ 0, the amplitude ≤ 1) turns on for this model now, and
    why: on for a multislice reconstruction of a crystal (:func:`crystal_test`).

    A specimen's potential is positive, so every slice's phase shift is. Through a thick crystal the beam channels
    along the columns, and from a flat start the solver settles in a wrong minimum whose summed phase never leaves
    ±π: rings of negative phase round the columns mimic the exit wave's wrapped phase (benchmarks/independent: on
    25 nm of SrTiO3 every tool's summed phase spans about ±3 rad where the truth reaches 44 rad; phasestem started
    at the truth stays there, r 0.997, at 0.35 × the loss of the minimum it finds from a flat start). Held ≥ 0 the
    slices cannot build those rings. Chosen on the development half: its crystals gain 0.11–0.20 in r, while held
    on every specimen a random-atom case lost 0.16 (and, run on the validation half, two more lost 0.01–0.26), so
    the rule keeps it to crystals."""
    if model.n_slices < 2:
        return False, "off: one slice (the positivity of separate slices is what the rule is for)"
    crystal, words = crystal_test(model)
    if not crystal:
        return False, f"off: {words}"
    return True, f"on: {words}: every slice's phase held ≥ 0 and its amplitude ≤ 1"
