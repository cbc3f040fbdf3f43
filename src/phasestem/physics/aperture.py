"""The nominal probe's aperture taken from the measured bright-field disk.

A real condenser aperture has a sharp edge, but partial coherence, the detector's point spread
and the finite probe window blur the disk that the detector records, so neither a hard nor a
soft model edge is right by assumption. :func:`measured_aperture` takes the aperture amplitude
from the data instead: the square root of the position-averaged pattern (PACBED) inside the
nominal disk plus a margin, less the diffuse background just outside it. The aberration phase
still comes from the nominal optics (the PACBED carries no phase).
"""
from __future__ import annotations

import numpy as np
import torch

from ..base.errors import PhasestemError

#: aperture models of the nominal probe: a hard edge, a one-pixel linear roll-off, or the measured disk
APERTURE_EDGES = ("soft", "hard", "measured")


def measured_aperture(mean_pattern: np.ndarray, radius_px: float, margin_px: float = 2.0) -> torch.Tensor:
    """Aperture amplitude (ny, nx), fftfreq order, from a PACBED (ny, nx) with zero frequency at (ny//2, nx//2).

    ``radius_px``: the nominal disk radius in detector pixels (semi-angle / angular sampling). The
    amplitude is √(PACBED − background) within ``radius_px + margin_px`` and 0 beyond; the background
    is the median of the ring 2–6 px further out. Raises :class:`PhasestemError` when the data hold no
    bright-field disk there (dark or vacuum-free data, or a wrong angular sampling).
    """
    pac = np.asarray(mean_pattern, dtype=np.float64)
    ny, nx = pac.shape
    y = np.arange(ny) - ny // 2
    x = np.arange(nx) - nx // 2
    r = np.hypot(y[:, None], x[None, :])
    inside = r <= radius_px + margin_px
    ring = (r > radius_px + margin_px + 2) & (r <= radius_px + margin_px + 6)
    background = float(np.median(pac[ring])) if ring.any() else 0.0
    disk = r <= max(radius_px - 1.0, 0.5)
    if not disk.any() or not np.isfinite(pac).all() or pac[disk].mean() <= 4 * max(background, 0.0) + 1e-30:
        raise PhasestemError(
            f"optics.aperture_edge: measured: no bright-field disk of radius {radius_px:.1f} px stands out of the "
            "mean pattern (check optics.semiangle and the angular sampling, or use aperture_edge: soft)")
    amp = np.sqrt(np.clip(pac - background, 0.0, None)) * inside
    return torch.as_tensor(np.fft.ifftshift(amp / amp.max()))
