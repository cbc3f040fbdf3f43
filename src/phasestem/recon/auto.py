"""``phasestem reconstruct FILE --auto``: read → calibrate → direct-method start → AD ptychography.

Everything measured is written beside the results, so the run can be repeated with
``phasestem reconstruct OUT/params.yaml``:

    OUT/calibration/   calibrated.npy, calibration.json, calibration*.png (phasestem calibrate's output)
    OUT/init_<method>.npy   the direct-method phase that starts the object
    OUT/params.yaml     the calibrated parameter file of this run (data → calibration/calibrated.npy; paths relative
                        to OUT, so the folder can move)
    OUT/results.h5 …    what 'phasestem reconstruct' writes
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import ConfigError
from .params import InitialPhase, ReconstructParams, build_dataset, dump_params, parse_params

log = logging.getLogger("phasestem.recon")

INIT_METHODS = ("none", "dpc", "parallax", "ssb")

#: AD settings of an --auto run (every one can be changed in OUT/params.yaml and re-run)
AUTO_MODEL: dict[str, Any] = {
    "n_slices": 1, "n_probe_modes": 1,
    "learning_rates": {"probe": {"start": 3}},  # lsq solver: object and probe steps at its defaults
}
#: (no defocus-sign check: --auto takes C10 with its sign from the parallax fit.) precondition_batches: 16 Gauss–Newton
#: steps of the whole data per epoch whatever the scan size, with small, fast batches. Measured on 64 × 64 positions
#: of the 128 × 128 Merlin benchmark (0.45 Å step, 1e5 e⁻, 10 epochs from the same SSB start): batch 16 alone →
#: phase r 0.9705; batch 256 → 0.9807 at 1.6× the time per epoch; batch 16 with precondition_batches 16 → 0.9810.
AUTO_RUN: dict[str, Any] = {"n_epochs": 10, "batch_size": 16, "precondition_batches": 16, "checkpoint_every": 1,
                            "check_optics": False}
#: the scan positions --auto refines (Å per step of optimizers.RowAdam, from epoch 3) where the data can place them
#: (:func:`refines_positions`), the affine part of the corrections removed each epoch (constraint position_affine).
#: Chosen on the development half of benchmarks/independent (r at 20 iterations, the benchmark's settings with this
#: schedule): dev_distort 0.6446 → 0.6635, dev_strong 0.9916 → 0.9920, dev_coherence 0.9849 → 0.9849; at low dose
#: it fits noise (plain Adam, no affine removal: dev_dose1e4 0.965 → 0.958, dev_dose1e3 0.816 → 0.721). Its cost
#: where the positions were exact: abTEM's undistorted thin_high (benchmarks/plan) E_φ 0.090 → 0.096
AUTO_POSITIONS: dict[str, Any] = {"lr": 0.03, "start": 3}


def refines_positions(counts_per_pattern: float | None) -> bool:
    """Whether --auto refines the scan positions: uncounted data (None) or more than
    :data:`~phasestem.recon.schedule.LOW_DOSE_COUNTS` counts per pattern, where the position gradient is above the
    shot noise (at 1e4 e⁻ refining them lost 0.007 in r, at 1e3 0.095)."""
    from .schedule import LOW_DOSE_COUNTS

    return counts_per_pattern is None or counts_per_pattern > LOW_DOSE_COUNTS


def direct_phase(dataset, method: str):
    """A :class:`phasestem.direct.frame.PhaseImage` of ``method`` (dpc, parallax, ssb) for a calibrated dataset."""
    if method == "dpc":
        from ..direct.dpc import dpc_phase

        return dpc_phase(dataset)
    if method == "parallax":
        from ..direct.parallax import parallax_phase

        if not dataset.aberrations.get("C10"):
            raise ConfigError("--init parallax needs a defocus: optics.aberrations.C10 is 0 or missing "
                              "(focused data: use --init ssb or dpc)")
        return parallax_phase(dataset)
    if method == "ssb":
        from ..direct.ssb import ssb_phase

        return ssb_phase(dataset)
    raise ConfigError(f"--init {method!r}: expected one of {', '.join(INIT_METHODS)}")


def apply_init(params: ReconstructParams, method: str, out_dir: str | Path, dataset=None) -> ReconstructParams:
    """Compute the ``method`` phase, save it as OUT/init_<method>.npy and start ``params``' object from it.

    ``parallax`` also fits C10 from the data when the parameters have none.
    """
    return direct_start(params, method, out_dir, dataset)[0]


def direct_start(params: ReconstructParams, method: str, out_dir: str | Path, dataset=None):
    """:func:`apply_init`, also returning the start phase (float32 (Ny, Nx) rad, dataset frame; None for 'none')
    as written to OUT/init_<method>.npy, for a run that takes it in memory."""
    if method in (None, "none"):
        return params, None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(params, warn=False) if dataset is None else dataset  # the run warns
    if dataset.detector_shifts is not None:  # the direct methods need every disk on the central pixel: resample
        from ..calibrate.correct import ResampledPatterns  # for them alone

        moves = -dataset.detector_shifts.astype(np.float32).reshape(*dataset.scan_shape, 2)
        dataset = dataset._replace(patterns=ResampledPatterns(dataset.patterns, moves),
                                   detector_shifts=None)
    if method == "parallax" and not dataset.aberrations.get("C10"):  # neither the parameter file nor the data file
        from ..calibrate.parallax import fit_defocus

        fitted = fit_defocus(dataset).aberrations()
        log.info("tcBF parallax: C10 = %.1f Å", fitted["C10"])
        params.optics.aberrations["C10"] = round(float(fitted["C10"]), 3)
        dataset = dataset._replace(aberrations={**dataset.aberrations, "C10": params.optics.aberrations["C10"]})
    image = direct_phase(dataset, method)
    path = out / f"init_{method}.npy"
    image.save(path)
    params.model.initial_phase = InitialPhase(file=path.resolve(), sampling=tuple(image.sampling))
    log.info("%s start: phase image %s at %.4g Å/px → %s", method, image.phase.shape, image.sampling[0], path)
    return params, image.phase.astype(np.float32)  # what the record holds


def auto_params(calib, files: dict[str, Path], out_dir: Path, epochs: int | None = None,
                device: str | None = None, overrides: dict[str, Any] | None = None) -> ReconstructParams:
    """The parameters of a :class:`~phasestem.calibrate.pipeline.Calibration` (:meth:`params_dict`, in memory)
    for the corrected patterns and descan ``files`` of :func:`phasestem.calibrate.files.calibrate_file`, completed
    with the --auto AD settings; ``overrides`` (``--set``: dotted field → value) win over all of them."""
    shifts = files.get("detector_shifts")
    data = calib.params_dict(Path(files["patterns"]).resolve(), None if shifts is None else Path(shifts).resolve())
    data.setdefault("model", {}).update({k: v for k, v in AUTO_MODEL.items() if k not in data["model"]})
    counted = calib.counts is not None and calib.counts.counted and calib.mean_pattern is not None
    counts = float(calib.mean_pattern.sum()) if counted else None  # counts per pattern; None: not counts
    rates = data["model"]["learning_rates"] = dict(data["model"].get("learning_rates", {}))
    if "positions" not in rates:
        if refines_positions(counts):
            rates["positions"] = dict(AUTO_POSITIONS)
            data.setdefault("constraints", {}).setdefault("position_affine", {"enabled": True})
            log.info("--auto refines the scan positions (%s Å per step from epoch %d): %s", AUTO_POSITIONS["lr"],
                     AUTO_POSITIONS["start"], "uncounted data" if counts is None else f"{counts:.3g} counts per "
                     "pattern")
        else:
            log.info("--auto keeps the scan positions nominal: %.3g counts per pattern are too few to place them",
                     counts)
    run = data.setdefault("run", {})
    run.update({k: v for k, v in AUTO_RUN.items() if k not in run})
    run["out_dir"] = str(Path(out_dir).resolve())
    if epochs:
        run["n_epochs"] = int(epochs)
    if device:
        run["device"] = device
    return parse_params(data, "calibrated params", overrides=overrides)


def check_overrides(file: str | Path, out_dir: str | Path, epochs: int | None = None, device: str | None = None,
                    overrides: dict[str, Any] | None = None) -> None:
    """Refuse bad ``--set`` overrides (an unknown key, a value the field does not take), ``--epochs`` or
    ``--device`` in one line before anything is read or calibrated: they are validated on a parameter file of the
    shape :func:`auto_params` writes, with the sections calibration fills left at their defaults (no field of
    those depends on another), so a value refused here would be refused after calibration too."""
    if not overrides and not epochs and not device:
        return
    run = {**AUTO_RUN, "out_dir": str(Path(out_dir).resolve())}
    if epochs:
        run["n_epochs"] = int(epochs)
    if device:
        run["device"] = device
    data = {"data": {"file": str(Path(file).resolve())}, "model": copy.deepcopy(AUTO_MODEL), "run": run}
    parse_params(data, "--set" if overrides else "--auto", overrides=overrides)


def write_params(params: ReconstructParams, path: Path, header: str = "") -> Path:
    """The resolved parameter file, with a comment header (written atomically); its paths relative to its folder
    (the run folder, which holds the calibrated data and the start), so that a moved run folder reruns."""
    from ..base.safety import atomic_file

    with atomic_file(path, field="--out") as tmp:
        tmp.write_text(header + dump_params(params, Path(path).parent))
    return path


def run_auto(file: str | Path, out_dir: str | Path, energy: float | None, semiangle: float | None, scan_step,
             angular_sampling: float | None = None, init: str = "ssb", reader_options: dict | None = None,
             format: str | None = None, epochs: int | None = None, device: str | None = None,
             run: bool = True, overrides: dict[str, Any] | None = None, resume: bool = False, **calibrate_options):
    """Read → calibrate → direct-method start → AD, holding ``out_dir`` throughout (:mod:`phasestem.base.lock`).
    ``overrides`` (``--set``) change fields of the parameters written. Returns (params, calibration or None, model
    or None).

    An --auto run is a run like any other: it writes a checkpoint after every epoch; ``resume`` continues the run
    in ``out_dir`` from its checkpoint (its OUT/params.yaml, no new calibration; ``epochs`` may extend it); an
    ``out_dir`` that already holds a finished or interrupted --auto run is refused in one line rather than run
    again from the start."""
    from ..base.lock import hold_output
    from .run import RECON_COMMAND

    out = Path(out_dir)
    if not resume:  # a resumed run validates them on its params.yaml at once
        check_overrides(file, out, epochs, device, overrides)
    with hold_output(out, RECON_COMMAND + " --auto"):
        if resume:
            return resume_auto(out, epochs, device, overrides)
        refuse_earlier_run(out)
        return _run_auto(file, out, energy, semiangle, scan_step, angular_sampling, init, reader_options,
                         format, epochs, device, run, overrides, **calibrate_options)


def refuse_earlier_run(out: Path) -> None:
    """A one-line :class:`~phasestem.base.errors.ConfigError` when ``out`` holds an --auto run's results or
    checkpoint: a finished run is not silently run again, an interrupted one is continued with ``--resume``."""
    if (out / "results.h5").exists():
        raise ConfigError(f"--out {out}: holds a finished --auto run (results.h5); continue it with --resume "
                          "(--epochs N for more epochs), or give another --out")
    if (out / "checkpoint.pt").exists():
        raise ConfigError(f"--out {out}: holds an interrupted --auto run (checkpoint.pt); continue it with "
                          "--resume, or give another --out")


def resume_auto(out: Path, epochs: int | None = None, device: str | None = None,
                overrides: dict[str, Any] | None = None):
    """Continue the --auto run in ``out`` from OUT/checkpoint.pt with its OUT/params.yaml (``epochs``: the run's
    new total; ``overrides``: ``--set``). Returns (params, None, model)."""
    from .params import load_params
    from .run import run_reconstruction

    missing = [name for name in ("params.yaml", "checkpoint.pt") if not (out / name).exists()]
    if missing:
        raise ConfigError(f"--out {out}: nothing to resume: no {' and no '.join(missing)} of an --auto run there "
                          "(run it without --resume)")
    params = load_params(out / "params.yaml", overrides)
    params.run.out_dir = out.resolve()
    if epochs:
        params.run.n_epochs = int(epochs)
    if device:
        params.run.device = device
    log.info("--auto --resume: %s from %s", out / "params.yaml", out / "checkpoint.pt")
    return params, None, run_reconstruction(params, resume=True, sources=calibration_sources(out))


def calibration_sources(out: Path) -> dict[str, str] | None:
    """The ``sources`` (field → who gave the value) that OUT/calibration/calibration.json records, None if it
    cannot be read: a resumed --auto run labels its settings as the first part did."""
    from ..base.configfile import loads_json

    try:
        record = loads_json((out / "calibration" / "calibration.json").read_text(), "calibration.json")
    except (OSError, ValueError, ConfigError):
        return None
    sources = record.get("sources") if isinstance(record, dict) else None
    return {str(k): str(v) for k, v in sources.items()} if isinstance(sources, dict) else None


def _run_auto(file, out: Path, energy, semiangle, scan_step, angular_sampling, init, reader_options, format, epochs,
              device, run, overrides=None, **calibrate_options):
    from ..calibrate.files import calibrate_file
    from ..calibrate.output import yaml_text
    from ..io.counts import CountsDecision
    from .run import run_reconstruction

    calib, files = calibrate_file(file, out / "calibration", energy=energy, scan_step=scan_step,
                                  semiangle=semiangle, angular_sampling=angular_sampling,
                                  reader_options=reader_options, format=format, **calibrate_options)
    log.info("calibration: %s", calib.summary())
    if "rotation" in calib.undetermined:  # the run goes on at the default, which may be far off
        log.warning("--auto: the scan rotation is undetermined by the data (%s); the run goes on at 0°",
                    calib.undetermined["rotation"])
    params = auto_params(calib, files, out, epochs, device, overrides)
    if init == "parallax" and not calib.aberrations.get("C10"):
        log.info("no defocus measured (focused data): starting from SSB instead of parallax")
        init = "ssb"
    # the corrected patterns are read once, here; the direct start and the run take this dataset and the start
    # phase in memory (OUT/params.yaml, calibration/params.yaml and init_<method>.npy are the record of the run)
    dataset = build_dataset(params, calib.sources)  # data.dose and data.counts: the source file's record
    if calib.counts is not None:  # the run's settings table says why, in the calibration's words
        CountsDecision(calib.counts.counted, f"calibration of {Path(file).name}: {calib.counts.reason}"
                       ).remember(dataset)
    optics = dict(params.optics.aberrations)
    params, start = direct_start(params, init, out, dataset)
    if params.optics.aberrations != optics:  # a fitted defocus: the run builds the dataset of its parameters
        dataset, start = None, None
    shifts = files["detector_shifts"].name if "detector_shifts" in files else None
    record = yaml_text(calib, calib.params_dict(files["patterns"].name, shifts), file)  # calibration/params.yaml
    header = "".join(line + "\n" for line in record.splitlines() if line.startswith("#"))
    header += f"# phasestem reconstruct {file} --auto (--init {init}); repeat with: phasestem reconstruct " \
              f"{out / 'params.yaml'}\n"
    write_params(params, out / "params.yaml", header)
    model = run_reconstruction(params, sources=calib.sources, dataset=dataset, start_phase=start) if run else None
    return params, calib, model
