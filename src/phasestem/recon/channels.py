"""The per-pixel images a restoring network reads beside a reconstruction's phase, in the dataset frame.

All three are (H, W) float32 on the model's object pixel, pixel (0, 0) at the dataset's 0 Å (the grid of
:meth:`~phasestem.recon.model.Ptychography.phase_in_dataset_frame`):

* :func:`amplitude_in_dataset_frame`: the object amplitude (product over slices, object modes weighted);
* :func:`illumination_map`: Σ_j Σ_m |P_m(r − r_j)|² over every position, divided by its maximum (0 … 1): where it
  is small the data say little about the object;
* :func:`field_mask`: 1 inside the scanned field (the rectangle spanned by the probe positions), else 0.

:func:`restorer_channels` gives all four of a model in memory, :func:`channels_from_results` the same of a finished
run's ``results.h5`` (``phasestem restore``), with the run's pixel and energy.
"""
from __future__ import annotations

import numpy as np
import torch

from .precondition import window_illumination

__all__ = ["amplitude_in_dataset_frame", "illumination_map", "field_mask", "restorer_channels",
           "channels_from_results"]


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
    illum, _ = window_illumination(model, index)
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


def _dataset_frame(plane: np.ndarray, origin_px: tuple[int, int]) -> np.ndarray:
    """An object-frame plane (Ny, Nx) cropped to the dataset frame (zeros before the object frame)."""
    oy, ox = origin_px
    ny, nx = plane.shape
    out = np.zeros((ny - oy, nx - ox), np.float32)
    sy, sx = max(0, -oy), max(0, -ox)
    out[sy:, sx:] = plane[oy + sy:, ox + sx:]
    return out


def _run_frame(attrs: dict, path) -> tuple[tuple[float, float], tuple[float, float]]:
    """(sampling, origin) of a results file's attributes: two finite pixel sizes > 0 (Å) and a finite origin (Å),
    else one line naming the file and the attribute."""
    from ..base.errors import InputFileError

    def pair(name: str) -> tuple[float, float]:
        try:
            values = tuple(float(v) for v in np.ravel(attrs[name]))
        except (KeyError, TypeError, ValueError):
            values = ()
        if len(values) != 2 or not all(np.isfinite(values)):
            raise InputFileError(f"{path}: attrs {name} {attrs.get(name)!r}; expected two finite numbers (y, x) in Å")
        return values

    sampling, origin = pair("sampling"), pair("origin")
    if min(sampling) <= 0:
        raise InputFileError(f"{path}: attrs sampling {list(sampling)} Å; expected two pixel sizes > 0 (a results "
                             "file of phasestem reconstruct)")
    return sampling, origin


def channels_from_results(path) -> tuple[dict[str, np.ndarray], dict]:
    """The :func:`restorer_channels` of a finished run from its ``results.h5``: (channels, {"sampling": (dy, dx)
    Å, "energy": eV, "origin_px": (oy, ox), "sigma": the σ map of the summed phase or None, "geometry": the optics
    the run recorded (:func:`phasestem.recon.results.optics_record`) or None for a file without the record}). The
    illumination uses the run's final probe and corrected positions, placed as the model places them (nearest whole
    pixel, the window's centre at the position)."""
    from ..physics.multislice import window_origins
    from .results import load_results

    r = load_results(path)
    sampling, origin = _run_frame(r["attrs"], path)
    origin_px = (round(origin[0] / sampling[0]), round(origin[1] / sampling[1]))
    phase = _dataset_frame(np.asarray(r["phase_sum"], np.float32), origin_px)
    amplitude = _dataset_frame(np.asarray(r["amplitude_prod"], np.float32), origin_px)
    probe = np.asarray(r["probe"])
    p_int = (np.abs(probe) ** 2).sum(0)  # (ny, nx)
    pos = np.asarray(r["positions"], np.float64)
    obj_px = torch.as_tensor((pos + np.asarray(origin)) / np.asarray(sampling))
    corners, _ = window_origins(obj_px, p_int.shape)
    Ny, Nx = r["phase_sum"].shape
    illum = np.zeros((Ny, Nx), np.float64)
    wy, wx = p_int.shape
    for cy, cx in corners.numpy():
        y0, x0, y1, x1 = max(cy, 0), max(cx, 0), min(cy + wy, Ny), min(cx + wx, Nx)
        if y1 > y0 and x1 > x0:
            illum[y0:y1, x0:x1] += p_int[y0 - cy:y1 - cy, x0 - cx:x1 - cx]
    illum /= max(float(illum.max()), 1e-30)
    illumination = _dataset_frame(illum.astype(np.float32), origin_px)
    channels = {"phase": phase, "amplitude": amplitude, "illumination": illumination,
                "field": field_mask(pos, sampling, phase.shape)}
    sigma = None  # the run's σ of the summed phase (run.uncertainty), when it has one; inf outside the scan
    if "uncertainty" in r:
        sigma = _dataset_frame(np.asarray(r["uncertainty"]["phase_sum_sigma"], np.float32), origin_px)
    return channels, {"sampling": sampling, "energy": float(r["attrs"]["energy"]), "origin_px": origin_px,
                      "sigma": sigma, "geometry": r.get("geometry")}
