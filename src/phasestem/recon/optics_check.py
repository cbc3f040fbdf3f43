"""A cheap look at whether the nominal optics fit the data before the full run starts.

The commonest wrong setup is a flipped defocus sign (abTEM's and py4DSTEM's ``defocus`` is
−C10): the probe's intensity, and so every figure of it, is the same for ±C10, the loss is
only several times higher, and the reconstruction is meaningless. :func:`check_defocus_sign`
fits a small compact block of the scan for a few epochs with C10 and with −C10 and reports
which fits the patterns better.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from ..physics.optics import Aberrations

log = logging.getLogger("phasestem.recon")

#: the flipped sign is reported when its data error is this many times lower than the given sign's
FLIP_FACTOR = 1.5


@dataclass
class SignCheck:
    """Losses of the short fits with the given C10 and with −C10."""

    c10: float
    loss_given: float
    loss_flipped: float

    @property
    def flipped_fits_better(self) -> bool:
        return self.loss_flipped * FLIP_FACTOR < self.loss_given

    def message(self) -> str:
        return (f"the data fit C10 = {-self.c10:g} Å far better than the given C10 = {self.c10:g} Å (data error "
                f"{self.loss_flipped:.3g} vs {self.loss_given:.3g} after a short fit of the scan centre): the defocus "
                "sign is probably flipped. abTEM's and py4DSTEM's 'defocus' is −C10; in optics.aberrations give "
                f"C10: {-self.c10:g} (or tune C10 with both signs).")


def _central_block(dataset, n: int):
    """The central n × n positions of the scan (or the whole scan when it is smaller)."""
    sy, sx = dataset.scan_shape
    ny, nx = min(n, sy), min(n, sx)
    y0, x0 = (sy - ny) // 2, (sx - nx) // 2
    return dataset.scan_subset(slice(y0, y0 + ny), slice(x0, x0 + nx))


def check_defocus_sign(dataset, build, n_epochs: int = 3, block: int = 8, min_c10: float = 5.0,
                       **optimize_options) -> SignCheck | None:
    """Fit the central ``block`` × ``block`` positions with C10 and −C10 for ``n_epochs`` each.

    ``build(dataset)`` returns a fresh model for a dataset (the run's own settings); the dataset's
    aberrations are swapped for the flipped fit. Returns None when |C10| < ``min_c10`` Å (no sign to
    get wrong) or the fits fail.
    """
    from .engine import DivergenceError, optimize_with_options

    c10 = Aberrations.from_dict(dataset.aberrations).get("C10")
    if abs(c10) < min_c10:
        return None
    sub = _central_block(dataset, block)
    losses = []
    for sign in (1, -1):
        ab = {k: v for k, v in (dataset.aberrations or {}).items() if k != "defocus"}
        ab["C10"] = sign * c10
        ds = sub._replace(aberrations=ab)
        model = build(ds)
        try:
            # every epoch on the full detector (no coarse start): the check compares the two signs' fits of it
            options = {**optimize_options, "progress": False, "coarse_start": 0}
            for _ in optimize_with_options(model, ds, n_epochs, **options):
                pass
        except DivergenceError:
            losses.append(math.inf)
            continue
        last = model.loss_history[-1] if model.loss_history else {}
        losses.append(float(last.get("gaussian", last.get("loss", math.inf))))
    if not all(math.isfinite(v) for v in losses):
        return None
    return SignCheck(c10, losses[0], losses[1])
