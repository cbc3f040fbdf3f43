"""The reconstructed phase against a ground-truth phase (rad, dataset frame, the model's pixel) over the scanned
field: the figures of merit that the run log, ``results.h5`` and the figures report."""
from __future__ import annotations

import numpy as np

#: per-epoch scalars that :func:`truth_metrics` adds to the loss history
TRUTH_METRICS = ("psnr", "ssim", "phase_error", "frc_resolution")


def scan_field(model, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Pixels of the dataset frame inside the bounding box of the probe centres (what a scan determines)."""
    return field_slices(model.dataset_positions().cpu().numpy() / np.asarray(model.sampling), shape)


def field_slices(positions_px: np.ndarray, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The pixels of an image of ``shape`` inside the bounding box of ``positions_px`` ((N, 2) probe centres in
    that image's pixels): the rows and columns a scan determines."""
    pos = np.asarray(positions_px, dtype=np.float64)
    lo = np.clip(np.floor(pos.min(0)).astype(int), 0, None)
    hi = np.minimum(np.ceil(pos.max(0)).astype(int) + 1, shape)
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))


def truth_field(model, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reconstructed phase (rad, dataset frame) and ``truth`` cropped to :func:`scan_field`."""
    truth = np.asarray(truth, dtype=np.float64)
    rec = model.phase_in_dataset_frame(truth.shape).astype(np.float64)
    t = truth[: rec.shape[0], : rec.shape[1]]
    fy, fx = scan_field(model, rec.shape)
    return rec[fy, fx], t[fy, fx]


def truth_metrics(model, truth: np.ndarray, curve: bool = False) -> dict:
    """PSNR, SSIM (after sub-pixel alignment and offset removal), E_φ and the FRC resolution (Å, 1/7 threshold)
    of the reconstructed phase against ``truth`` (rad, dataset frame, the model's pixel size), over the scanned
    field (:func:`phasestem.metrics.figures_of_merit`). ``curve``: also ``frc_frequencies`` (1/Å) and
    ``frc_curve``. A metric that cannot be computed on a field this small is NaN."""
    from ..metrics import figures_of_merit

    rec, t = truth_field(model, truth)
    out = figures_of_merit(rec, t, sampling=model.sampling, curve=curve)
    out.pop("shift_px")
    return out
