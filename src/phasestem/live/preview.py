"""The restorer's preview of the growing AD phase (``phasestem live --preview MODEL``), where the model fits.

A restorer (:mod:`phasestem.learn.nets.restorer`; a file, run folder or shipped name) is checked against the
stream's optics with the one geometry check of ``restore`` and ``reconstruct --prior``
(:func:`phasestem.learn.apply.restorer.check_geometry`): a model trained for other optics gives no preview, and
the snapshot (``preview_note``) and the log say why; the acquisition goes on. Where it fits, the snapshot carries
``restored_phase`` (serve's Live page does not draw it yet): the network's restoration of the AD phase so far over
the scanned field (dataset frame, NaN outside the field, reduced like the other images). A restoration costs a
forward pass of the network, so it is made at most once every :data:`MIN_INTERVAL` s and never more than a tenth
of the time; it is a preview, without the data's guard (``phasestem restore`` on the finished ``results.h5`` gives
the guarded restoration).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from ..base.errors import PhasestemError

log = logging.getLogger("phasestem.live")

#: seconds between two restorations, at least (and at least ten times what one takes)
MIN_INTERVAL = 5.0


class RestorerPreview:
    """``model_path``'s restoration of a live model's phase (see the module); ``dataset``: the live scan's."""

    def __init__(self, model_path: str, dataset, model):
        from ..learn.apply.restorer import check_geometry, load_restorer

        self.name, self.dataset = str(model_path), dataset
        self.net, meta = load_restorer(model_path, device=str(model.device))
        check_geometry(meta, model.optics_record, self.name, "the stream")  # the record results.h5 will hold
        self.cost, self.last = 0.0, -np.inf
        self.image: np.ndarray | None = None
        self.note = f"restorer preview: {self.name} (no guard while streaming)"

    def due(self) -> bool:
        return time.perf_counter() - self.last >= max(MIN_INTERVAL, 10 * self.cost)

    def __call__(self, model, max_side: int) -> np.ndarray:
        """The restored phase over the scanned field (h, w) float32, reduced to ``max_side`` pixels a side."""
        from ..learn.apply.phase import check_finite_prediction
        from ..learn.apply.restorer import restore_channels
        from ..recon.channels import restorer_channels
        from ..recon.live import block_mean

        t0 = time.perf_counter()
        channels = restorer_channels(model, self.dataset)
        restored = restore_channels(self.net, channels)
        check_finite_prediction(restored, self.name, f"the live phase after update {model.epoch}")
        inside = channels["field"] > 0
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        image = np.where(inside, restored, np.nan)[box].astype(np.float32)
        self.image = block_mean(image, max_side)[0]
        self.last, self.cost = time.perf_counter(), time.perf_counter() - t0
        return self.image


def make_preview(model_path: str | None, dataset, model) -> tuple[RestorerPreview | None, str]:
    """(the preview, or None; the line the snapshot and the log carry about it)."""
    if model_path is None:
        return None, ""
    try:
        preview = RestorerPreview(model_path, dataset, model)
    except PhasestemError as exc:
        note = f"no restorer preview: {exc}"
        log.warning("%s", note)
        return None, note
    log.info("%s", preview.note)
    return preview, preview.note
