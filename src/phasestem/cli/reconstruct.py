"""CLI: ``phasestem reconstruct PARAMS.yaml`` and ``phasestem tune PARAMS.yaml``."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..base.cliargs import add_device, add_dump_config, add_set

if TYPE_CHECKING:
    from ..recon.params import ReconstructParams

log = logging.getLogger("phasestem.recon")

#: seconds a rank other than 0 waits before it exits on a refused setting: torchrun stops the other ranks as soon as
#: one exits, and rank 0 must have written the one error line first (CI saw rank 0 killed before it did)
RANK_EXIT_DELAY = 5.0

RECON_EPILOG = """examples:
  phasestem reconstruct configs/reconstruct_tiny.yaml
  phasestem reconstruct configs/reconstruct_multislice.yaml --out runs/ms1 --epochs 50
  phasestem reconstruct params.yaml --resume          # continue from OUT/checkpoint.pt
  phasestem reconstruct params.yaml --dump-config     # print the fully resolved config
  phasestem reconstruct params.yaml --set model.n_slices=4 --set run.batch_size=64   # any field, YAML value
  phasestem reconstruct params.yaml --init ssb        # start the object from a direct method
  phasestem reconstruct scan.npy --auto --energy 300e3 --semiangle 21.4 --scan-step 0.4 --out runs/scan1
  phasestem reconstruct scan.npy --auto ... --c10 200   # microscope C10: θ vs θ + 180°; the defocus if unmeasurable
  torchrun --nproc_per_node 4 -m phasestem.cli reconstruct params.yaml   # 4 processes / GPUs

Writes OUT/config.yaml, OUT/reconstruct.log, OUT/checkpoint.pt, OUT/results.h5, OUT/results.emd (EMD 1.0:
py4DSTEM.read / HyperSpy's hs.load open it) and PNG figures."""

TUNE_EPILOG = """examples:
  phasestem tune configs/reconstruct_tiny.yaml --n-trials 10
  phasestem tune params.yaml --out runs/tune1            # stored in runs/tune1/tune.db; rerun to resume

The parameter file needs a 'tune' section (C10, slice_thickness, learning_rates ranges)."""

#: the flags only --auto reads (they say how to read and calibrate a data file), by dest: (flag, the parameter file's
#: field that says the same, None where only a calibration takes it)
AUTO_ONLY: dict[str, tuple[str, str | None]] = {
    "patterns_key": ("--key", "data.patterns_key"), "format": ("--format", "data.format"),
    "scan_shape": ("--scan-shape", "scan.shape"), "reader_option": ("--reader-option", "data.reader_options.KEY"),
    "energy": ("--energy", "optics.energy"), "semiangle": ("--semiangle", "optics.semiangle"),
    "angular_sampling": ("--angular-sampling", "optics.angular_sampling"), "scan_step": ("--scan-step", "scan.step"),
    "c10": ("--c10", "optics.aberrations.C10"), "rotation": ("--rotation", "scan.rotation"),
    "fit_detector_pixel": ("--fit-detector-pixel", None), "edge_threshold": ("--edge-threshold", None),
}
#: the flags only --prior reads, by dest
PRIOR_ONLY = {"prior_weight": "--prior-weight", "prior_every": "--prior-every", "prior_start": "--prior-start",
              "prior_decay": "--prior-decay", "prior_patience": "--prior-patience"}


def register(subparsers, train_subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct", help="AD ptychography from a YAML parameter file, or from a 4D-STEM data file with --auto",
        description="Reconstruct object, probe, positions, tilt and thickness by automatic-differentiation "
                    "ptychography as described by PARAMS.yaml; with --auto, from a 4D-STEM data file instead "
                    "(calibrated from its data, a params.yaml written into --out, then reconstructed).",
        epilog=RECON_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("params", type=Path, help="YAML parameter file (with --auto: the 4D-STEM data file)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (overrides run.out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (with --auto: the --auto "
                   "run in OUT, from its params.yaml; --epochs N extends it)")
    add_dump_config(p)
    p.add_argument("--epochs", type=int, default=None, help="override run.n_epochs")
    add_device(p, what="overrides run.device")
    add_set(p, "model.n_slices=4 (with --auto: a field of the params.yaml it writes)")
    _add_auto_arguments(p)
    _add_prior_arguments(p)
    p.set_defaults(func=_reconstruct_cmd, edge_threshold=None)  # None: not given (calibrate's default with --auto)
    t = subparsers.add_parser(
        "tune", help="Optuna search of defocus, thickness and learning rates",
        description="Hyper-parameter search for a reconstruction (objective: data error).",
        epilog=TUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("params", type=Path, help="YAML parameter file with a 'tune' section")
    t.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (overrides run.out_dir)")
    t.add_argument("--n-trials", type=int, default=None, help="override tune.n_trials")
    add_device(t, what="overrides run.device")
    add_set(t, "tune.n_trials=20")
    add_dump_config(t)
    t.set_defaults(func=_tune_cmd)


def _load(args) -> ReconstructParams:
    """The parameter file with ``--set``, then ``--out``, ``--epochs`` and ``--device`` over it, all validated as
    its fields are (a bad value: one line naming the field)."""
    from ..base.configfile import parse_set_options
    from ..recon.params import load_params

    flags = {"run.out_dir": args.out, "run.n_epochs": getattr(args, "epochs", None),
             "run.device": getattr(args, "device", None)}
    overrides = {**parse_set_options(getattr(args, "set", None)), **{k: v for k, v in flags.items() if v is not None}}
    params = load_params(args.params, overrides)
    if getattr(args, "allow_external_links", False):  # the data file and its ground truth: one permission
        params.data.reader_options["allow_external_links"] = True
    return params


def _add_prior_arguments(p) -> None:
    """--prior MODEL and its schedule: a trained restorer as a learned prior inside AD (issue 48)."""
    g = p.add_argument_group("a learned prior inside AD (--prior)")
    g.add_argument("--prior", metavar="MODEL", help="a restorer (phasestem train restorer: file, run folder or "
                   "shipped name) whose restoration of the current phase becomes the target of a proximal pull")
    g.add_argument("--prior-weight", type=float, default=None, metavar="LAMBDA",
                   help="pull strength λ: φ ← (φ + λ·target) / (1 + λ) after every epoch (default 0.5: chosen with "
                   "restore-seed-fine on held-out abTEM data, benchmarks/learned/README.md)")
    g.add_argument("--prior-every", type=int, default=None, metavar="K", help="restore every K epochs (default 2)")
    g.add_argument("--prior-start", type=int, default=None, metavar="EPOCH",
                   help="first epoch after which the prior acts (default 2)")
    g.add_argument("--prior-decay", type=float, default=None, metavar="GAMMA",
                   help="the pull's weight is multiplied by GAMMA at every refresh, λ·GAMMA^n, so the pull converges "
                   "(default 1: no decay, the network restoring a plain-AD twin of the run whose target converges "
                   "with it; 0.9 was the default when it restored the steered phase)")
    g.add_argument("--prior-patience", type=int, default=None, metavar="N",
                   help="stop the pull for good once the data loss (the held-out loss with run.holdout) lies more "
                   "than 2 %% above its lowest N epochs in a row (25 %% on data without counting noise, whose floor is "
                   "the model's misfit; default 2; 0: never). Either way the run returns its epoch with the lowest "
                   "data loss from the prior's start when its last lies more than that margin above it, logged and in "
                   "results.h5's provenance")


def _prior_hooks(args) -> tuple:
    """The ``callback_hooks`` of :func:`~phasestem.recon.run.run_reconstruction` for ``--prior`` (none without it); the
    model file is read (and a corrupted one refused) now, its geometry checked against the data when the model is
    built."""
    if not getattr(args, "prior", None):
        return ()
    from ..learn.hybrid import prior_hook  # the command layer is where recon meets learn (docs/architecture.md)

    every, start = (2 if v is None else v for v in (args.prior_every, args.prior_start))
    return (prior_hook(args.prior, every=every, weight=args.prior_weight, start=start,
                       decay=args.prior_decay, patience=args.prior_patience),)


def _add_auto_arguments(p) -> None:
    """--auto (read → calibrate → direct start → AD) and --init (start the object from a direct method)."""
    from .calibrate import add_calibration_choices, add_reader_arguments

    g = p.add_argument_group("real data in one command (--auto) and direct-method starts (--init)",
                             "--init and --allow-external-links also act on a parameter file; the reader and "
                             "calibration options are read with --auto alone (a parameter file gives their fields)")
    g.add_argument("--auto", action="store_true",
                   help="PARAMS is a data file: calibrate it, start from --init, reconstruct; writes OUT/params.yaml")
    g.add_argument("--init", choices=["none", "dpc", "parallax", "ssb"], default=None,
                   help="start the object phase from a direct method (--auto default: ssb)")
    add_reader_arguments(g)
    add_calibration_choices(g)


def refuse_flags_that_would_not_act(args) -> None:
    """One :class:`~phasestem.base.errors.ConfigError` line for flags given where they would do nothing: the reader
    and calibration flags (:data:`AUTO_ONLY`) without --auto, --prior's schedule (:data:`PRIOR_ONLY`) without
    --prior, --prior or --dump-config with --auto."""
    from ..base.errors import ConfigError

    if args.auto and getattr(args, "prior", None):
        raise ConfigError("--prior cannot be combined with --auto yet: run --auto, then reconstruct OUT/params.yaml "
                          "--prior MODEL")
    if args.auto and args.dump_config:
        raise ConfigError("--dump-config cannot be combined with --auto: its parameters come from calibrating the "
                          "data (phasestem calibrate FILE writes them without reconstructing; an --auto run writes "
                          "OUT/params.yaml)")
    unread = [PRIOR_ONLY[d] for d in PRIOR_ONLY if getattr(args, d, None) is not None]
    if unread and not getattr(args, "prior", None):
        raise ConfigError(f"{', '.join(unread)}: the learned prior's schedule, read only with --prior MODEL")
    given = [d for d in AUTO_ONLY if getattr(args, d, None) not in (None, False, [])]
    if given and not args.auto:
        flags = ", ".join(AUTO_ONLY[d][0] for d in given)
        fields = [AUTO_ONLY[d][1] for d in given if AUTO_ONLY[d][1]]
        calibration = [AUTO_ONLY[d][0] for d in given if not AUTO_ONLY[d][1]]
        instead = [f"give {', '.join(fields)} in the parameter file (or --set KEY=VALUE)"] if fields else []
        instead += [f"calibrate with {', '.join(calibration)}: phasestem calibrate FILE"] if calibration else []
        raise ConfigError(f"{flags}: read only with --auto (PARAMS a 4D-STEM data file), not with the parameter file "
                          f"{args.params}; {'; '.join(instead)}")


def _reconstruct_cmd(args) -> int:
    refuse_flags_that_would_not_act(args)
    if args.auto:
        from ..base.configfile import parse_set_options
        from ..recon.auto import run_auto
        from .calibrate import calibration_choices, reader_options, scan_step

        choices = calibration_choices(args)
        if choices["edge_threshold"] is None:  # not given: calibrate's default
            del choices["edge_threshold"]
        run_auto(args.params, args.out or Path("recon_out"), energy=args.energy, semiangle=args.semiangle,
                 scan_step=scan_step(args), angular_sampling=args.angular_sampling, init=args.init or "ssb",
                 reader_options=reader_options(args), format=args.format, epochs=args.epochs, device=args.device,
                 overrides=parse_set_options(args.set), resume=args.resume, **choices)
        return 0
    params = _load(args)
    from ..recon.params import dump_params

    if args.dump_config and not args.init:
        sys.stdout.write(dump_params(params))
        return 0
    from ..base.errors import ConfigError
    from ..base.lock import FolderBusyError, hold_output
    from ..base.safety import refuse_output_over_inputs
    from ..recon.distributed import env_rank
    from ..recon.run import RECON_COMMAND, RUN_FILES, run_reconstruction

    try:
        # the folder is held from the first file written (the --init start) to the last
        with hold_output(params.run.out_dir, RECON_COMMAND):
            if args.init:
                from ..recon.auto import apply_init

                params = apply_init(params, args.init, params.run.out_dir)
            if args.dump_config:
                sys.stdout.write(dump_params(params))
                return 0
            refuse_output_over_inputs(params.run.out_dir, [args.params], field="--out", written=RUN_FILES)
            run_reconstruction(params, resume=args.resume, callback_hooks=_prior_hooks(args))
    except (ConfigError, FolderBusyError):
        if env_rank() != 0:  # every rank of a torchrun launch sees the same setting: rank 0 alone says so
            time.sleep(RANK_EXIT_DELAY)  # torchrun stops every rank once one exits: let rank 0 say it first
            return 1
        raise
    return 0


def _tune_cmd(args) -> int:
    from ..recon.params import dump_params
    from ..recon.tune import run_tuning

    params = _load(args)
    if args.n_trials and params.tune is not None:
        params.tune.n_trials = args.n_trials
    if args.dump_config:
        sys.stdout.write(dump_params(params))
        return 0
    study = run_tuning(params, n_trials=args.n_trials)
    best = study.best_trial
    print(f"best data error {best.value:.6g} with {best.params} ({len(study.trials)} trials in the study)")
    return 0
