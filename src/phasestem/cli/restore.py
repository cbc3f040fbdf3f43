"""``phasestem restore RESULTS.h5 --model MODEL --out-file OUT.h5``: a trained restorer applied to a finished
reconstruction (issue 48). Writes ``phase`` (the restored phase, rad, dataset frame at the run's pixel),
``input`` (the run's phase on the same grid) and ``field`` (the scanned field), with ``sampling`` (Å), ``model``,
``results`` and where the crop sits in the run's object (``crop_offset`` (row, col) object pixels of its pixel
(0, 0), ``crop_shape``, ``object_shape``) attributes; and, when the run has σ maps, ``change_sigma``: (restored −
input, offset removed) / σ over the field (NaN elsewhere), printed as the share of the field changed by more than
3 σ beside the share pure noise gives (0.27 %, :func:`phasestem.metrics.chance_beyond`: more are features the
network made or removed that the data do not support). The data guard (:mod:`phasestem.learn.data_guard`) asks the
diffraction patterns themselves, read from the run's data file (results.h5's recorded ``data.file``, or ``--data``):
``data_support`` (the excess misfit of the restored phase over AD's, mapped onto the object, σ-like) and the sites
where the restoration differs most, each tested against the patterns around it (``tested_sites``, ``flagged_sites``:
row, col, statistic), printed as one line with the share chance would flag; a recorded data file that cannot be read
skips it with a line saying why (``--data`` that cannot be read is refused; ``--no-data-guard`` skips it).
``--verdict`` judges every restored column (:mod:`phasestem.learn.verdict`) against specimens simulated at the run's
geometry and dose, reconstructed and restored the same way (:mod:`phasestem.trust.calibration`, cached per geometry,
dose and model): ``verdict_sites`` in ``OUT.h5``, the unsupported columns circled in the figure, one line. Beside
``OUT.h5``: ``OUT.png`` (input, restoration, difference, change / σ, data support with the flagged sites circled)
and ``OUT.log`` (what it printed and logged, appended per restore). ``OUT.h5`` must end in
.h5 / .hdf5, may not be one of the inputs, and replaces only a previous restoration, with ``--replace``
(:func:`phasestem.learn.apply.restorer_output.refuse_unsafe_output`)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["register"]


def register(subparsers, train_subparsers) -> None:
    p = subparsers.add_parser(
        "restore", help="restore a finished reconstruction's phase with a trained restorer",
        description="Apply a restorer (phasestem train restorer) to the phase of a phasestem reconstruct run "
                    "(RESULTS.h5): the run's phase, amplitude and illumination in, the restored phase out, on the "
                    "run's own grid. A model trained for other optics (energy, semi-angle, aberrations, scan step, "
                    "detector sampling, pixel: results.h5's geometry record) is refused. The restoration is checked "
                    "against the run's diffraction patterns (the data guard: a data-support map and the sites the "
                    "patterns do not support). Beside OUT.h5: OUT.png (input, restoration, difference, change in σ "
                    "of the data, data support) and OUT.log. An existing file is never replaced, except a previous "
                    "restoration with --replace.",
        epilog="Examples:\n  phasestem restore recon_out/results.h5 --model runs/restorer --out-file restored.h5\n"
               "  phasestem restore recon_out/results.h5 --model restore-seed --out-file restored.h5 --replace",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="results.h5 of phasestem reconstruct")
    p.add_argument("--model", required=True, help="restorer: weights file, run folder or shipped name")
    p.add_argument("--out-file", type=Path, required=True, metavar="FILE",
                   help="the restored phase: a new .h5/.hdf5 file (OUT.png and OUT.log beside it)")
    p.add_argument("--replace", action="store_true",
                   help="replace --out-file when it holds a previous restoration (any other file is never replaced)")
    p.add_argument("--trust-geometry", action="store_true",
                   help="restore a results file that records no geometry (an older run): you vouch that its optics "
                        "match the model's card; only its energy and pixel are checked")
    p.add_argument("--data", type=Path, metavar="FILE",
                   help="the run's patterns for the data guard, when its recorded data file moved (default: "
                        "results.h5's data.file)")
    p.add_argument("--no-data-guard", action="store_true",
                   help="do not check the restoration against the diffraction patterns")
    p.add_argument("--verdict", action="store_true",
                   help="judge every restored column against specimens simulated at the run's geometry and dose, "
                        "reconstructed and restored the same way (minutes on the CPU the first time, cached)")
    p.add_argument("--fdr", type=float, default=0.05, help="the verdict's false-discovery rate (default 0.05)")
    p.add_argument("--calibration", type=Path, metavar="DIR", help="the verdict's calibration folder (default: "
                   "one per geometry, dose and model under $PHASESTEM_CACHE or ~/.cache/phasestem)")
    p.add_argument("--calibration-samples", type=int, default=4, metavar="N", help="specimens simulated (default 4)")
    p.add_argument("--calibration-cell", type=float, default=40.0, metavar="Å",
                   help="the simulated specimens' least width (default 40 Å)")
    p.add_argument("--device", default="cpu", help="torch device: 'cpu' (default), 'cuda', 'cuda:1' or 'auto'")
    p.set_defaults(func=_restore)


#: the lines ``restore`` prints, copied into its log file only (the terminal has them once, on stdout)
_summary = logging.getLogger("phasestem.restore.summary")
_summary.propagate = False


def _say(line: str) -> None:
    """Print ``line`` and append it to the restore log (when one is open)."""
    print(line)
    _summary.info("%s", line)


def _restore(args) -> int:
    from ..base.lock import hold_output
    from ..base.runtime import log_to_file, resolve_device
    from ..learn.apply.restorer_output import (
        change_line,
        companion_paths,
        no_sigma_reason,
        placement_line,
        refuse_unsafe_output,
        write_restored,
    )
    from ..learn.data_guard import guard_line

    out = Path(args.out_file)
    refuse_unsafe_output(out, args.results, args.model, replace=args.replace)
    args.device = str(resolve_device(args.device, field="--device"))
    figure, log_path = companion_paths(out)
    with hold_output(out, "phasestem restore", file=True), log_to_file("phasestem", log_path), \
            log_to_file(_summary, log_path):
        logging.getLogger("phasestem.learn").info("phasestem restore %s --model %s → %s", args.results, args.model,
                                                  out)
        try:
            phase, info = _restored(args)
            guard, guard_note, counts = _data_guard(args, phase, info)
            judged = _verdict(args, phase, info, counts, guard_note)
            placement = write_restored(out, phase, info, args.model, args.results, replace=args.replace, guard=guard,
                                       verdict=judged)
        except Exception as exc:  # the log says how it ended; the terminal gets the one line of the error handler
            _summary.error("phasestem restore stopped: %s", exc)
            raise
        no_sigma = "" if info.get("change_sigma") is not None else no_sigma_reason(args.results)  # read once
        _say(placement_line(placement, info["sampling"], out))
        _say(change_line(info, args.results, out, no_sigma))
        _say(guard_note or guard_line(guard, out))
        if judged is not None:
            _say(judged.line())
        _say(f"figure: {_figure(phase, info, args, figure, no_sigma, guard, judged)}")
    return 0


def _restored(args):
    from ..learn.hybrid import restore_results

    return restore_results(args.results, args.model, args.device, trust=args.trust_geometry)


def _data_guard(args, phase, info: dict):
    """(the :func:`phasestem.learn.data_guard.data_guard` of the restoration on the run's patterns, "", the
    patterns' electrons per pattern or None) or (None, the line saying why it did not run, None): ``--no-data-guard``,
    or a recorded data file that cannot be read (``--data`` that cannot be read stops restore in one line)."""
    from ..base.errors import PhasestemError
    from ..learn.data_guard import data_guard
    from ..learn.hybrid import guard_run

    if args.no_data_guard:
        off = "data guard: off (--no-data-guard); the restoration is not checked against the diffraction data"
        return None, off, None
    try:
        run = guard_run(args.results, args.data, args.device)
    except PhasestemError as exc:
        if args.data is not None:
            raise
        return None, f"data guard skipped: {exc}; the restoration is not checked against the diffraction data", None
    return data_guard(run, phase, info["input"], info["field"]), "", run.counts


def _verdict(args, phase, info: dict, counts: float | None, guard_note: str):
    """``--verdict``: :func:`phasestem.trust.judge.judge` at the run's dose, which only its patterns tell (the data
    guard's reading of them); None without ``--verdict``."""
    from ..base.errors import ConfigError
    from ..trust.judge import judge

    if not args.verdict:
        return None
    if guard_note:
        raise ConfigError("--verdict calibrates at the run's dose, which its patterns tell: give --data FILE (and "
                          "leave --no-data-guard out)")
    return judge(phase, info, args.model, counts, args.fdr, args.calibration, args.calibration_samples, args.device,
                 cell=args.calibration_cell)


def _figure(phase, info: dict, args, path: Path, no_sigma: str, guard=None, judged=None) -> Path:
    """``OUT.png``: input, restoration, difference, the guard's σ map (:func:`phasestem.plot.restoration.
    restoration_figure`; ``no_sigma``: why there is none) and, with ``guard``, the data-support map with the flagged
    sites circled, titled with the share beyond the threshold and its chance level."""
    from ..learn.apply.restorer_output import figure_title
    from ..plot.core import pyplot
    from ..plot.restoration import restoration_figure

    fig = restoration_figure(info["input"], phase, info["field"], info["sampling"], info.get("change_sigma"),
                             threshold=float(info["significant"]), title=figure_title(info, args.model),
                             no_sigma=no_sigma, support=guard, verdict=judged, path=path)
    pyplot().close(fig)
    return path
