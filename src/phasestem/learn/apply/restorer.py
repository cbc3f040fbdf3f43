"""Loading a trained restorer for data of one geometry, and applying it to a reconstruction.

:func:`load_restorer`: a restorer model (file or run folder, or a shipped name of :mod:`phasestem.learn.
pretrained`) read with safe loading (:func:`phasestem.learn.registry.load_model`: safetensors / ``weights_only``;
a corrupted file is one line), refused in one line for data of another geometry: energy, semi-angle, aberrations,
detector pixel and scan step (:func:`phasestem.learn.apply.phase.check_training_optics`) and AD's pixel.
:func:`check_geometry`: the one check of a run's recorded optics against a restorer's card, for ``restore`` and
``reconstruct --prior``.
:func:`restore_channels`: the restored phase from the channels of :func:`phasestem.recon.channels.restorer_channels`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...base.errors import InputFileError, ShapeError

__all__ = ["load_restorer", "check_pixel", "check_geometry", "check_upsampled_pixel", "restore_channels"]

log = logging.getLogger("phasestem.learn")


def check_geometry(meta: dict[str, Any], geometry: dict[str, Any] | None, model: str, run: str,
                   trust: bool = False, known: dict[str, Any] | None = None) -> None:
    """Refuse, in one line naming the quantity, the run's value and the trained value, a run whose optics
    (``geometry``: energy, semi-angle, aberrations, detector sampling, scan step, pixel; results.h5's ``geometry``
    group) differ from the restorer ``model``'s card beyond :data:`~phasestem.learn.apply.phase.OPTICS_TOLERANCE`
    (1 % energy, step, pixel; 2 % semi-angle and detector sampling; 2 % + 1 Å aberrations). A run without the
    record (None) is refused unless ``trust`` (the user vouches; a warning, and only ``known``, e.g. its energy and
    pixel, is checked). A quantity the card lacks is not checked (one log line). A run on pixels finer than its
    detector's (``model.upsampling``) is refused by a restorer trained at another pixel with the reason
    (:func:`check_upsampled_pixel`)."""
    from .phase import OPTICS_TOLERANCE, check_training_optics

    if geometry is None:
        if not trust:
            raise InputFileError(f"{run}: records no geometry (the optics of the run, which phasestem reconstruct now "
                                 f"writes), so {model} cannot be checked against it: rerun reconstruct, or "
                                 "pass --trust-geometry to vouch that the run matches the model's card")
        log.warning("%s records no geometry; --trust-geometry: only %s checked against %s", run,
                    ", ".join(known or {}) or "nothing", model)
        geometry = dict(known or {})
    card = (meta.get("data") or {}).get("optics") or {}
    lacks = [key for key in OPTICS_TOLERANCE if card.get(key) in (None, {}, [])]
    if lacks:
        log.info("%s: its card records no %s: not checked", model, ", ".join(lacks))
    check_upsampled_pixel(meta, geometry, model)
    check_training_optics(meta, geometry, model)


def check_upsampled_pixel(meta: dict[str, Any], geometry: dict[str, Any], model: str) -> None:
    """Refuse, saying why, a run reconstructed on pixels ``upsampling`` times finer than its detector's (recorded in
    ``geometry``) whose pixel is not the card's. Not resampled onto the card's pixel: the network learned to restore
    AD phases at that pixel, whose band stopped at its 2/3 Nyquist; a finer run's phase carries the probe's whole
    band, so resampled it would be an input unlike any the network was trained on."""
    from .phase import OPTICS_TOLERANCE

    u = int(geometry.get("upsampling") or 1)
    trained = ((meta.get("data") or {}).get("optics") or {}).get("sampling")
    have = geometry.get("sampling")
    rel = OPTICS_TOLERANCE["sampling"][0]
    if u <= 1 or not trained or not have or all(abs(a - b) <= rel * abs(b) for a, b in zip(have, trained,
                                                                                          strict=True)):
        return
    raise ShapeError(f"{model}: the run reconstructed on pixels of {have[0]:.4g} Å, {u} × finer than its detector's "
                     f"{have[0] * u:.4g} Å (model.upsampling {u}, so that the probe's band is not truncated): pixel "
                     f"{have[0]:.4g} Å (trained on {trained[0]:.4g} Å); the network restores AD phases of its own "
                     "pixel only: rerun reconstruct with model.upsampling: 1 to restore with it, or train a restorer "
                     "on runs at this pixel")


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
    from ..pretrained import resolve
    from ..registry import load_model
    from .phase import check_training_optics, dataset_optics

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
