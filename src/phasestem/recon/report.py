"""What ``phasestem reconstruct`` reports besides its own loss.

* :func:`system_info` — the block at the top of ``reconstruct.log`` (versions, device, threads, host);
* :func:`geometry_settings`, :func:`loss_settings`, :func:`log_settings` — the scan and optics values a run used
  and where each came from (data file, YAML, flag, calibration, default), and the loss terms that ran, as the
  table after it (and ``provenance/`` in ``results.h5``);
* :func:`describe` — a model in one line (``repr(Ptychography)``);
* :func:`dataset_ptyrad_loss` — PtyRAD's normalised Gaussian loss over all patterns
  (:func:`phasestem.recon.losses.ptyrad_gaussian_loss`), logged per epoch as ``loss_ptyrad``;
* :func:`load_ground_truth` and :func:`~phasestem.recon.truth.truth_metrics` — PSNR, SSIM, E_φ and the FRC
  resolution of the reconstructed phase against a ground-truth phase stored in the data file
  (``data.ground_truth_key``), per epoch in the log and the loss history, and at the end in ``results.h5``
  (``metrics/``).
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

from ..base.errors import InputFileError, ShapeError
from ..base.runtime import log_to_file
from .callbacks import Callback
from .truth import TRUTH_METRICS, scan_field, truth_metrics

log = logging.getLogger("phasestem.recon")

#: reader calibration → the parameter-file field that gives it
CALIBRATION_FIELDS = {"scan_shape": "scan.shape", "scan_step": "scan.step", "scan_origin": "scan.origin",
                      "energy": "optics.energy", "semiangle": "optics.semiangle",
                      "angular_sampling": "optics.angular_sampling", "sampling": "optics.sampling",
                      "aberrations": "optics.aberrations"}


# ---- system information --------------------------------------------------------------------
def system_info(device: str | torch.device = "cpu") -> dict[str, str]:
    """Versions, device, threads and host of this run (strings, in a fixed order)."""
    from ..base.version import __version__

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


def logging_to(log_path: str | Path):
    """Send the ``phasestem.recon`` log (INFO and up) to ``log_path`` too, in the run log's line format
    (:func:`phasestem.base.runtime.log_to_file`)."""
    return log_to_file(log, log_path)


def log_system_info(log_path: str | Path, device: str | torch.device = "cpu") -> None:
    """Append the system-information block to ``log_path`` (the run log)."""
    with logging_to(log_path):
        info = system_info(device)
        width = max(len(k) for k in info)
        log.info("system information:")
        for k, v in info.items():
            log.info("  %s %s", f"{k}:".ljust(width + 1), v)


# ---- settings and their sources ------------------------------------------------------------
def geometry_settings(params, dataset, sources=None) -> list:
    """The scan and optics values of ``dataset`` as loaded by :func:`phasestem.recon.params.build_dataset` (before
    the data transforms) with their sources: a list of :class:`phasestem.base.provenance.Setting`. ``sources``: labels
    of the values the parameter file gives, by field (default ``YAML``)."""
    from ..base.provenance import Setting, aberration_settings, dose_setting, format_value, unit_of

    meta = dataset.metadata
    where, held = meta.get("calibration_sources", {}), meta.get("calibration_from_file", {})
    labels = dict(sources or {})

    def source(name: str, field: str) -> str:
        return {"given": labels.get(field, "YAML"), "file": "file"}.get(where.get(name, "default"), "default")

    o, s = params.optics, params.scan
    values = {"scan_shape": dataset.scan_shape, "scan_step": dataset.scan_step, "scan_origin": dataset.scan_origin,
              "energy": dataset.energy, "semiangle": dataset.semiangle, "angular_sampling": dataset.angular_sampling}
    rows = []
    for name, value in values.items():
        field, note = CALIBRATION_FIELDS[name], ""
        if name == "angular_sampling" and o.angular_sampling is None and o.sampling is not None:
            # given as the real-space pixel: say it in Å, as given
            note = f"= {format_value(value, unit_of(name))}"
            name, field, value = "sampling", "optics.sampling", meta.get("calibration_given", {}).get("sampling")
        if value is not None:
            rows.append(Setting(field, value, unit_of(name), source("angular_sampling" if name == "sampling" else
                                                                  name, field), held.get(name), note))
    given_none = labels.get("optics.aberrations", "YAML") if "aberrations" in o.model_fields_set else "default"
    rows += aberration_settings(dataset.aberrations, lambda name: source(name, f"optics.{name}"),
                                held.get("aberrations", {}), "optics.aberrations",
                                "file" if "aberrations" in held else given_none)
    dose = dose_setting(meta)
    if dose is not None:
        rows.append(dose)
    given = s.model_fields_set
    rows.append(Setting("scan.rotation", s.rotation, "deg", labels.get("scan.rotation", "YAML")
                        if "rotation" in given else "default"))
    if s.affine is not None:
        rows.append(Setting("scan.affine", np.asarray(s.affine).ravel().tolist(), "", labels.get("scan.affine",
                                                                                                    "YAML")))
    if s.positions_file is not None:
        rows.append(Setting("scan.positions_file", str(s.positions_file), "", "YAML"))
    elif dataset.positions is not None:
        rows.append(Setting("positions", f"{len(dataset.positions)} explicit", "", source("positions", "positions")))
    return rows


def counts_setting(decision, params, sources=None):
    """The row ``data.counts  true  data (the file records a dose of …)`` of the run's settings table: whether the run
    took its patterns as detector counts (:class:`phasestem.io.counts.CountsDecision`) and why; the source is the
    parameter file's (``sources['data.counts']`` or ``YAML``) where it says, ``data`` where the data decided."""
    from ..base.provenance import Setting

    given = params.data.counts is not None
    source = (sources or {}).get("data.counts", "YAML") if given else "data"
    return Setting("data.counts", "true" if decision.counted else "false", "", source, note=decision.reason)


def loss_settings(params, sources=None, from_data: tuple | None = None) -> list:
    """The loss terms that run (weight > 0) as :class:`phasestem.base.provenance.Setting` rows: source ``YAML`` (or
    ``sources['losses']``) when the parameter file names terms, ``default`` when it names none, ``data`` when
    ``from_data`` = (the loss, why) says the data chose it (:func:`phasestem.recon.data_losses.losses_for_data`)."""
    from ..base.provenance import Setting

    cfg = params.losses
    if from_data and from_data[1]:
        return [Setting(f"losses.{n}", from_data[0].weight(n), "", "data", note=f"no term named; {from_data[1]}")
                for n in from_data[0].active()]
    label = (sources or {}).get("losses", "YAML") if cfg.named else "default"
    note = "" if cfg.named else "no term named"
    return [Setting(f"losses.{n}", cfg.weight(n), "", label, note=note) for n in cfg.active()]


def auto_settings(model, params, sources=None) -> list:
    """What each 'auto' constraint rule decided in this run, as :class:`phasestem.base.provenance.Setting` rows
    (``constraints.obj_clamp.enabled``: true or false) for ``provenance/`` in results.h5: the source is where 'auto'
    came from (``YAML``, or ``sources[field]``, when the parameter file sets it; ``default`` otherwise), the note
    ``auto: `` and the rule's reason (``model.history.notes``). Rules that did not run (not yet due) give no row.
    ``run.coarse_start: auto`` gives one more row: the coarse epochs the run began with (from the loss history, so a
    resumed run tells it too) and why they were kept, or why there were none (``model.history.coarse_note``, also kept
    in checkpoints). ``model.upsampling: auto`` gives the row of the factor the optics chose and why. A learned prior
    (``reconstruct --prior``) gives the row ``prior.returned_epoch``: the epoch the run returned and why
    (``model.prior_returned``, :mod:`phasestem.recon.prior_stop`). ``run.lr_decay: auto`` gives the row of the decay
    the data term chose (``model.history.notes['run.lr_decay']``)."""
    from ..base.provenance import Setting
    from .run_state import COARSE_HISTORY_KEY

    rows = []
    if params.run.coarse_start == "auto":
        coarse = [h for h in model.loss_history if COARSE_HISTORY_KEY in h]
        note = f"auto: {model.history.coarse_note or 'none'}"
        if coarse:  # what was kept, and how (a mistilted crystal's straightened slices)
            note = f"auto: {len(coarse)} epoch(s) on the central {int(coarse[0][COARSE_HISTORY_KEY])} detector px" + (
                f"; {model.history.coarse_note}" if model.history.coarse_note.startswith("kept") else "")
        given = "coarse_start" in params.run.model_fields_set
        rows.append(Setting("run.coarse_start", len(coarse), "epochs",
                            (sources or {}).get("run.coarse_start", "YAML") if given else "default", note=note))
    model_section = getattr(params, "model", None)  # callers may pass only the sections they have
    if getattr(model_section, "upsampling", None) == "auto":  # the object pixel the optics chose (model.upsampling)
        given = "upsampling" in model_section.model_fields_set
        rows.append(Setting("model.upsampling", int(model.upsampling), "",
                            (sources or {}).get("model.upsampling", "YAML") if given else "default",
                            note=f"auto: {model.experiment.upsampling_reason}"))
    for name, why in sorted(model.history.notes.items()):
        if name.startswith("run."):  # a run setting's 'auto' (run.lr_decay): the value it took, first in its reason
            given = name[4:] in params.run.model_fields_set
            rows.append(Setting(name, why.split(" ", 1)[0], "", (sources or {}).get(name, "YAML") if given else
                                "default", note=f"auto: {why}"))
            continue
        field = f"constraints.{name}.enabled"
        given = "enabled" in getattr(params.constraints, name).model_fields_set
        on = model.history.decided.get(name, why.startswith("on"))
        rows.append(Setting(field, bool(on), "", (sources or {}).get(field, "YAML") if given else "default",
                            note=f"auto: {why}"))
    if getattr(model, "prior_returned", None):
        rows.append(Setting("prior.returned_epoch", int(model.epoch), "", "flag", note=model.prior_returned))
    if getattr(model, "heldout_returned", None):  # run.holdout_counts: the epoch its held counts chose
        rows.append(Setting("run.holdout_counts.returned_epoch", int(model.epoch), "",
                            (sources or {}).get("run.holdout_counts", "YAML"), note=model.heldout_returned))
    return rows


def losses_line(params, sources=None, from_data: tuple | None = None) -> str:
    """``losses: poisson 1 (named in the parameter file)`` / ``losses: gaussian 1 (default; no term named)`` /
    ``losses: gaussian 0.5, poisson 0.5 (chosen from the data: …; no term named)`` (``from_data``: the loss and why,
    :func:`phasestem.recon.data_losses.losses_for_data`)."""
    cfg = params.losses
    if from_data and from_data[1]:
        return f"losses: {from_data[0].describe()} (chosen from the data: {from_data[1]}; no term named), power " \
               f"{from_data[0].power:g}"
    label = (sources or {}).get("losses", "YAML")
    named = "named in the parameter file" if label == "YAML" else f"named by the {label}"
    why = named if cfg.named else "default; no term named"
    return f"losses: {cfg.describe()} ({why}), power {cfg.power:g}"


def log_settings(settings: list, losses: str, dataset=None, log_path: str | Path | None = None) -> None:
    """The settings table (field, value, source) and the losses line, also to ``log_path``; with ``dataset`` (as
    reconstructed, after the data transforms) one more line with the patterns and the pixel size."""
    with logging_to(log_path) if log_path is not None else contextlib.nullcontext():
        log.info("settings (value, source: file, YAML, flag, calibration or default):")
        for row in settings:
            if not row.field.startswith("losses."):
                log.info("  %s", row.line())
        if dataset is not None:
            sy, sx = dataset.scan_shape
            H, W = dataset.pattern_shape
            log.info("  reconstructed: %d × %d patterns of %d × %d px, pixel %.4g × %.4g Å", sy, sx, H, W,
                     *dataset.sampling)
        log.info(losses)


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
def truth_sampling(path: str | Path, key: str) -> tuple[float, float] | None:
    """Pixel size (Å, (y, x)) stored with the ground truth ``key`` of the data file ``path``: the HDF5 attribute
    ``sampling`` of the dataset or of its group (phasestem's ``truth/phase``), a seed-000 file's phase pixel
    (:func:`phasestem.io.seed.phase_sampling`); None when the file holds none (``.npy``/``.npz``)."""
    from ..io import seed

    if Path(path).suffix.lower() not in (".h5", ".hdf5", ".hdf"):
        return None
    import h5py

    with h5py.File(path, "r") as f:
        if key not in f:
            return None
        node = f[key]
        for attrs in (node.attrs, node.parent.attrs):
            if "sampling" in attrs:
                s = np.asarray(attrs["sampling"], dtype=np.float64).ravel()
                return (float(s[0]), float(s[-1]))
        parsed = seed.parse_key(key.strip("/"))
        if parsed is not None and parsed[0] == "phase" and seed.patterns_key(parsed[1]) in f:
            return seed.phase_sampling(f.attrs, node.shape)
    return None


def _read_truth(path: Path, key: str, energy: float | None, allow_external_links: bool = False) -> np.ndarray:
    """The truth as rad: a seed-000 ``phase_{i}`` through :func:`phasestem.io.seed.read_phase` (the original
    generator's stores σ·V, not the phase), anything else as stored. The file is checked (links, sources: as its
    data file with ``allow_external_links``) before anything is read."""
    from ..io import seed
    from .inputs import load_phase_image

    image = load_phase_image(path, key, allow_external_links)  # the checks (real, finite, 2-D) of every phase image
    parsed = seed.parse_key(key.strip("/"))
    if path.suffix.lower() in (".h5", ".hdf5", ".hdf") and parsed is not None and parsed[0] == "phase":
        import h5py

        with h5py.File(path, "r") as f:
            if seed.patterns_key(parsed[1]) in f:
                return seed.read_phase(f, key, energy)
    return image


def load_ground_truth(path: str | Path, key: str, model, energy: float | None = None,
                      log_path: str | Path | None = None, allow_external_links: bool = False) -> np.ndarray:
    """The ground-truth phase (rad, 2-D, dataset frame) stored under ``key`` in the data file ``path``, at the
    pixel of ``model`` (a :class:`~phasestem.recon.model.Ptychography`).

    A truth stored at another pixel size (:func:`truth_sampling`) is resampled to the model's with
    :func:`phasestem.physics.resample.resample_image`, and a log line (also to ``log_path``) says so; one with no
    pixel size is taken at the detector's λ/(N·Δk) (the model's unless ``model.upsampling``). Refused with one line
    naming ``data.ground_truth_key`` when it is missing, not a finite real 2-D image, or does not cover the scanned
    field at that pixel (a truth of another, unknown pixel size). ``energy`` (eV): for the original seed
    generator's files, whose ``phase_{i}`` is σ·V. ``allow_external_links``: the permission of its data file
    (``data.reader_options.allow_external_links``, ``reconstruct --allow-external-links``), one decision for both."""
    from ..physics.resample import resample_image
    from .inputs import field

    path = Path(path)
    target = tuple(float(s) for s in model.sampling)
    with field("data.ground_truth_key"):
        try:
            truth = _read_truth(path, key, energy, allow_external_links)
        except (InputFileError, ShapeError) as exc:
            raise type(exc)(str(exc).replace("initial phase", "ground truth")) from None
        stored = truth_sampling(path, key)
        upsampled = stored is None and getattr(model, "upsampling", 1) > 1
        if upsampled:  # a truth at the data's pixel, not the finer one the model chose
            stored = model.experiment.detector_sampling
        shape = truth.shape
        with logging_to(log_path) if log_path is not None else contextlib.nullcontext():
            if upsampled:
                log.info("ground truth %s of %s: no pixel size stored with it; taken at the detector's %.4g Å",
                         key, path.name, stored[0])
            if stored is None:
                log.info("ground truth %s of %s: no pixel size stored with it (HDF5 attribute 'sampling'); taken at "
                         "the reconstruction's %.4g Å", key, path.name, target[0])
            elif not np.allclose(stored, target, rtol=1e-6, atol=0):
                truth = resample_image(torch.as_tensor(truth, dtype=torch.float32), stored, target).numpy()
                log.info("ground truth %s of %s: stored at %.4g × %.4g Å/px, resampled to the reconstruction's %.4g "
                         "× %.4g Å/px (%d × %d → %d × %d px)", key, path.name, *stored, *target, *shape,
                         *truth.shape)
        fy, fx = scan_field(model, (1 << 30, 1 << 30))
        if truth.shape[0] < fy.stop or truth.shape[1] < fx.stop:
            at = ("at its stored pixel" if stored is not None else "with no pixel size stored (HDF5 attribute "
                  "'sampling'), taken at the reconstruction's pixel,")
            raise ShapeError(f"{path}: {key!r} ({shape[0]} × {shape[1]} px {at}) covers {truth.shape[0]} × "
                             f"{truth.shape[1]} px of {target[0]:.4g} Å but the scanned field reaches {fy.stop} × "
                             f"{fx.stop} px from 0 Å: store it at the reconstruction's pixel over the dataset frame, "
                             "or with its pixel size")
    return truth


def final_metrics(model, truth: np.ndarray, name: str, log_path: str | Path | None = None) -> dict:
    """:func:`~phasestem.recon.truth.truth_metrics` with the FRC curve, logged in one line (also to ``log_path``)."""
    metrics = truth_metrics(model, truth, curve=True)
    with logging_to(log_path) if log_path is not None else contextlib.nullcontext():
        log.info("final comparison with %s: %s", name,
                 " ".join(f"{k}={metrics[k]:.4g}" for k in TRUTH_METRICS))
    return metrics


class EpochReport(Callback):
    """Adds ``loss_ptyrad`` and (with ``truth``) the :data:`TRUTH_METRICS` to each epoch's record and logs them in
    one line (an engine callback, :mod:`phasestem.recon.callbacks`)."""

    def __init__(self, dataset, truth: np.ndarray | None = None, ptyrad_loss: bool = True, power: float = 0.5,
                 batch_size: int = 64):
        self.dataset, self.truth, self.ptyrad_loss = dataset, truth, ptyrad_loss
        self.power, self.batch_size = power, batch_size

    def on_record(self, loop) -> None:
        model, record = loop.model, loop.record
        values: dict[str, float] = {}
        if self.ptyrad_loss:
            values["loss_ptyrad"] = dataset_ptyrad_loss(model, self.dataset, self.power, self.batch_size)
        if self.truth is not None:
            values.update(truth_metrics(model, self.truth))
        record.update(values)
        if values:
            log.info("epoch %d %s", record["epoch"], " ".join(f"{k}={v:.4g}" for k, v in values.items()))


def describe(model) -> str:
    """One line: object (modes × slices × px at Å), probe, positions, solver, device and epochs run."""
    (ny, nx), (dy, dx) = model.object_shape, model.sampling
    loss = f", loss {model.loss_history[-1]['loss']:.4g}" if model.loss_history else ""
    return (f"Ptychography(object {model.n_object_modes} mode(s) × {model.n_slices} slice(s) × {ny}×{nx} px at "
            f"{dy:.4g}×{dx:.4g} Å, probe {model.n_probe_modes} mode(s) × {model.window[0]}×{model.window[1]} px, "
            f"{model.positions.shape[0]} positions, {model.energy / 1e3:g} keV, solver {model.solver or 'none yet'}, "
            f"device {model.device}, {model.epoch} epoch(s) run{loss})")
