"""CLI: ``phasestem calibrate FILE --energy E --semiangle A --scan-step S [--out calib/]``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..base.cliargs import add_key
from ..base.configfile import number_pair, parse_set_options

EPILOG = """examples:
  phasestem calibrate scan.npy --energy 300e3 --semiangle 21.4 --scan-step 0.4 --out calib
  phasestem calibrate scan.h5 --key /entry/data --energy 200e3 --angular-sampling 0.8 --scan-step 0.5
  phasestem reconstruct calib/params.yaml --out runs/scan1       # after checking/editing params.yaml

Writes OUT/params.yaml (the 'phasestem reconstruct' schema with the calibrated angular sampling,
transpose, scan rotation, origin and C10), OUT/calibrated.npy (bad pixels filled, descan removed to the
nearest whole pixel), OUT/detector_shifts.npy (the sub-pixel rest of the descan, which the model applies),
OUT/calibration.json (every fitted number) and OUT/calibration*.png (one figure per fit)."""


def add_reader_arguments(p: argparse.ArgumentParser) -> None:
    """Options that say how to read a 4D-STEM file and what the acquisition was."""
    add_key(p)
    p.add_argument("--format", help="reader name (hdf5, numpy, cxi, mat, emd, raw, …); default: by extension")
    p.add_argument("--scan-shape", type=int, nargs=2, metavar=("ROWS", "COLS"), help="for flat (N, H, W) data")
    p.add_argument("--reader-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra reader option (value parsed as YAML), repeatable")
    p.add_argument("--energy", type=float, help="beam energy in eV (default: the file's; a different value wins, "
                   "with a warning)")
    p.add_argument("--semiangle", type=float, help="probe semi-angle in mrad (gives the angular sampling)")
    p.add_argument("--angular-sampling", type=float, help="detector pixel in mrad (gives the semi-angle instead)")
    p.add_argument("--fit-detector-pixel", action="store_true",
                   help="fit the detector pixel to the bright-field disk and the semi-angle even where the file "
                        "records one (default: the file's pixel wins; a disk that disagrees is reported)")
    p.add_argument("--scan-step", type=float, nargs="+", help="scan step in Å (one value or dy dx; default: the "
                   "file's; a different value wins, with a warning)")
    p.add_argument("--allow-external-links", action="store_true",
                   help="read an HDF5 file's external links, external storage and virtual-dataset sources even where "
                        "they lie outside its folder (default: such a file is refused, naming the dataset; never "
                        "honoured where PHASESTEM_READ_ROOT is set, as under phasestem serve)")


#: what a given --rotation does to the detector transpose, by whether the command has a --transpose option
ROTATION_TRANSPOSE = {
    True: "the transpose: --transpose, else no",
    False: "the transpose is then taken as no: for a transposed detector run 'phasestem calibrate FILE --rotation "
           "DEG --transpose yes', then reconstruct the params.yaml it writes",
}


def add_calibration_choices(p, transpose_option: bool = False) -> None:
    """What the user knows that the patterns cannot settle (``phasestem calibrate`` and ``reconstruct --auto``);
    ``transpose_option``: the command also has ``--transpose`` (calibrate), which the --rotation help then names."""
    p.add_argument("--c10", "--c10-sign", dest="c10", type=float, default=None, metavar="C10",
                   help="the probe's C10 in Å as the microscope was set (= −defocus; C10 > 0 over-focus, "
                        "docs/conventions.md), if known: its sign fixes θ vs θ + 180° through the parallax (the "
                        "wrong one inverts the phase), and it is the defocus used where the data cannot measure one "
                        "(low dose, too little contrast for the parallax); a parallax fit wins where there is one")
    p.add_argument("--rotation", type=float, default=None, metavar="DEG",
                   help="the scan rotation in degrees, if known from another calibration (a standard, a thicker area "
                        "of the session): the data's fit is skipped, only the defocus is fitted at it; for low-dose "
                        "data whose centre-of-mass field is too weak to calibrate "
                        f"({ROTATION_TRANSPOSE[transpose_option]})")
    p.add_argument("--edge-threshold", type=float, default=0.5,
                   help="disk edge as a fraction of the disk level (0.5 real apertures; 0.25 simulations with a soft "
                        "amplitude edge, e.g. abTEM's default or phasestem simulate)")


def calibration_choices(args) -> dict[str, Any]:
    """:func:`add_calibration_choices`' options as keyword arguments of :func:`phasestem.calibrate.calibrate`."""
    return {"c10": args.c10, "edge_threshold": args.edge_threshold, "rotation": args.rotation,
            "fit_detector_pixel": bool(getattr(args, "fit_detector_pixel", False))}


def reader_options(args) -> dict[str, Any]:
    """Reader keyword arguments from :func:`add_reader_arguments`' options."""
    opts: dict[str, Any] = {}
    if getattr(args, "patterns_key", None):
        opts["patterns_key"] = args.patterns_key
    if getattr(args, "scan_shape", None):
        opts["scan_shape"] = tuple(args.scan_shape)
    opts.update(parse_set_options(getattr(args, "reader_option", None), "--reader-option"))
    if getattr(args, "allow_external_links", False):
        opts["allow_external_links"] = True
    return opts


def scan_step(args):
    return number_pair(args.scan_step, "--scan-step (Å)", positive=True)


def register(subparsers, train_subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate", help="calibrate a 4D-STEM file from its data (sampling, rotation, defocus, bad pixels)",
        description="Find the bright-field disk (angular sampling, descan), hot and dead pixels, the scan–detector "
                    "rotation and transpose (centre-of-mass curl) and the defocus (tcBF parallax); write an "
                    "editable params YAML for 'phasestem reconstruct' and a figure of each fit.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, help="4D-STEM file")
    add_reader_arguments(p)
    p.add_argument("--out", type=Path, default=Path("calib"), metavar="DIR", help="output folder (default: calib)")
    p.add_argument("--transpose", choices=["auto", "yes", "no"], default="auto",
                   help="detector transpose: fit it (auto) or fix it")
    p.add_argument("--no-parallax", action="store_true", help="skip the tcBF defocus fit")
    add_calibration_choices(p, transpose_option=True)
    p.add_argument("--resample-descan", action="store_true",
                   help="move every disk centre onto the central pixel by sub-pixel interpolation of the counts (for "
                        "tools that need centred data); default: whole pixels, the rest in detector_shifts.npy")
    p.set_defaults(func=_calibrate_cmd)


def transpose_choice(value: str) -> bool | None:
    return {"auto": None, "yes": True, "no": False}[value]


#: files ``phasestem calibrate`` writes into its output folder (none may be the input)
CALIBRATE_FILES = ("calibrated.npy", "detector_shifts.npy", "params.yaml", "calibration.json", "calibration.png",
                   "calibration_disk.png", "calibration_rotation.png", "calibration_parallax.png")


def _calibrate_cmd(args) -> int:
    from ..base.safety import refuse_output_over_inputs
    from ..calibrate.files import calibrate_file

    refuse_output_over_inputs(args.out, [args.file], field="--out", written=CALIBRATE_FILES)
    calib, files = calibrate_file(
        args.file, args.out, energy=args.energy, scan_step=scan_step(args), semiangle=args.semiangle,
        angular_sampling=args.angular_sampling, reader_options=reader_options(args), format=args.format,
        transpose=transpose_choice(args.transpose), parallax=not args.no_parallax,
        resample_descan=args.resample_descan, **calibration_choices(args))
    print(calib.summary())
    for note in calib.notes:
        print(f"note: {note}")
    print(f"wrote {files['params']} (edit it, then: phasestem reconstruct {files['params']})")
    return 0
