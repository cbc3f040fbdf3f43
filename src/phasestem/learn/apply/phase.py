"""Apply a trained End2End (or a patch + stitching pair) to a 4D-STEM scan → full phase image.

``predict_phase(model, meta, dataset)`` → (N, N) float32 in the unit the model was trained on
(``meta["data"]["target_description"]``). The scan must have the training scan shape (50 × 50)
and pattern shape (after the stored preprocessing); its step and origin come from the file and
enter the network as physical coordinates, and the output pixel scales with the step.

``predict_file`` also reports the measurement consistency of the prediction (:mod:`phasestem.learn.consistency`:
the phase through the forward model with the nominal probe against the measured patterns; no ground truth
needed): root attribute ``residual`` and dataset ``residual_map`` (Sy, Sx) of the output, and a log line.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from ...base.errors import ConfigError, InputFileError, ShapeError
from ...base.lock import hold_output
from ...base.safety import atomic_file, figure_beside, refuse_output_over_inputs
from ...dataset import FourDSTEM
from ...io.hdf5 import read_float32
from ...plot import save_figure
from ..data import BlockGeometry, Preprocess, blocks_from_scan
from ..nets.end2end import End2End
from ..trainer.loop import resolve_device
from ..training.route import load_model
from .seen import note_seen

log = logging.getLogger("phasestem.learn")


def load_predictor(model_path: str | Path, stitch_path: str | Path | None = None,
                   device: str = "cpu") -> tuple[End2End, dict[str, Any]]:
    """An End2End from one end2end model, or from a patch model plus a stitching model."""
    model, meta = load_model(model_path)
    if isinstance(model, End2End):
        if stitch_path is not None:
            raise ConfigError("an end2end model already contains its stitching net; drop --stitch-model")
    else:
        if stitch_path is None:
            raise ConfigError(f"{model_path}: a '{meta['model']['kind']}' model alone cannot predict a full phase; "
                              "give an end2end model, or a patch model with --stitch-model")
        stitch, _ = load_model(stitch_path)
        if meta["model"]["kind"] != "patch" or not hasattr(stitch, "canvas"):
            raise ConfigError("give a patch model as MODEL and a stitch model as --stitch-model")
        model = End2End(model, stitch)
    model = model.to(resolve_device(device)).eval()
    # the per-pattern CNN runs on thousands of patterns per scan: channels-last convolutions are 1.3-1.7x faster on
    # CPU (measured, tiny and small sizes) and are the fast layout for cuDNN too
    model.patch_net.cnn.to(memory_format=torch.channels_last)
    return model, meta


def check_training_shapes(meta: dict[str, Any], scan_shape: tuple[int, int],
                          pattern_shape: tuple[int, int] | None = None, source: str = "") -> None:
    """Refuse data whose scan (or pattern) shape is not the one the model was trained on, in one line (prefixed
    ``source: `` when given): the model stitches a fixed number of blocks of one scan shape."""
    g = BlockGeometry.from_dict(meta["data"]["geometry"])
    where = f"{source}: " if source else ""
    if tuple(scan_shape) != tuple(g.scan_shape):
        raise ShapeError(f"{where}scan {tuple(scan_shape)} differs from the training scan {tuple(g.scan_shape)}; the "
                         f"model stitches {g.n_blocks} blocks of a {g.scan_shape[0]}×{g.scan_shape[1]} scan")
    expect = tuple(meta["data"]["pattern_shape"])
    if pattern_shape is not None and tuple(pattern_shape) != expect:
        raise ShapeError(f"{where}patterns are {tuple(pattern_shape)} px but the model was trained on {expect} px; "
                         "bin/crop/pad the data to match (FourDSTEM.binned/cropped/padded)")


#: how far data may be from a model's recorded training optics (``meta["data"]["optics"]``): (relative, absolute)
#: tolerance per field; aberrations in Å
OPTICS_TOLERANCE = {"energy": (0.01, 0.0), "semiangle": (0.02, 0.05), "angular_sampling": (0.02, 0.0),
                    "scan_step": (0.01, 0.0), "aberrations": (0.02, 1.0), "sampling": (0.01, 0.0)}
#: unit and name in a refusal of each field of :data:`OPTICS_TOLERANCE` (``sampling``: a restorer's pixel)
_UNITS = {"energy": ("eV", "energy"), "semiangle": ("mrad", "semiangle"), "scan_step": ("Å", "scan_step"),
          "angular_sampling": ("mrad", "angular_sampling"), "sampling": ("Å", "pixel")}


def dataset_optics(dataset: FourDSTEM) -> dict[str, Any]:
    """A dataset's optics in the form of a model's record (:meth:`phasestem.learn.data.files.FileInfo.optics`)."""
    return {"energy": dataset.energy, "semiangle": dataset.semiangle, "aberrations": dict(dataset.aberrations),
            "angular_sampling": dataset.angular_sampling, "scan_step": dataset.scan_step}


def _close(a: float, b: float, rel: float, atol: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + atol


def check_training_optics(meta: dict[str, Any], optics: dict[str, Any], source: str = "") -> None:
    """Refuse, in one line, data whose energy, probe semi-angle, aberrations (defocus …), detector pixel, scan step or
    (a restorer's) reconstruction pixel ``sampling`` differ from the model's training data
    (:data:`OPTICS_TOLERANCE`): the network learned one probe at one overlap. Models saved without
    ``meta["data"]["optics"]`` are not checked; a field the data do not record (``None``, NaN, no aberrations at all)
    is logged as unchecked."""
    trained = (meta.get("data") or {}).get("optics")
    if not trained:
        return
    where = f"{source}: " if source else ""
    bad, unchecked = [], []
    for key, (rel, atol) in OPTICS_TOLERANCE.items():
        want, have = trained.get(key), optics.get(key)
        if want is None or want == {}:
            continue
        if key == "aberrations":
            if not have:
                unchecked.append(key)
                continue
            for name in sorted(set(want) | set(have)):
                a, b = float(have.get(name, 0.0)), float(want.get(name, 0.0))
                if not _close(a, b, rel, atol):
                    bad.append(f"{name} {a:g} Å (trained on {b:g} Å)")
            continue
        pair = isinstance(want, list | tuple)
        w = [float(v) for v in (want if pair else [want])]
        h = None if have is None else [float(v) for v in (have if pair else [have])]
        if h is None or len(h) != len(w) or not np.all(np.isfinite(h)):
            unchecked.append(key)
        elif not all(_close(x, y, rel, atol) for x, y in zip(h, w, strict=True)):
            unit, name = _UNITS[key]
            fmt = lambda v: "×".join(f"{x:g}" for x in v)  # noqa: E731
            bad.append(f"{name} {fmt(h)} {unit} (trained on {fmt(w)} {unit})")
    if bad:
        raise ShapeError(f"{where}the data differ from the model's training data: {'; '.join(bad)}; the network "
                         "learned one probe at one scan step and is not applied to another (train or fine-tune on "
                         "data of this geometry)")
    if unchecked:
        log.warning("%sthe data do not record %s: not checked against the model's training data", where,
                    ", ".join(unchecked))


def geometry_for(dataset: FourDSTEM, meta: dict[str, Any]) -> BlockGeometry:
    """The training geometry adapted to ``dataset``'s scan step and origin (same pixel count per step)."""
    g = BlockGeometry.from_dict(meta["data"]["geometry"])
    check_training_shapes(meta, dataset.scan_shape)
    ratio = (dataset.scan_step[0] / g.scan_step[0], dataset.scan_step[1] / g.scan_step[1])
    if max(abs(r - 1) for r in ratio) > 1e-6:
        log.warning("scan step %s Å differs from training %s Å: output pixel scaled by %s", dataset.scan_step,
                    g.scan_step, ratio)
    return replace(g, scan_step=tuple(dataset.scan_step), scan_origin=tuple(dataset.scan_origin),
                   phase_sampling=(g.phase_sampling[0] * ratio[0], g.phase_sampling[1] * ratio[1]))


@torch.no_grad()
def predict_phase(model: End2End, meta: dict[str, Any], dataset: FourDSTEM, device: str | None = None) -> np.ndarray:
    """Phase image (N, N) float32 of one scan (see the module docstring)."""
    device = device or next(model.parameters()).device
    check_training_optics(meta, dataset_optics(dataset))
    g = geometry_for(dataset, meta)
    pre = Preprocess(**meta["data"]["preprocess"])
    check_training_shapes(meta, dataset.scan_shape, dataset.pattern_shape)
    pats = dataset.patterns
    scan = read_float32(pats) if isinstance(pats, h5py.Dataset) else np.asarray(pats[...], dtype=np.float32)
    blocks = blocks_from_scan(scan, g, pre)[None].to(device)
    coords = torch.from_numpy(g.frame_coords())[None].to(device)  # patch frames; older models re-centre them
    centres = torch.from_numpy(g.exact_centres())[None].to(device)  # unrounded; the net rounds where it places
    out = model(blocks, coords, centres)["phase"][0]
    return out.float().cpu().numpy()


def write_prediction(path: str | Path, phase: np.ndarray, sampling: tuple[float, float], meta: dict[str, Any],
                     source: str, png: bool = True, truth: np.ndarray | None = None,
                     residual: dict[str, Any] | None = None) -> Path:
    """Write ``phase`` (HDF5 dataset ``phase`` with units/sampling attrs, atomically) and a PNG next to it;
    ``residual`` (:func:`prediction_residual`) adds the root attribute ``residual`` and dataset ``residual_map``."""
    path = Path(path)
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
        d = f.create_dataset("phase", data=phase.astype(np.float32))
        d.attrs["sampling"] = np.asarray(sampling)
        d.attrs["target"] = meta["data"]["target_description"]
        f.attrs["source"] = source
        f.attrs["model_kind"] = meta["model"]["kind"]
        if truth is not None:
            f.create_dataset("truth", data=np.asarray(truth, np.float32))
        if residual is not None:
            f.attrs["residual"] = residual["residual"]
            r = f.create_dataset("residual_map", data=np.asarray(residual["map"], np.float32))
            r.attrs["meaning"] = ("per scan position: sum over the pattern of (sqrt(I_model) - sqrt(I_meas))^2, both "
                                  "normalised to a total of 1; I_model = the phase through the forward model with "
                                  "the nominal probe")
    if png:
        save_png(figure_beside(path), phase, sampling, meta["data"]["target_description"], truth)
    return path


def save_png(path: Path, phase: np.ndarray, sampling, label: str, truth: np.ndarray | None = None) -> Path:
    """The prediction (Å scale bar, colour bar in its unit) and its diffractogram; with ``truth`` also the truth, the
    difference and E_φ / FRC / PSNR / SSIM (:func:`phasestem.plot.phase_figure`)."""
    from ...metrics import figures_of_merit
    from ...plot import phase_figure

    unit = "phase (rad)" if "rad" in label else label.split(" ")[0]
    metrics = None if truth is None else figures_of_merit(phase, truth, sampling=sampling)
    fig = phase_figure(phase, sampling, label=unit, truth=truth, metrics=metrics, title=f"prediction: {label}")
    save_figure(fig, path, close=True)
    return path


def predict_file(input_path: str | Path, model_path: str | Path, out_path: str | Path,
                 stitch_path: str | Path | None = None, device: str = "cpu", png: bool = True,
                 **load_options) -> Path:
    """4D-STEM file → phase HDF5 (+ PNG). ``load_options`` go to :func:`phasestem.io.load` (e.g. ``sample=``,
    ``bad_pixels=``). The output may not resolve to an input; ``device`` is checked before anything is read (one line
    for ``banana`` or a GPU this machine lacks), then the data are read (and checked)."""
    from ...base.runtime import resolve_device
    from ...io import load

    device = str(resolve_device(device, field="--device"))
    refuse_output_over_inputs(prediction_outputs(out_path, png), [input_path, model_path, stitch_path])
    with hold_output(out_path, "phasestem predict", file=True):
        ds = load(input_path, **{k: v for k, v in load_options.items() if v is not None})
        log_calibrations(ds)
        model, meta = load_predictor(model_path, stitch_path, device)
        note_seen(meta, input_path, ds.metadata.get("sample"))
        phase = predict_phase(model, meta, ds)
        check_finite_prediction(phase, model_path, input_path)
        g = geometry_for(ds, meta)
        truth = None
        if ds.truth is not None and np.shape(ds.truth.get("phase")) == phase.shape:
            truth = ds.truth["phase"]
        residual = prediction_residual(phase, ds, g.phase_sampling, meta)
        return write_prediction(out_path, phase, g.phase_sampling, meta, str(input_path), png, truth, residual)


def check_finite_prediction(phase: np.ndarray, model_path: str | Path, input_path: str | Path) -> None:
    """Refuse a prediction holding NaN or Inf (nothing written) in one line naming the model and the data."""
    bad = int(phase.size - np.count_nonzero(np.isfinite(phase)))
    if bad:
        raise InputFileError(f"{model_path}: its prediction for {input_path} holds {bad} of {phase.size} non-finite "
                          "pixels (NaN or Inf); expected a finite phase: check the model (a diverged training?) and "
                          "that the data are of the kind it was trained on")


def check_finite_phase(phase: np.ndarray, source: str) -> None:
    """Refuse a phase going into a network that holds NaN or Inf, in one line naming where it is from."""
    bad = int(np.size(phase) - np.count_nonzero(np.isfinite(phase)))
    if bad:
        raise InputFileError(f"{source}: the phase holds {bad} of {np.size(phase)} non-finite pixels (NaN or Inf); "
                             "expected a finite phase: a diverged reconstruction? (rerun it, e.g. at a lower "
                             "learning rate)")


def log_calibrations(dataset: FourDSTEM) -> None:
    """The data's calibrations, one log line each with its source (file, flag or default), as the run log of
    ``reconstruct`` shows them."""
    from ...base.provenance import dataset_settings

    log.info("data calibrations (value, source: file, flag or default):")
    for row in dataset_settings(dataset, given="flag"):
        log.info("  %s", row.line())


def prediction_residual(phase: np.ndarray, dataset: FourDSTEM, sampling: tuple[float, float],
                        meta: dict[str, Any]) -> dict[str, Any] | None:
    """Measurement residual of a predicted image (:func:`phasestem.learn.consistency.measurement_residual`; a
    potential in V·Å is converted with σ of the data's energy); None, with a log line, when the data do not
    carry the optics it needs (semiangle, angular sampling)."""
    from ...physics.optics import interaction_constant
    from ..consistency import measurement_residual

    scale = interaction_constant(dataset.energy) if meta["data"].get("target") == "potential" else 1.0
    try:
        res = measurement_residual(phase, dataset, sampling, phase_scale=scale)
    except (ConfigError, ShapeError) as exc:
        log.info("no measurement residual: %s", exc)
        return None
    log.info("measurement residual of the prediction: %.4g (mean over %d patterns of Σ(√I_model − √I_meas)², "
             "each normalised to 1; 0 = the patterns are explained exactly)", res["residual"], res["map"].size)
    return res


def prediction_outputs(out_path: str | Path, png: bool = True) -> list[Path]:
    """The files ``predict`` writes: the HDF5 and (``png``) the PNG next to it (a figure suffix on the HDF5 is
    refused, :func:`phasestem.base.safety.check_result_name`)."""
    out = Path(out_path)
    figure = figure_beside(out)
    return [out, figure] if png else [out]


def model_summary(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}: {n / 1e6:.2f} M parameters"
