"""The Phaseformer applied: a coarse phase image → the refined phase and its ×2 version.

``refine_file(image, model, out)`` (what ``phasestem refine`` runs) is made of :func:`read_phase_image`,
:func:`load_phaseformer`, :func:`refine_phase` and :func:`write_refined`. Model files are those written by the
shared trainer (``model.safetensors`` + ``meta``; the trainable wrapper's ``net.*`` weights or a bare
Phaseformer state_dict); a run folder (``best/`` then ``last/``) or a file may be given.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from ...base.errors import InputFileError, ShapeError
from ...base.safety import atomic_file, check_bad_pixel_mode, check_finite, mask_nonfinite
from ...physics.resample import resize
from ...plot import save_figure
from ..meta import require_kind
from ..nets.phaseformer import Phaseformer, PhaseformerConfig
from ..trainer.loop import load_weights, resolve_device

log = logging.getLogger("phasestem.learn")

__all__ = ["load_phaseformer", "read_phase_image", "refine_phase", "write_refined", "refine_file"]


def load_phaseformer(path: str | Path, device: str | None = None) -> tuple[Phaseformer, dict[str, Any]]:
    """(network in eval mode, meta) from a model file or run folder written by ``train phaseformer``.

    Accepts the trainable wrapper's ``net.*`` weights or a bare Phaseformer state_dict.
    """
    state, meta = load_weights(path)
    if meta:  # a bare state_dict file (no metadata) is taken as a default-size Phaseformer
        require_kind(meta, path, ("phaseformer",))
    net = Phaseformer(PhaseformerConfig.model_validate(meta["model"]["config"] if meta else {}))
    if any(k.startswith("net.") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    net.load_state_dict(state)
    return net.to(resolve_device(device or "auto")).eval(), meta


def read_phase_image(path: str | Path, key: str | None = None, bad_pixels: str = "refuse") -> np.ndarray:
    """A 2-D phase image from ``.npy``, ``.png``/``.tif`` or HDF5 (``key``, or ``phase``/the only 2-D dataset).

    NaN/Inf are refused naming the file, dataset and first bad pixel, or (``bad_pixels='mask'``) replaced by
    the median of their finite neighbours, with the count logged. Complex images are refused.
    """
    check_bad_pixel_mode(bad_pixels)
    path = Path(path)
    if path.is_dir():
        raise InputFileError(f"{path}: is a folder; expected a phase image file")
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    if path.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise InputFileError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())[:200]})") from None
        with f:
            if key is None:
                cands = [k for k in ("phase", "object_phase") if k in f]
                if not cands:
                    cands = [k for k, v in f.items() if isinstance(v, h5py.Dataset) and v.ndim == 2]
                if len(cands) != 1:
                    raise InputFileError(f"{path}: name the phase dataset with --key (2-D candidates: {cands})")
                key = cands[0]
            if key not in f:
                raise InputFileError(f"{path}: dataset '{key}' not found")
            if f[key].dtype.kind not in "biuf":
                raise InputFileError(f"{path}:{key}: {f[key].dtype} values; expected a real phase image (rad)")
            img = np.asarray(f[key], dtype=np.float32)
    else:
        from ..pairs import read_image

        img = read_image(path)
    img = np.squeeze(img)
    if img.ndim != 2:
        raise ShapeError(f"{path}: expected a 2-D phase image, got shape {img.shape}")
    source = f"{path}:{key}" if key else str(path)
    if bad_pixels == "refuse":
        check_finite(img, source, what="pixel")
    elif (n := mask_nonfinite(img)):
        log.warning("%s: replaced %d non-finite pixels by the median of their finite neighbours", source, n)
    return img


@torch.no_grad()
def refine_phase(net: Phaseformer, phase: np.ndarray, size: int | None = 256) -> tuple[np.ndarray, np.ndarray]:
    """Coarse phase (H, W) → (refined (S, S), refined ×2 (2S, 2S)), S = ``size`` (bilinear resize first).

    ``size=None`` keeps the input size (padded by reflection to a multiple of 8, cropped back).
    """
    dev = next(net.parameters()).device
    x = torch.as_tensor(np.asarray(phase, np.float32))[None, None].to(dev)
    if size is not None:
        x = resize(x, (size, size))
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    out_l, out_h = net(x)
    return (out_l[0, 0, :h, :w].float().cpu().numpy(), out_h[0, 0, :2 * h, :2 * w].float().cpu().numpy())


def write_refined(path: str | Path, low: np.ndarray, high: np.ndarray, attrs: dict[str, Any] | None = None,
                  png: str | Path | None = None, coarse: np.ndarray | None = None) -> Path:
    """HDF5 with ``phase`` (S, S) and ``phase_x2`` (2S, 2S) in rad (+ a PNG comparison when ``png``)."""
    path = Path(path)
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("phase", data=low.astype(np.float32))
        f.create_dataset("phase_x2", data=high.astype(np.float32))
        f.attrs["format"] = "phasestem-refined-phase"
        f.attrs["units"] = "rad"
        for k, v in (attrs or {}).items():
            f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v, default=str)
    if png is not None:
        from ...plot import phase_panels

        imgs = ({"coarse input": coarse} if coarse is not None else {}) | {
            f"refined {low.shape[0]}²": low, f"refined ×2 {high.shape[0]}²": high}
        save_figure(phase_panels(imgs, share_range=False), png, close=True)
    return path



def refine_file(image: str | Path, model_path: str | Path, out: str | Path | None = None, png: bool = True,
                device: str = "auto", size: int | None = 256, key: str | None = None, bad_pixels: str = "refuse"
                ) -> dict[str, Any]:
    """Coarse phase image → HDF5 with the Phaseformer's refined phase and its ×2 version (+ a comparison PNG);
    ``size`` None or 0 keeps the input size. Returns ``out``, ``png``, ``shape`` and ``shape_x2``."""
    from ...base.lock import hold_output
    from ...base.safety import check_result_name, figure_beside, refuse_output_over_inputs

    out = Path(out or Path(image).with_suffix("").name + "_refined.h5")
    png_path = figure_beside(out) if png else None
    check_result_name(out)  # a figure suffix is refused, with or without the PNG
    refuse_output_over_inputs([p for p in (out, png_path) if p], [image, model_path])
    with hold_output(out, "phasestem refine", file=True):
        coarse = read_phase_image(image, key, bad_pixels=bad_pixels)
        net, _ = load_phaseformer(model_path, device)
        low, high = refine_phase(net, coarse, size or None)
        write_refined(out, low, high, {"source": str(image), "checkpoint": str(model_path)}, png=png_path,
                      coarse=coarse)
    return {"out": out, "png": png_path, "shape": low.shape, "shape_x2": high.shape}
