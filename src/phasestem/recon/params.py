"""The YAML parameter file of ``phasestem reconstruct`` / ``phasestem tune``: loading, dumping, and building the
dataset and the model from it (the sections: :mod:`phasestem.recon.settings`).

Sections: ``data`` (file, keys, detector flips/transposes, crop/bin/pad/resample), ``optics``,
``scan`` (shape, step, origin, rotation/affine), ``model``, ``losses``, ``constraints``, ``run``
and (for tuning) ``tune``. Every error names the field, e.g.
``params.yaml: model.n_slicez: unknown key``. See ``configs/reconstruct_*.yaml``.

Python use::

    params = load_params("configs/reconstruct_tiny.yaml")
    dataset = build_dataset(params)
    model = build_model(params, dataset)
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..base.configfile import apply_overrides, read_yaml_mapping, resolve_config_paths, validate
from ..base.errors import ConfigError, InputFileError, PhasestemError, ShapeError
from .model import Ptychography
from .report import CALIBRATION_FIELDS, geometry_settings
from .settings import ReconstructParams, RunConfig  # noqa: F401  (re-exported: from phasestem.recon.params import …)
from .settings.data import DataConfig
from .settings.model import InitialPhase, ModelOptions  # noqa: F401  (re-exported likewise)
from .settings.scan import ScanConfig  # noqa: F401  (re-exported likewise)

log = logging.getLogger("phasestem.recon")


# ---- loading -----------------------------------------------------------------------------
def parse_params(data: dict, source: str = "params", base_dir: Path | None = None,
                 overrides: dict | None = None) -> ReconstructParams:
    """Validate a dict; relative paths are taken relative to ``base_dir`` (the YAML file's folder). ``overrides``
    (``--set``: dotted field → value) are set after that, so a relative path among them is from the working
    directory."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with data, optics, scan, … "
                          f"(got {type(data).__name__})")
    data = _from_ptyrad(data, source)
    if base_dir is not None:
        data = resolve_config_paths(ReconstructParams, data, base_dir)
    if overrides:
        data = apply_overrides(copy.deepcopy(data), overrides)
    return validate(ReconstructParams, data, source)


def _from_ptyrad(data: dict, source: str) -> dict:
    """``data`` itself, or, for a PtyRAD params file, its translation (:mod:`phasestem.convert.ptyrad`; the data
    file's path from the working directory, as PtyRAD takes it), logged with what did not carry over."""
    from ..convert.ptyrad import is_ptyrad_params, translate

    if not is_ptyrad_params(data):
        return data
    tr = translate(data, source)
    log.warning("%s is a PtyRAD params file: translated on the fly (phasestem convert ptyrad %s --out FILE writes "
                "the translation to check and edit; docs/coming_from.md)", source, source)
    for line in tr.report_lines():
        log.warning("%s: %s", source, line)
    return tr.params


def load_params(path: str | Path, overrides: dict | None = None) -> ReconstructParams:
    """Read and validate a YAML parameter file (``yaml.safe_load``); relative paths are taken from its folder;
    ``overrides`` (``--set``) as in :func:`parse_params`."""
    path = Path(path)
    data = read_yaml_mapping(path, "parameter file")
    return parse_params(data, str(path), path.parent, overrides)


def dump_params(params: ReconstructParams, base: str | Path | None = None) -> str:
    """The fully resolved configuration as YAML text: each field's description as a comment, paths absolute
    (:func:`phasestem.base.configdump.config_yaml`), so it loads to the same run wherever it is saved; with ``base``
    (the folder the text is saved in) relative to it."""
    from ..base.configdump import config_yaml

    return config_yaml(params, "phasestem reconstruct", base)


# ---- building the dataset and the model ---------------------------------------------------
def _resampled(dataset, shape: tuple[int, int]):
    import torch

    from ..physics.resample import resize

    p = torch.as_tensor(np.array(dataset.patterns[...], dtype=np.float32))  # a copy: memory maps are read-only
    sy, sx, H, W = p.shape
    out = resize(p, tuple(shape))  # (sy, sx, h, w)
    out = out * (H * W) / (shape[0] * shape[1])
    ang = None if dataset.angular_sampling is None else (dataset.angular_sampling[0] * H / shape[0],
                                                         dataset.angular_sampling[1] * W / shape[1])
    return dataset._replace(patterns=out.numpy(), angular_sampling=ang)


def configured_scan(scan: ScanConfig, dataset_scan):
    """The dataset's scan (a :class:`~phasestem.scan.GridScan`: shape, step and origin as resolved from the file
    and the parameter file) with what the ``scan`` section adds: its rotation and affine (about the origin), or the
    explicit positions of ``scan.positions_file`` ((N, 2) or (Sy, Sx, 2) Å, finite real numbers; checked:
    :mod:`.inputs`)."""
    from dataclasses import replace

    explicit = None
    if scan.positions_file is not None:
        from .inputs import check_grid_shape, field, read_array

        with field("scan.positions_file"):
            pos = read_array(scan.positions_file, None, "scan positions")
            explicit = check_grid_shape(pos, scan.positions_file, dataset_scan.shape, "positions").astype(np.float64)
    return replace(dataset_scan, rotation=scan.rotation, affine=scan.affine, explicit=explicit)


def given_calibrations(params: ReconstructParams) -> dict[str, Any]:
    """The calibrations the parameter file gives (reader option names; a value left out or null is absent)."""
    o, s = params.optics, params.scan
    given = {"energy": o.energy, "semiangle": o.semiangle, "scan_step": s.step, "scan_origin": s.origin,
             "scan_shape": s.shape, "aberrations": dict(o.aberrations) or None}
    if o.angular_sampling is not None:
        given["angular_sampling"] = o.angular_sampling
    elif o.sampling is not None:
        given["sampling"] = o.sampling
    return {k: v for k, v in given.items() if v is not None}


def build_dataset(params: ReconstructParams, sources: dict[str, str] | None = None, warn: bool = True):
    """Load the data file with :func:`phasestem.io.load` and apply the data/optics/scan settings.

    Every calibration the parameter file leaves out (or null) is the file's; one it gives wins, with a warning
    (log and stderr) naming the field and both values when it differs from the file's (``warn``). The resolved
    settings and their sources are ``dataset.metadata['settings']`` (a list of
    :class:`phasestem.base.provenance.Setting`); ``sources`` labels values of the parameter file by field (default
    ``YAML``; e.g. ``{"optics.semiangle": "calibration"}`` for a file written by ``phasestem calibrate``)."""
    from .. import io
    from ..base.errors import MissingCalibrationError

    d, o, s = params.data, params.optics, params.scan
    if "defocus" in o.aberrations:
        log.warning("optics.aberrations.defocus = %g is abTEM's/py4DSTEM's convention: C10 = %g Å (a crossover %g Å "
                    "%s the entrance surface). If your file's 'defocus' means the opposite, give C10 instead.",
                    o.aberrations["defocus"], -o.aberrations["defocus"], abs(o.aberrations["defocus"]),
                    "beyond" if o.aberrations["defocus"] > 0 else "before")
    options = dict(d.reader_options)
    options.update(given_calibrations(params))
    if d.patterns_key is not None:
        options["patterns_key"] = d.patterns_key
    try:
        ds = io.load(d.file, format=d.format, **options)
    except MissingCalibrationError as exc:
        field = CALIBRATION_FIELDS.get(exc.name, exc.name)
        raise ConfigError(f"{field}: not given, and {d.file} does not hold it ({_WHAT[exc.name]}); give {field}"
                          ) from None
    except ShapeError as exc:
        if s.shape is not None and "scan" in str(exc):
            n = s.shape[0] * s.shape[1]
            raise ConfigError(f"scan.shape: {tuple(s.shape)} = {n} positions does not match the data ({exc})") from None
        raise ConfigError(f"data.file: {exc}") from None
    except InputFileError as exc:
        field = "data.patterns_key" if d.patterns_key is not None and d.patterns_key in str(exc) else "data.file"
        raise InputFileError(f"{field}: {exc}") from None
    return configured_dataset(params, ds, sources, warn)


def configured_dataset(params: ReconstructParams, ds, sources: dict[str, str] | None = None, warn: bool = True):
    """The second half of :func:`build_dataset`: ``ds`` as a reader returned it (``data.file``'s, or a detector
    stream's, :mod:`phasestem.live`) with the parameter file's checks, records, scan and data transforms applied."""
    from ..base.provenance import conflict_messages

    d, s = params.data, params.scan
    if s.shape is not None and tuple(ds.scan_shape) != tuple(s.shape):
        raise ConfigError(f"scan.shape: {tuple(s.shape)} = {s.shape[0] * s.shape[1]} positions but {d.file} has "
                          f"{ds.n_patterns} patterns in a {ds.scan_shape[0]}×{ds.scan_shape[1]} scan")
    if warn:
        for message in conflict_messages(ds.metadata, CALIBRATION_FIELDS, sources or "YAML",
                                         " (leave {field} out, or null, to use the file's)"):
            log.warning(message)
    for name, what in (("semiangle", ds.semiangle), ("angular_sampling", ds.angular_sampling)):
        if what is None:
            field = CALIBRATION_FIELDS[name]
            also = " or optics.sampling (Å)" if name == "angular_sampling" else ""
            raise ConfigError(f"{field}: not given, and {d.file} does not hold it ({_WHAT[name]}); give {field}{also}")
    if d.dose is not None:  # the original file's record, carried by calibrate (calibrated.npy holds none)
        ds.metadata["dose"] = float(d.dose)
    if d.counts is not None:  # io.counts: the parameter file's word wins
        from ..io.counts import COUNTS_KEY, REASON_KEY

        label = (sources or {}).get("data.counts", "YAML")
        ds.metadata[COUNTS_KEY] = bool(d.counts)
        ds.metadata[REASON_KEY] = f"data.counts: {str(bool(d.counts)).lower()} ({label})"
    ds.metadata["settings"] = geometry_settings(params, ds, sources)
    if s.rotation or s.affine is not None or s.positions_file is not None:
        ds = ds._replace(positions=configured_scan(s, ds.scan).positions())
    ds = _with_detector_shifts(params, ds)  # from here on they follow the patterns
    if d.scan_subset is not None:
        r0, r1, c0, c1 = d.scan_subset
        ds = ds.scan_subset(slice(r0, r1), slice(c0, c1))
    ds = data_transforms(ds, d)
    if ds.detector_shifts is not None:
        from .inputs import check_shifts_on_detector, field

        with field("data.detector_shifts"):
            check_shifts_on_detector(ds.detector_shifts, Path(d.detector_shifts), ds.pattern_shape)
    return ds


def data_transforms(ds, d: DataConfig):
    """``ds`` with the ``data`` section's detector transforms, in their order: transpose and flips, crop, bin,
    resample, pad (each pattern alone: a live scan's new frames take the same path as a file's)."""
    if d.transpose or d.flip_y or d.flip_x:
        ds = ds.transformed(flip_y=d.flip_y, flip_x=d.flip_x, transpose=d.transpose)
    if d.crop is not None:
        ds = ds.cropped(tuple(d.crop))
    if d.bin > 1:
        ds = ds.binned(d.bin)
    if d.resample is not None:
        ds = _resampled(ds, tuple(d.resample))
    if d.pad is not None:
        ds = ds.padded(tuple(d.pad))
    return ds


#: what each calibration is, for the message when neither the parameter file nor the data file gives it
_WHAT = {"energy": "the beam energy, eV", "scan_step": "the scan step, Å", "semiangle": "the probe semi-angle, mrad",
         "angular_sampling": "the detector pixel, mrad"}


def _with_detector_shifts(params: ReconstructParams, dataset):
    """``dataset`` (as read, before the data transforms) carrying ``data.detector_shifts``: (Sy, Sx, 2) of its scan
    or one (y, x) px shift per pattern, in the file's detector axes (:mod:`.inputs` checks; every refusal names the
    field and the file). The transforms of :func:`build_dataset` then move them with the patterns."""
    from .inputs import check_grid_shape, field, read_array

    d = params.data
    if d.detector_shifts is None:
        return dataset
    path = Path(d.detector_shifts)
    with field("data.detector_shifts"):
        arr = read_array(path, None, "detector shifts").astype(np.float64)
        if arr.shape[-1:] != (2,) or arr.ndim not in (2, 3):
            raise ShapeError(f"{path} must hold (Sy, Sx, 2) or (N, 2) px, got shape {arr.shape}")
        if d.resample is not None:
            raise ConfigError("cannot be combined with data.resample (scale the shifts by the resampling factor "
                              "yourself, or resample nothing)")
        arr = check_grid_shape(arr, path, dataset.scan_shape, "shifts")
    return dataset._replace(detector_shifts=arr.reshape(-1, 2))


def build_model(params: ReconstructParams, dataset, initial_phase: np.ndarray | None = None) -> Ptychography:
    """The model of ``params.model`` for ``dataset`` (nominal probe from the optics). The input files
    (initial phase and probe) are read and checked first, each refusal naming its field; ``initial_phase``
    (2-D rad): the image of ``model.initial_phase`` already in memory (its file is then not read)."""
    from ..physics.upsampling import choose_upsampling
    from .budget import ObjectSizeError
    from .inputs import check_phase_image, check_probe, field, load_phase_image, load_probe_file

    m = params.model
    ip, phase, probe = m.initial_phase, None, None
    if m.initial_probe is not None:
        with field("model.initial_probe"):
            probe = load_probe_file(m.initial_probe.file, m.initial_probe.key)
            u = choose_upsampling(m.upsampling, dataset.semiangle, tuple(dataset.sampling), dataset.energy)[0]
            fine = tuple(n * u for n in dataset.pattern_shape)  # a probe of a run at the same upsampling
            check_probe(probe, m.initial_probe.file, fine if probe.shape[-2:] == fine else dataset.pattern_shape)
    if ip is not None:
        with field("model.initial_phase"):
            phase = load_phase_image(ip.file, ip.key) if initial_phase is None else initial_phase
            check_phase_image(phase, ip.file, ip.sampling or dataset.sampling, dataset.sampling,
                              np.asarray(dataset.positions_angstrom()))
    shifts = None if dataset.detector_shifts is None else np.ascontiguousarray(dataset.detector_shifts, np.float32)
    try:
        model = Ptychography.from_dataset(dataset, ModelOptions.from_config(
            m, params.optics, probe=probe, initial_phase=phase, detector_shifts=shifts))
    except ObjectSizeError as exc:
        if params.scan.positions_file is None:
            raise
        pos = np.asarray(dataset.positions_angstrom())
        span = pos.max(0) - pos.min(0)
        raise ConfigError(f"scan.positions_file: {params.scan.positions_file}: the positions span {span[0]:.3g} × "
                          f"{span[1]:.3g} Å; {exc.size} (positions are in Å)") from None
    except PhasestemError:
        raise
    except ValueError as exc:  # band-limit and similar optics errors (the input files were checked above)
        raise ConfigError(f"optics: {exc}") from None
    return model


def run_sections(params: ReconstructParams) -> dict:
    """The parameter file's ``run`` section, its resolved ``losses`` and its ``constraints``, as the keywords
    ``run``, ``losses`` and ``constraints`` of :func:`phasestem.recon.engine.optimize_with_options` (the model's
    ``*_optimize`` methods): the validated sections themselves, no field copied."""
    return {"run": params.run, "losses": params.losses, "constraints": params.constraints}

