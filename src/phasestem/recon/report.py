"""What ``phasestem reconstruct`` reports besides its own loss.

* :func:`system_info` — the block at the top of ``reconstruct.log`` (versions, device, threads, host);
* :func:`dataset_ptyrad_loss` — PtyRAD's normalised Gaussian loss over all patterns
  (:func:`phasestem.recon.losses.ptyrad_gaussian_loss`), logged per epoch as ``loss_ptyrad``;
* :func:`load_ground_truth` and :func:`truth_metrics` — PSNR, SSIM, E_φ and the FRC resolution of the
  reconstructed phase against a ground-truth phase stored in the data file (``data.ground_truth_key``),
  per epoch in the log and the loss history, and at the end in ``results.h5`` (``metrics/``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import platform
import socket
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import InputFileError, ShapeError

log = logging.getLogger("phasestem.recon")

#: per-epoch scalars that :func:`truth_metrics` adds to the loss history
TRUTH_METRICS = ("psnr", "ssim", "phase_error", "frc_resolution")


# ---- system information --------------------------------------------------------------------
def system_info(device: str | torch.device = "cpu") -> dict[str, str]:
    """Versions, device, threads and host of this run (strings, in a fixed order)."""
    from .. import __version__

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        name = f"{dev} ({torch.cuda.get_device_name(idx)}, CUDA {torch.version.cuda})"
    else:
        name = str(dev)
    return {
        "phasestem": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": name,
        "cuda available": str(torch.cuda.is_available()),
        "torch threads": str(torch.get_num_threads()),
        "hostname": socket.gethostname(),
    }


@contextlib.contextmanager
def logging_to(log_path: str | Path):
    """Send the ``phasestem.recon`` log (INFO and up) to ``log_path`` too, in the run log's line format."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    old_level = log.level
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(old_level)


def log_system_info(log_path: str | Path, device: str | torch.device = "cpu") -> None:
    """Append the system-information block to ``log_path`` (the run log)."""
    with logging_to(log_path):
        info = system_info(device)
        width = max(len(k) for k in info)
        log.info("system information:")
        for k, v in info.items():
            log.info("  %s %s", f"{k}:".ljust(width + 1), v)


# ---- PtyRAD's loss ---------------------------------------------------------------------------
def dataset_ptyrad_loss(model, dataset, power: float = 0.5, batch_size: int = 64) -> float:
    """√⟨(I_model^p − I_meas^p)²⟩ / ⟨I_meas^p⟩ over all patterns and pixels with the current model (no gradients;
    intensities in the engine's normalised units, which the ratio does not depend on): the formula of
    :func:`phasestem.recon.losses.ptyrad_gaussian_loss`, accumulated batch by batch."""
    from .engine import prepared_data

    data = prepared_data(model, dataset, power)
    sq, dp, n_px = 0.0, 0.0, 0
    with torch.no_grad():
        for idx in torch.arange(data.n, device=model.device).split(max(1, int(batch_size))):
            inten = model(idx)
            meas = data.meas[idx]
            mp, mq = inten.clamp_min(0).pow(power), meas.clamp_min(0).pow(power)
            sq += float((mp - mq).square().sum())
            dp += float(mq.sum())
            n_px += mq.numel()
    return math.sqrt(sq / n_px) / max(dp / n_px, 1e-30)


# ---- ground truth ----------------------------------------------------------------------------
def load_ground_truth(path: str | Path, key: str) -> np.ndarray:
    """The ground-truth phase (rad, 2-D, dataset frame) stored under ``key`` in the data file ``path``.

    Raises :class:`InputFileError` with one line naming ``data.ground_truth_key`` when it is missing."""
    from .model import load_phase_image

    try:
        return load_phase_image(path, key)
    except (InputFileError, ShapeError) as exc:
        msg = str(exc).replace("initial phase", "ground truth")
        raise type(exc)(f"data.ground_truth_key: {msg}") from None


def scan_field(model, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Pixels of the dataset frame inside the bounding box of the probe centres (what a scan determines)."""
    pos = model.dataset_positions().cpu().numpy() / np.asarray(model.sampling)
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


def final_metrics(model, truth: np.ndarray, name: str, log_path: str | Path | None = None) -> dict:
    """:func:`truth_metrics` with the FRC curve, logged in one line (also to ``log_path``)."""
    metrics = truth_metrics(model, truth, curve=True)
    with logging_to(log_path) if log_path is not None else contextlib.nullcontext():
        log.info("final comparison with %s: %s", name,
                 " ".join(f"{k}={metrics[k]:.4g}" for k in TRUTH_METRICS))
    return metrics


def epoch_reporter(dataset, truth: np.ndarray | None = None, ptyrad_loss: bool = True, power: float = 0.5,
                   batch_size: int = 64):
    """A :attr:`Ptychography.epoch_callbacks` entry: adds ``loss_ptyrad`` and (with ``truth``) the
    :data:`TRUTH_METRICS` to each epoch's record and logs them in one line."""

    def report(model, record: dict) -> None:
        values: dict[str, float] = {}
        if ptyrad_loss:
            values["loss_ptyrad"] = dataset_ptyrad_loss(model, dataset, power, batch_size)
        if truth is not None:
            values.update(truth_metrics(model, truth))
        record.update(values)
        if values:
            log.info("epoch %d %s", record["epoch"], " ".join(f"{k}={v:.4g}" for k, v in values.items()))

    return report
