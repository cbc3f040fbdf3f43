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
skips it with a line saying why (``--data`` that cannot be read is refused; ``--no-data-guard`` skips it). Beside
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
            guard, guard_note = _data_guard(args, phase, info)
            placement = write_restored(out, phase, info, args.model, args.results, replace=args.replace, guard=guard)
        except Exception as exc:  # the log says how it ended; the terminal gets the one line of the error handler
            _summary.error("phasestem restore stopped: %s", exc)
            raise
        no_sigma = "" if info.get("change_sigma") is not None else no_sigma_reason(args.results)  # read once
        _say(placement_line(placement, info["sampling"], out))
        _say(change_line(info, args.results, out, no_sigma))
        _say(guard_note or guard_line(guard, out))
        _say(f"figure: {_figure(phase, info, args, figure, no_sigma, guard)}")
    return 0


def _restored(args):
    from ..learn.hybrid import restore_results

    return restore_results(args.results, args.model, args.device, trust=args.trust_geometry)


def _data_guard(args, phase, info: dict):
    """(the :func:`phasestem.learn.data_guard.data_guard` of the restoration on the run's patterns, "") or (None, the
    line saying why it did not run): ``--no-data-guard``, or a recorded data file that cannot be read (``--data``
    that cannot be read stops restore in one line)."""
    from ..base.errors import PhasestemError
    from ..learn.data_guard import data_guard
    from ..learn.hybrid import guard_run

    if args.no_data_guard:
        return None, "data guard: off (--no-data-guard); the restoration is not checked against the diffraction data"
    try:
        run = guard_run(args.results, args.data, args.device)
    except PhasestemError as exc:
        if args.data is not None:
            raise
        return None, f"data guard skipped: {exc}; the restoration is not checked against the diffraction data"
    return data_guard(run, phase, info["input"], info["field"]), ""


def _figure(phase, info: dict, args, path: Path, no_sigma: str, guard=None) -> Path:
    """``OUT.png``: input, restoration, difference, the guard's σ map (:func:`phasestem.plot.restoration.
    restoration_figure`; ``no_sigma``: why there is none) and, with ``guard``, the data-support map with the flagged
    sites circled, titled with the share beyond the threshold and its chance level."""
    from ..learn.apply.restorer_output import figure_title
    from ..plot.core import pyplot
    from ..plot.restoration import restoration_figure

    fig = restoration_figure(info["input"], phase, info["field"], info["sampling"], info.get("change_sigma"),
                             threshold=float(info["significant"]), title=figure_title(info, args.model),
                             no_sigma=no_sigma, support=guard, path=path)
    pyplot().close(fig)
    return path
