"""Loading a trained restorer for data of one geometry, and applying it to a reconstruction.

:func:`load_restorer`: a restorer model (file or run folder, or a shipped name of :mod:`phasestem.learn.
pretrained`) read with safe loading (:func:`phasestem.learn.registry.load_model`: safetensors / ``weights_only``;
a corrupted file is one line), refused in one line for data of another geometry: energy, semi-angle, aberrations,
detector pixel and scan step (:func:`phasestem.learn.apply.phase.check_training_optics`) and AD's pixel.
:func:`restore_channels`: the restored phase from the channels of :func:`phasestem.recon.channels.restorer_channels`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.errors import ShapeError

__all__ = ["load_restorer", "check_pixel", "restore_channels"]


def check_pixel(meta: dict[str, Any], sampling: tuple[float, float], source: str = "", rel: float = 0.01) -> None:
    """Refuse, in one line, a reconstruction pixel (Å) other than the one the restorer was trained at."""
    trained = ((meta.get("data") or {}).get("optics") or {}).get("sampling")
    if not trained:
        return
    if any(abs(a - b) > rel * abs(b) for a, b in zip(sampling, trained, strict=True)):
        where = f"{source}: " if source else ""
        raise ShapeError(f"{where}the reconstruction's pixel {sampling[0]:.4g}×{sampling[1]:.4g} Å differs from the "
                         f"restorer's training pixel {trained[0]:.4g}×{trained[1]:.4g} Å (train one for this "
                         "geometry)")


def load_restorer(path: str | Path, dataset=None, sampling: tuple[float, float] | None = None,
                  device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """(restorer in eval mode on ``device``, meta); with ``dataset`` / ``sampling`` (Å) the geometry is checked."""
    from .apply.phase import check_training_optics, dataset_optics
    from .pretrained import resolve
    from .registry import load_model

    resolved = resolve(path) or Path(path)
    net, meta = load_model(resolved, kinds=("restorer",))
    if dataset is not None:
        check_training_optics(meta, dataset_optics(dataset), str(path))
    if sampling is not None:
        check_pixel(meta, tuple(float(s) for s in sampling), str(path))
    return net.to(device), meta


@torch.no_grad()
def restore_channels(net: torch.nn.Module, channels: dict[str, np.ndarray]) -> np.ndarray:
    """The restored phase (H, W) float32 rad from ``channels`` (``phase`` and the net's extra channels)."""
    names = ("phase", *net.config.extra_channels)
    p = next(net.parameters())
    x = torch.as_tensor(np.stack([channels[c] for c in names]).astype(np.float32))[None].to(p)
    return net(x)[0, 0].float().cpu().numpy()
