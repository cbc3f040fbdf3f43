"""The per-pixel images a restoring network reads beside a reconstruction's phase, in the dataset frame.

All three are (H, W) float32 on the model's object pixel, pixel (0, 0) at the dataset's 0 Å (the grid of
:meth:`~phasestem.recon.model.Ptychography.phase_in_dataset_frame`):

* :func:`amplitude_in_dataset_frame`: the object amplitude (product over slices, object modes weighted);
* :func:`illumination_map`: Σ_j Σ_m |P_m(r − r_j)|² over every position, divided by its maximum (0 … 1): where it
  is small the data say little about the object;
* :func:`field_mask`: 1 inside the scanned field (the rectangle spanned by the probe positions), else 0.
"""
from __future__ import annotations

import numpy as np
import torch

from .precondition import _illumination

__all__ = ["amplitude_in_dataset_frame", "illumination_map", "field_mask", "restorer_channels"]


@torch.no_grad()
def amplitude_in_dataset_frame(model, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Object amplitude Π_s a_s (object modes occupancy-weighted), (H, W) float32 in the dataset frame."""
    a = model.obj_amplitude.detach().cpu().prod(1)  # (K, Ny, Nx)
    w = model.obj_weights.detach().cpu()
    a = (a * (w / w.sum())[:, None, None]).sum(0)
    return model.experiment.in_dataset_frame(a, shape).numpy().astype(np.float32)


@torch.no_grad()
def illumination_map(model, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Σ_j Σ_m |P_m(r − r_j)|² over every scan position (current probe and positions) ÷ its maximum, (H, W)
    float32 in the dataset frame."""
    index = torch.arange(model.positions.shape[0], device=model.positions.device)
    illum, _ = _illumination(model, index)
    illum = illum.detach().cpu().float()
    illum = illum / illum.max().clamp_min(1e-30)
    return model.experiment.in_dataset_frame(illum, shape).numpy().astype(np.float32)


def field_mask(positions: np.ndarray, sampling: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """1 where a pixel (i·dy, j·dx) Å lies within the rectangle spanned by ``positions`` (N, 2) Å, else 0:
    (H, W) float32."""
    pos = np.asarray(positions, np.float64).reshape(-1, 2)
    lo, hi = pos.min(0), pos.max(0)
    y = np.arange(shape[0]) * sampling[0]
    x = np.arange(shape[1]) * sampling[1]
    iny = (y >= lo[0] - 1e-6) & (y <= hi[0] + 1e-6)
    inx = (x >= lo[1] - 1e-6) & (x <= hi[1] + 1e-6)
    return (iny[:, None] & inx[None, :]).astype(np.float32)


def restorer_channels(model, dataset) -> dict[str, np.ndarray]:
    """``phase``, ``amplitude``, ``illumination`` and ``field`` of ``model`` (each (H, W) float32, one grid:
    the dataset frame at the object pixel) — what :mod:`phasestem.learn` restorers read."""
    phase = model.phase_in_dataset_frame().astype(np.float32)
    shape = phase.shape
    return {"phase": phase, "amplitude": amplitude_in_dataset_frame(model, shape),
            "illumination": illumination_map(model, shape),
            "field": field_mask(np.asarray(dataset.positions_angstrom()), tuple(model.sampling), shape)}
