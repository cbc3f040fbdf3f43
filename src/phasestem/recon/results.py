"""Reconstruction results in HDF5 (no pickle), written atomically: phasestem's own layout (``results.h5``) and
EMD 1.0 (``results.emd``) for py4DSTEM and HyperSpy users.

Layout of ``results.h5``::

    object/phase            (K, S, Ny, Nx) float32  rad, per object mode and slice
    object/amplitude        (K, S, Ny, Nx) float32
    object/phase_sum        (Ny, Nx)       float32  Σ over slices, occupancy-weighted over modes
    object/amplitude_prod   (Ny, Nx)       float32  Π over slices, occupancy-weighted over modes
    object/weights          (K,)                    object-mode occupancies
    probe/real_space        (M, ny, nx)    complex64  (Σ|ψ|² ≈ 1)
    probe/fourier_space     (M, ny, nx)    complex64  fftshift-ed spectrum
    positions               (N, 2)  Å  dataset frame (corrected)
    positions_initial       (N, 2)  Å  dataset frame (start)
    tilt                    (2,) or (N, 2)  mrad
    slice_thickness         ()  Å
    loss/<name>             (E,)  per-epoch history (loss, seconds, gaussian, …, loss_ptyrad, and psnr, ssim,
                                  phase_error, frc_resolution when a ground truth was given)
    history/epoch           (E,)  epochs of the rows below
    history/slice_thickness (E,)  Å after each epoch
    history/tilt            (E, 2) or (E, N, 2)  mrad after each epoch
    uncertainty/phase_sigma      (S, Ny, Nx)  float32  rad, the phase's standard deviation per slice (inf: unlit)
    uncertainty/phase_sum_sigma  (Ny, Nx)     float32  rad, of object/phase_sum
    uncertainty/fisher           (Ny, Nx)     float32  rad⁻², Fisher information of one slice pixel's phase
    uncertainty/constrained      (Ny, Nx)     uint8    1 where the scan lights the pixel enough to constrain it
                            (when computed, run.uncertainty; attrs: noise, band_fraction, seconds, scale (κ),
                            scale_note, leaves_out, shape_exponent (p: σ ∝ σ_Fisher^p);
                            each dataset's attr units; phasestem.recon.uncertainty). The σ maps are in the object
                            frame, pixel for pixel with object/phase and object/phase_sum; results.emd holds the
                            same arrays under the same names, cropped to the scanned field
    metrics/<name>          ()    final comparison with the ground truth (when given): psnr, ssim, phase_error,
                                  frc_resolution (Å); metrics/frc_frequencies, metrics/frc_curve (rings)
    provenance/<field>      group per setting of the run (scan.step, optics.energy, optics.aberrations.C10,
                            losses.gaussian, …; constraints.<name>.enabled: what an 'auto' rule decided, its
                            reason in the note), attrs: value, unit, source (file, YAML, flag, calibration or
                            default), file (what the data file held, when it held something), note
    geometry                group, attrs: the optics the run used (:func:`optics_record`): energy (eV), semiangle
                            (mrad), angular_sampling (mrad/px, y x), scan_step (Å, y x), sampling (Å, the
                            reconstruction pixel, y x); a field the data did not give is absent;
                            geometry/aberrations attrs: C10, C30, … (Å). What a restorer is checked against
    attrs: sampling (Å), energy (eV), origin (Å: object-frame position of dataset 0 Å),
           epoch, format = "phasestem-recon-results", config (YAML text, when given)

``results.emd`` (:func:`save_emd`) is an EMD 1.0 file written with ``emdfile``, the format py4DSTEM ≥ 0.14
saves and reads (``py4DSTEM.read("results.emd")``); HyperSpy opens it through RosettaSciIO's EMD reader
(``hs.load("results.emd")``: one signal per array, with the axes below). One EMD tree, ``phasestem_reconstruction``::

    object_phase      (fy, fx)     float32    rad, Σ over slices (results.h5 object/phase_sum), scanned field
    object_amplitude  (fy, fx)     float32    Π over slices (object/amplitude_prod), scanned field
    slice_phases      (S, fy, fx)  float32    rad, per slice (first object mode), only when S > 1
    phase_sum_sigma   (fy, fx)     float32    rad, standard deviation of object_phase (when computed)
    phase_sigma       (S, fy, fx)  float32    rad, standard deviation of slice_phases (when computed, S > 1)
    probe             (ny, nx) or (M, ny, nx)  complex64  Σ|ψ|² ≈ 1 (one mode: 2-D)
    metadata "phasestem": energy (eV), sampling (Å), origin (Å), slice_thickness (Å), epoch, format,
                          field (y0, y1, x0, x1: the object pixels kept), object_shape (Ny, Nx)

The object arrays hold the **scanned field**: the object pixels inside the bounding box of the probe positions,
what the scan determines (``recon.truth.field_slices``). The padding the reconstruction needs around it (a probe
window's worth on each side, often several times the field's area) is only in results.h5. The σ maps keep
results.h5's names (``uncertainty/phase_sum_sigma``, ``uncertainty/phase_sigma``) and are those arrays over the
same field, ``h5[..., y0:y1, x0:x1]`` with ``field`` of the metadata, on the axes of the phase they belong to
(dataset frame), unit ``rad`` (each array's ``units``, as the results.h5 datasets' attribute).

(No array's name contains another's: RosettaSciIO's reader stacks arrays whose paths contain one another.)
An older ``results.h5`` converts with ``save_emd(load_results("results.h5"), "results.emd")``.

Axes are named y, x in Å: the object's in the dataset frame (offset −origin, so 0 Å is the first scan
position, as ``positions`` in results.h5), the probe's centred (0 Å at pixel n//2); slices along z by the
slice thickness (Å); probe modes by index.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from ..base.safety import atomic_file, atomic_hdf5, check_room
from .truth import field_slices

FORMAT = "phasestem-recon-results"
#: unit of each array of results.h5's ``uncertainty`` group (its ``units`` attribute; results.emd's arrays alike)
UNCERTAINTY_UNITS = {"phase_sigma": "rad", "phase_sum_sigma": "rad", "fisher": "rad^-2", "constrained": ""}
#: name of the EMD tree in ``results.emd``
EMD_ROOT = "phasestem_reconstruction"


def optics_record(dataset, sampling, upsampling: int = 1) -> dict:
    """The optics a run of ``dataset`` uses at the reconstruction pixel ``sampling`` (Å): energy eV, semiangle mrad,
    aberrations {name: Å}, angular_sampling mrad/px, scan_step Å, sampling Å (None: the data do not say), and
    ``upsampling``, the detector's pixel λ/(N·Δk) over ``sampling``; what ``results.h5``'s ``geometry`` group
    records and a restorer's card is compared with."""
    def pair(v):
        return None if v is None else [float(x) for x in v]

    semiangle = None if dataset.semiangle is None else float(dataset.semiangle)
    return {"energy": float(dataset.energy), "semiangle": semiangle,
            "aberrations": {str(k): float(v) for k, v in dict(dataset.aberrations or {}).items()},
            "angular_sampling": pair(dataset.angular_sampling), "scan_step": pair(dataset.scan_step),
            "sampling": pair(sampling), "upsampling": int(upsampling)}


def keep_recorded_upsampling(params, results: dict) -> None:
    """A finished run rebuilt from its parameters (restore's data guard, calibrate-sigma) gets the object pixel it
    ran at: ``params.model.upsampling`` from ``results``' geometry record (:func:`load_results`; 1 for a run that
    predates the record, all of which ran on the detector's pixel) unless its parameter file names one."""
    if "upsampling" not in params.model.model_fields_set:
        params.model.upsampling = int((results.get("geometry") or {}).get("upsampling", 1))


def _write_geometry(f: h5py.File, record: dict) -> None:
    g = f.create_group("geometry")
    for key, value in record.items():
        if key != "aberrations" and value is not None:
            g.attrs[key] = value
    g.create_group("aberrations").attrs.update(record.get("aberrations") or {})


def _read_geometry(g: h5py.Group) -> dict:
    out = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in g.attrs.items()}
    out["aberrations"] = {k: float(v) for k, v in g["aberrations"].attrs.items()} if "aberrations" in g else {}
    return out


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def results_dict(model, metrics: dict | None = None) -> dict:
    """The results as a plain dict of numpy arrays and numbers, with the keys of :func:`load_results`
    (``obj_phase``, ``obj_amplitude``, ``phase_sum``, ``amplitude_prod``, ``obj_weights``, ``probe``,
    ``probe_fourier``, ``positions``, ``positions_initial``, ``tilt``, ``slice_thickness``, ``loss``, ``history``,
    ``metrics`` when given, and ``attrs``)."""
    w = _np(model.obj_weights).astype(np.float64)
    w = w / w.sum()
    phase = _np(model.obj_phase).astype(np.float32)
    amp = _np(model.obj_amplitude).astype(np.float32)
    probe = _np(model.get_probe()).astype(np.complex64)
    keys = sorted({k for h in model.loss_history for k in h})
    out = {
        "attrs": {"format": FORMAT, "sampling": list(model.sampling), "energy": model.energy,
                  "origin": list(model.origin), "epoch": model.epoch},
        "obj_phase": phase,
        "obj_amplitude": amp,
        "phase_sum": (phase.sum(1) * w[:, None, None]).sum(0).astype(np.float32),
        "amplitude_prod": (amp.prod(1) * w[:, None, None]).sum(0).astype(np.float32),
        "obj_weights": w.astype(np.float32),
        "probe": probe,
        "probe_fourier": np.fft.fftshift(np.fft.fft2(probe, norm="ortho"), axes=(-2, -1)).astype(np.complex64),
        "positions": _np(model.dataset_positions()),
        "positions_initial": _np(model.initial_positions) - np.asarray(model.origin),
        "tilt": _np(model.tilt),
        "slice_thickness": np.asarray(float(model.slice_thickness.detach())),
        "loss": {k: np.array([h.get(k, np.nan) for h in model.loss_history], dtype=np.float64) for k in keys},
        "history": model.geometry_arrays(),
    }
    if metrics:
        out["metrics"] = {k: np.asarray(v) for k, v in metrics.items()}
    u = getattr(model, "uncertainty", None)
    if u is not None:
        out["uncertainty"] = u.as_arrays()
        out["uncertainty_attrs"] = {"noise": u.noise, "band_fraction": u.band_fraction, "seconds": u.seconds,
                                    "scale": u.scale, "scale_note": u.scale_note, "leaves_out": u.leaves_out,
                                    "shape_exponent": u.shape_exponent}
    return out


def save_results(model, path, config_text: str | None = None, metrics: dict | None = None,
                 provenance: list | None = None) -> Path:
    """Write the model's results to ``path`` atomically (:func:`phasestem.base.safety.atomic_file`: ``NAME.<pid>.tmp``
    then rename); ``metrics``: scalars/arrays for ``metrics/`` (comparison with a ground truth); ``provenance``:
    :class:`phasestem.base.provenance.Setting` rows for ``provenance/``. A path ending in ``.emd`` gets
    :func:`save_emd`'s EMD 1.0 file (object and probe with Å axes) instead."""
    path = Path(path)
    if path.suffix.lower() == ".emd":
        return save_emd(results_dict(model), path)
    r = results_dict(model, metrics)
    with atomic_hdf5(path, field="results") as f:  # built in memory: a full disk is one line, the old file kept
        f.attrs["format"] = FORMAT
        f.attrs["sampling"] = model.sampling
        f.attrs["energy"] = model.energy
        f.attrs["origin"] = model.origin
        f.attrs["epoch"] = model.epoch
        if config_text:
            f.attrs["config"] = config_text
        g = f.create_group("object")
        g.create_dataset("phase", data=r["obj_phase"], compression="gzip")
        g.create_dataset("amplitude", data=r["obj_amplitude"], compression="gzip")
        g.create_dataset("phase_sum", data=r["phase_sum"])
        g.create_dataset("amplitude_prod", data=r["amplitude_prod"])
        g.create_dataset("weights", data=r["obj_weights"])
        p = f.create_group("probe")
        p.create_dataset("real_space", data=r["probe"])
        p.create_dataset("fourier_space", data=r["probe_fourier"])
        f.create_dataset("positions", data=r["positions"])
        f.create_dataset("positions_initial", data=r["positions_initial"])
        f.create_dataset("tilt", data=r["tilt"])
        f.create_dataset("slice_thickness", data=float(r["slice_thickness"]))
        for group in ("loss", "history", "metrics", "uncertainty"):
            if group in r:
                g = f.create_group(group)
                for k, v in r[group].items():
                    d = g.create_dataset(k, data=v, **({"compression": "gzip"} if np.ndim(v) > 1 else {}))
                    if group == "uncertainty" and k in UNCERTAINTY_UNITS:
                        d.attrs["units"] = UNCERTAINTY_UNITS[k]
        if "uncertainty" in r:
            f["uncertainty"].attrs.update(r["uncertainty_attrs"])
        if getattr(model, "optics_record", None):
            _write_geometry(f, {**model.optics_record, "sampling": [float(v) for v in model.sampling]})
        if provenance:
            g = f.create_group("provenance")
            for row in provenance:
                item = g.create_group(row.field)
                for key in ("value", "unit", "source", "file", "note"):
                    if getattr(row, key) is not None:
                        item.attrs[key] = getattr(row, key)
    return path


def _axis(n: int, step: float, offset: float) -> np.ndarray:
    """EMD dim vector of a linear axis of ``n`` points, ``step`` apart from ``offset``: its first two values (emdfile
    and the readers extend them linearly), or the one value of a single-point axis."""
    return np.array([offset, offset + step]) if n > 1 else np.array([offset])


def _emd_bytes(results: dict) -> int:
    """An upper bound of the size of :func:`save_emd`'s file: the arrays it writes uncompressed and uncropped, as
    float32 / complex64, and 1 MiB of HDF5 structure and metadata."""
    sigma = results.get("uncertainty", {})
    arrays = [results["phase_sum"], results["amplitude_prod"], np.asarray(results["obj_phase"])[0],
              sigma.get("phase_sum_sigma"), sigma.get("phase_sigma")]
    return sum(4 * np.size(a) for a in arrays if a is not None) + 8 * np.size(results["probe"]) + (1 << 20)


def save_emd(results: dict, path) -> Path:
    """Write the object and probe of ``results`` (:func:`results_dict` or :func:`load_results`) as EMD 1.0 at
    ``path``, atomically, with Å axes (layout in the module docstring); returns the path."""
    import emdfile

    path = Path(path)
    attrs = results["attrs"]
    dy, dx = (float(s) for s in attrs["sampling"])
    oy, ox = (float(o) for o in attrs["origin"])
    thickness = float(results["slice_thickness"])
    yx = ["y", "x"]
    angstrom = ["A", "A"]  # py4DSTEM's spelling of Å (RosettaSciIO reads it as Å)
    root = emdfile.Root(name=EMD_ROOT)

    full = np.asarray(results["phase_sum"]).shape
    fy, fx = field_slices((np.asarray(results["positions"]) + [oy, ox]) / [dy, dx], full)

    def obj_dims(shape) -> list[np.ndarray]:
        return [_axis(shape[-2], dy, fy.start * dy - oy), _axis(shape[-1], dx, fx.start * dx - ox)]

    phase = np.asarray(results["phase_sum"], dtype=np.float32)[fy, fx]
    root.add_to_tree(emdfile.Array(data=phase, name="object_phase", units="rad", dims=obj_dims(phase.shape),
                                   dim_names=yx, dim_units=angstrom))
    amp = np.asarray(results["amplitude_prod"], dtype=np.float32)[fy, fx]
    root.add_to_tree(emdfile.Array(data=amp, name="object_amplitude", units="", dims=obj_dims(amp.shape),
                                   dim_names=yx, dim_units=angstrom))
    slices = np.asarray(results["obj_phase"], dtype=np.float32)[0][:, fy, fx]
    if slices.shape[0] > 1:
        root.add_to_tree(emdfile.Array(data=slices, name="slice_phases", units="rad",
                                       dims=[_axis(slices.shape[0], thickness, 0.0), *obj_dims(slices.shape)],
                                       dim_names=["z", *yx], dim_units=["A", *angstrom]))
    if "uncertainty" in results:
        sigma = np.asarray(results["uncertainty"]["phase_sum_sigma"], dtype=np.float32)[fy, fx]
        root.add_to_tree(emdfile.Array(data=sigma, name="phase_sum_sigma", units=UNCERTAINTY_UNITS["phase_sum_sigma"],
                                       dims=obj_dims(sigma.shape), dim_names=yx, dim_units=angstrom))
        per_slice = np.asarray(results["uncertainty"]["phase_sigma"], dtype=np.float32)[:, fy, fx]
        if per_slice.shape[0] > 1:
            dims = [_axis(per_slice.shape[0], thickness, 0.0), *obj_dims(per_slice.shape)]
            root.add_to_tree(emdfile.Array(data=per_slice, name="phase_sigma", units=UNCERTAINTY_UNITS["phase_sigma"],
                                           dims=dims, dim_names=["z", *yx], dim_units=["A", *angstrom]))
    probe = np.asarray(results["probe"], dtype=np.complex64)
    ny, nx = probe.shape[-2:]
    pdims = [_axis(ny, dy, -(ny // 2) * dy), _axis(nx, dx, -(nx // 2) * dx)]
    if probe.shape[0] == 1:
        root.add_to_tree(emdfile.Array(data=probe[0], name="probe", units="", dims=pdims, dim_names=yx,
                                       dim_units=angstrom))
    else:
        root.add_to_tree(emdfile.Array(data=probe, name="probe", units="", dims=[_axis(len(probe), 1.0, 0.0), *pdims],
                                       dim_names=["mode", *yx], dim_units=["index", *angstrom]))
    meta = emdfile.Metadata(name="phasestem")
    meta["format"] = FORMAT
    meta["energy"] = float(attrs["energy"])  # eV
    meta["sampling"] = np.array([dy, dx])  # Å
    meta["origin"] = np.array([oy, ox])  # Å
    meta["slice_thickness"] = thickness  # Å
    meta["epoch"] = int(attrs["epoch"])
    meta["field"] = np.array([fy.start, fy.stop, fx.start, fx.stop])  # object pixels kept (y0, y1, x0, x1)
    meta["object_shape"] = np.array(full)  # (Ny, Nx) of the whole object in results.h5
    root.metadata = meta
    check_room(path, _emd_bytes(results), field="results")  # emdfile's HDF5 writes to the disk itself
    with atomic_file(path, field="results") as tmp:
        emdfile.save(str(tmp), root, mode="w")
    return path


def load_results(path) -> dict:
    """Read a results file back into a dict of arrays (``object/phase`` → ``obj_phase`` etc.). The file's structure
    is checked first (:func:`phasestem.io.hdf5.open_file`: no external link, external storage or virtual source
    leaving its folder, or ``PHASESTEM_READ_ROOT``) and every array read must have been written whole
    (:func:`phasestem.base.hdf5_links.check_written`); a refusal is one line naming the file and the dataset."""
    from ..base.errors import InputFileError
    from ..io.hdf5 import open_file

    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: results file not found")
    out: dict = {}
    with open_file(path, "phasestem results file") as f:
        if f.attrs.get("format") != FORMAT:
            raise InputFileError(f"{path}: not a phasestem reconstruction results file (attr format={FORMAT!r})")

        def read(key: str) -> np.ndarray:
            return _written(f, key, path)

        out["attrs"] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f.attrs.items()}
        out["obj_phase"] = read("object/phase")
        out["obj_amplitude"] = read("object/amplitude")
        out["phase_sum"] = read("object/phase_sum")
        out["amplitude_prod"] = read("object/amplitude_prod")
        out["probe"] = read("probe/real_space")
        out["probe_fourier"] = read("probe/fourier_space")
        for k in ("positions", "positions_initial", "tilt", "slice_thickness"):
            out[k] = read(k)
        out["loss"] = {k: read(f"loss/{k}") for k in f["loss"]}
        for group in ("history", "metrics", "uncertainty"):
            if group in f:
                out[group] = {k: read(f"{group}/{k}") for k in f[group]}
        if "uncertainty" in f:
            out["uncertainty_attrs"] = {k: (v.tolist() if hasattr(v, "tolist") else v)
                                        for k, v in f["uncertainty"].attrs.items()}
        if "geometry" in f:
            out["geometry"] = _read_geometry(f["geometry"])
        if "provenance" in f:
            out["provenance"] = {k: {a: (v.tolist() if hasattr(v, "tolist") else v) for a, v in g.attrs.items()}
                                 for k, g in f["provenance"].items()}
    return out


def _written(f: h5py.File, key: str, path: Path) -> np.ndarray:
    """Dataset ``key`` of the open results file ``f``, after checking it was written whole."""
    from ..base.hdf5_links import check_written

    check_written(f[key], f"{path}:{key}")
    return f[key][...]


def load_fitted_state(model, results: dict, path: Path) -> None:
    """Set ``model``'s object, probe, positions, tilt, thickness and object-mode weights to those of ``results``
    (:func:`load_results`; ``path`` its file) into a model built from the run's parameters (``restore``'s data
    guard, ``calibrate-sigma``); a shape the run's parameter file does not build is one line."""
    from ..base.errors import InputFileError

    origin = torch.tensor(model.origin, dtype=torch.float32)
    values = {"obj_phase": results["obj_phase"], "obj_amplitude": results["obj_amplitude"],
              "obj_weights": _object_weights(path), "tilt": results["tilt"],
              "positions": torch.as_tensor(results["positions"], dtype=torch.float32) + origin,
              "probe": torch.view_as_real(torch.as_tensor(results["probe"]) * model.probe_scale),
              "slice_thickness": results["slice_thickness"]}
    with torch.no_grad():
        for name, value in values.items():
            target = getattr(model, name)
            value = torch.as_tensor(value).to(target.dtype)
            if value.shape != target.shape:
                raise InputFileError(f"{path}: {name} has shape {tuple(value.shape)}, the run's parameter file builds "
                                     f"{tuple(target.shape)}: are the results and the parameter file of one run?")
            target.copy_(value.to(target.device))
    model.history.epoch = int(results["attrs"].get("epoch", 0))


def _object_weights(path: Path) -> np.ndarray:
    """results.h5's ``object/weights`` (K,), the object modes' occupancies (not among load_results' keys)."""
    from ..io.hdf5 import open_file

    with open_file(path, "phasestem results file") as f:
        return np.asarray(f["object/weights"][...], dtype=np.float32)
