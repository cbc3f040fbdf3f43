"""Reconstruction results in HDF5 (no pickle), written atomically.

Layout of ``results.h5``::

    object/phase            (K, S, Ny, Nx) float32  rad, per object mode and slice
    object/amplitude        (K, S, Ny, Nx) float32
    object/phase_sum        (Ny, Nx)       float32  Σ over slices, occupancy-weighted over modes
    object/amplitude_prod   (Ny, Nx)       float32  Π over slices, occupancy-weighted over modes
    object/weights          (K,)                    object-mode occupancies
    probe/real_space        (M, ny, nx)    complex64  (Σ|ψ|² ≈ 1)
    probe/fourier_space     (M, ny, nx)    complex64  fftshift-ed spectrum
    positions               (N, 2)  Å  dataset frame (corrected)
    positions_initial       (N, 2)  Å  dataset frame (start)
    tilt                    (2,) or (N, 2)  mrad
    slice_thickness         ()  Å
    loss/<name>             (E,)  per-epoch history (loss, seconds, gaussian, …)
    attrs: sampling (Å), energy (eV), origin (Å: object-frame position of dataset 0 Å),
           epoch, format = "phasestem-recon-results", config (YAML text, when given)
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

FORMAT = "phasestem-recon-results"


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def save_results(model, path, config_text: str | None = None) -> Path:
    """Write the model's results to ``path`` (``name.tmp`` then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    w = _np(model.obj_weights).astype(np.float64)
    w = w / w.sum()
    phase = _np(model.obj_phase)
    amp = _np(model.obj_amplitude)
    probe = _np(model.get_probe())
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["sampling"] = model.sampling
        f.attrs["energy"] = model.energy
        f.attrs["origin"] = model.origin
        f.attrs["epoch"] = model.epoch
        if config_text:
            f.attrs["config"] = config_text
        g = f.create_group("object")
        g.create_dataset("phase", data=phase.astype(np.float32), compression="gzip")
        g.create_dataset("amplitude", data=amp.astype(np.float32), compression="gzip")
        g.create_dataset("phase_sum", data=(phase.sum(1) * w[:, None, None]).sum(0).astype(np.float32))
        g.create_dataset("amplitude_prod", data=(amp.prod(1) * w[:, None, None]).sum(0).astype(np.float32))
        g.create_dataset("weights", data=w.astype(np.float32))
        p = f.create_group("probe")
        p.create_dataset("real_space", data=probe.astype(np.complex64))
        spec = np.fft.fftshift(np.fft.fft2(probe, norm="ortho"), axes=(-2, -1))
        p.create_dataset("fourier_space", data=spec.astype(np.complex64))
        f.create_dataset("positions", data=_np(model.dataset_positions()))
        f.create_dataset("positions_initial", data=_np(model.initial_positions) - np.asarray(model.origin))
        f.create_dataset("tilt", data=_np(model.tilt))
        f.create_dataset("slice_thickness", data=float(model.slice_thickness.detach()))
        lg = f.create_group("loss")
        keys = sorted({k for h in model.loss_history for k in h})
        for k in keys:
            lg.create_dataset(k, data=np.array([h.get(k, np.nan) for h in model.loss_history], dtype=np.float64))
    os.replace(tmp, path)
    return path


def load_results(path) -> dict:
    """Read a results file back into a dict of arrays (``object/phase`` → ``obj_phase`` etc.)."""
    from ..errors import InputFileError

    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: results file not found")
    out: dict = {}
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise InputFileError(f"{path}: not a phasestem reconstruction results file (attr format={FORMAT!r})")
        out["attrs"] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f.attrs.items()}
        out["obj_phase"] = f["object/phase"][...]
        out["obj_amplitude"] = f["object/amplitude"][...]
        out["phase_sum"] = f["object/phase_sum"][...]
        out["probe"] = f["probe/real_space"][...]
        out["probe_fourier"] = f["probe/fourier_space"][...]
        for k in ("positions", "positions_initial", "tilt", "slice_thickness"):
            out[k] = f[k][...]
        out["loss"] = {k: f["loss"][k][...] for k in f["loss"]}
    return out
