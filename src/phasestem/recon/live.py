"""Epoch snapshots of a running reconstruction: ``OUT/live.npz``, what the live page of ``phasestem serve`` shows.

After every epoch the run (rank 0) replaces ``OUT/live.npz`` atomically (:func:`phasestem.base.safety.atomic_file`),
so a reader always finds a whole file. It holds, small by design (at most ≈ 0.45 MB: images of ≤ 192² pixels):

    epoch, n_epochs          ()      completed epochs, epochs the run will reach
    loss, seconds            (E,)    mean total loss and wall time (s) of each epoch so far
    object_phase             (h, w)  float32 rad, the summed object phase over the scanned field (the probe
                                     centres' bounding box, as in reconstruction.png), block-averaged to at most
                                     :data:`MAX_SIDE` pixels a side
    probe                    (h, w)  complex64, the first probe mode, likewise reduced
    sampling                 (2,)    Å per pixel of object_phase (after the reduction)
    probe_sampling           (2,)    Å per pixel of probe (after its reduction)
    phase_sigma              (h, w)  float32 rad, the standard deviation of object_phase (NaN where the data
                                     constrain nothing), likewise reduced; only once run.uncertainty has computed it
                                     (the snapshot written after the last epoch)
    gpu_memory               ()      peak bytes allocated on the run's CUDA device (-1 on CPU)
    time                     ()      when it was written (s since the epoch)

A live run of a detector stream (:mod:`phasestem.live`) adds its counters, state and virtual images, and while
it streams counts ``epoch``/``loss`` in whole scans' worth of its updates
(:meth:`phasestem.live.feed.StreamFeed.write_snapshot`).
"""
from __future__ import annotations

import logging
import math
import time
import zipfile
from pathlib import Path

import numpy as np

log = logging.getLogger("phasestem.recon")

#: the snapshot file in a reconstruction's output folder
LIVE_FILE = "live.npz"
#: largest side (pixels) of the images in a snapshot
MAX_SIDE = 192


def block_mean(img: np.ndarray, max_side: int = MAX_SIDE) -> tuple[np.ndarray, int]:
    """``img`` (…, H, W) averaged over f × f blocks, f the smallest integer giving sides ≤ ``max_side`` (edge rows
    and columns that do not fill a block are dropped); returns (image, f)."""
    h, w = img.shape[-2:]
    f = max(1, math.ceil(max(h, w) / max_side))
    if f == 1:
        return img, 1
    hh, ww = h // f, w // f
    out = img[..., : hh * f, : ww * f].reshape(*img.shape[:-2], hh, f, ww, f).mean((-3, -1))
    return out, f


def snapshot(model, n_epochs: int, max_side: int = MAX_SIDE, extra: dict | None = None) -> dict[str, np.ndarray]:
    """The arrays of one snapshot of ``model`` (see the module docstring), with ``extra``'s (a detector stream's
    counters and images, :mod:`phasestem.live.session`)."""
    import torch

    from ..physics.experiment import scanned_field
    from .figures import summed_object

    field = scanned_field(model.positions, model.sampling, model.object_shape)
    phase, f = block_mean(summed_object(model)[0][field].astype(np.float32), max_side)
    with torch.no_grad():
        probe = model.get_probe()[0].cpu().numpy()
    probe, fp = block_mean(probe, max_side)
    device = getattr(model, "device", torch.device("cpu"))
    gpu = torch.cuda.max_memory_allocated(device) if torch.device(device).type == "cuda" else -1
    history = model.loss_history
    arrays = {k: np.asarray(v) for k, v in (extra or {}).items()}
    u = getattr(model, "uncertainty", None)
    if u is not None:  # σ where the data constrain the phase (recon.uncertainty), NaN elsewhere
        sigma = np.where(u.constrained, u.sigma_sum, np.nan)[field].astype(np.float32)
        arrays["phase_sigma"] = block_mean(sigma, max_side)[0]
    counts = {"epoch": np.asarray(model.epoch), "n_epochs": np.asarray(max(n_epochs, model.epoch)),
              "loss": np.array([h["loss"] for h in history], dtype=np.float64),
              "seconds": np.array([h.get("seconds", np.nan) for h in history], dtype=np.float64)}
    return {**counts, **arrays,  # a stream's snapshot counts its epochs itself (live.feed)
            "object_phase": phase.astype(np.float32), "probe": probe.astype(np.complex64),
            "sampling": np.asarray(model.sampling, dtype=np.float64) * f,
            "probe_sampling": np.asarray(model.sampling, dtype=np.float64) * fp, "gpu_memory": np.asarray(gpu),
            "time": np.asarray(time.time())}


#: bytes a snapshot may unpack to (its arrays' sizes as the zip declares them): ours are below 0.5 MB; a file that
#: declares more is not one (a zip bomb left in a run folder must not balloon the server that reads it)
MAX_SNAPSHOT_BYTES = 16 * 2**20


def read_snapshot(path: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of a snapshot file, or None where there is none (yet), it cannot be read, or it declares more than
    :data:`MAX_SNAPSHOT_BYTES` (checked before anything is unpacked; zipfile reads no member past its declared
    size)."""
    try:
        with zipfile.ZipFile(path) as zf:
            if sum(info.file_size for info in zf.infolist()) > MAX_SNAPSHOT_BYTES:
                log.warning("%s: declares more than %d MB: not read as a live snapshot", path, MAX_SNAPSHOT_BYTES >> 20)
                return None
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def write_snapshot(path: str | Path, model, n_epochs: int, max_side: int = MAX_SIDE, extra: dict | None = None
                   ) -> None:
    """Replace ``path`` with a :func:`snapshot` of ``model`` (and ``extra``'s arrays), atomically."""
    from ..base.safety import atomic_file

    with atomic_file(Path(path), field="live snapshot") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **snapshot(model, n_epochs, max_side, extra))
