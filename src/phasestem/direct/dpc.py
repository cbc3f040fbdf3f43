"""DPC and iDPC: the phase from the centre of mass of the patterns by Fourier integration.

For a thin specimen the CoM of a pattern is (1/2π)·⟨∇φ⟩ over the probe intensity (Ehrenfest), so
the integrated CoM field is φ convolved with the probe intensity.
"""
from __future__ import annotations

import numpy as np

from .frame import PhaseImage, scan_map, to_dataset_frame
from .integrate import integrate_gradient


def gradient_field(dataset) -> np.ndarray:
    """∇φ over the scan indices (Sy, Sx, 2), rad per index, from a calibrated dataset (phasestem frame)."""
    return gradient_from_com(dataset.center_of_mass(), dataset)


def gradient_from_com(com_px: np.ndarray, dataset) -> np.ndarray:
    """∇φ over the scan indices (…, 2), rad per index, from the patterns' centres of mass ``com_px`` (…, 2) px
    about (H//2, W//2) and ``dataset``'s calibration and scan (a live scan's rows so far, :mod:`phasestem.live`)."""
    from ..physics.optics import wavelength

    dk = np.asarray(dataset.angular_sampling) * 1e-3 / wavelength(dataset.energy)  # Å⁻¹ per px
    grad_obj = 2 * np.pi * com_px * dk  # rad / Å
    L, _ = scan_map(dataset)
    return grad_obj @ L  # (L^T ∇φ) per row


def dpc_phase(dataset, sampling: tuple[float, float] | None = None, regularization: float = 1e-3) -> PhaseImage:
    """iDPC phase (rad) of a calibrated dataset, in the dataset frame at ``sampling`` Å (default the
    reconstruction pixel)."""
    g = gradient_field(dataset)
    phi = integrate_gradient(g[..., 0], g[..., 1], regularization=regularization)
    sampling = tuple(dataset.sampling) if sampling is None else sampling
    return PhaseImage(to_dataset_frame(phi, dataset, sampling), sampling, "dpc", phi)
