"""CLI: ``phasestem reconstruct PARAMS.yaml`` and ``phasestem tune PARAMS.yaml``."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..cliargs import add_device, add_dump_config
from ..lock import FolderBusyError, hold_output
from ..safety import atomic_file, refuse_output_over_inputs, remove_stale_temporaries
from .distributed import rank_device
from .params import (
    ReconstructParams,
    build_dataset,
    build_model,
    dump_params,
    load_params,
    optimizer_options,
)
from .schedule import ParamSchedule

log = logging.getLogger("phasestem.recon")

RECON_EPILOG = """examples:
  phasestem reconstruct configs/reconstruct_tiny.yaml
  phasestem reconstruct configs/reconstruct_multislice.yaml --out runs/ms1 --epochs 50
  phasestem reconstruct params.yaml --resume          # continue from OUT/checkpoint.pt
  phasestem reconstruct params.yaml --dump-config     # print the fully resolved config
  phasestem reconstruct params.yaml --init ssb        # start the object from a direct method
  phasestem reconstruct scan.npy --auto --energy 300e3 --semiangle 21.4 --scan-step 0.4 --out runs/scan1
  torchrun --nproc_per_node 4 -m phasestem.cli reconstruct params.yaml   # 4 processes / GPUs

Writes OUT/config.yaml, OUT/reconstruct.log, OUT/checkpoint.pt, OUT/results.h5, OUT/results.emd (EMD 1.0:
py4DSTEM.read / HyperSpy's hs.load open it) and PNG figures."""

TUNE_EPILOG = """examples:
  phasestem tune configs/reconstruct_tiny.yaml --n-trials 10
  phasestem tune params.yaml --out runs/tune1            # stored in runs/tune1/tune.db; rerun to resume

The parameter file needs a 'tune' section (C10, slice_thickness, learning_rates ranges)."""


def register(subparsers, train_subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct", help="AD ptychography from a YAML parameter file",
        description="Reconstruct object, probe, positions, tilt and thickness by automatic-differentiation "
                    "ptychography as described by PARAMS.yaml.",
        epilog=RECON_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("params", type=Path, help="YAML parameter file (with --auto: the 4D-STEM data file)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (overrides run.out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    add_dump_config(p)
    p.add_argument("--epochs", type=int, default=None, help="override run.n_epochs")
    add_device(p, what="overrides run.device")
    _add_auto_arguments(p)
    p.set_defaults(func=_reconstruct_cmd)
    t = subparsers.add_parser(
        "tune", help="Optuna search of defocus, thickness and learning rates",
        description="Hyper-parameter search for a reconstruction (objective: data error).",
        epilog=TUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("params", type=Path, help="YAML parameter file with a 'tune' section")
    t.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (overrides run.out_dir)")
    t.add_argument("--n-trials", type=int, default=None, help="override tune.n_trials")
    add_device(t, what="overrides run.device")
    add_dump_config(t)
    t.set_defaults(func=_tune_cmd)


def _load(args) -> ReconstructParams:
    params = load_params(args.params)
    if args.out is not None:
        params.run.out_dir = args.out
    if getattr(args, "epochs", None):
        params.run.n_epochs = args.epochs
    if getattr(args, "device", None):
        params.run.device = args.device
    return params


def _add_auto_arguments(p) -> None:
    """--auto (read → calibrate → direct start → AD) and --init (start the object from a direct method)."""
    from ..calibrate.commands import add_reader_arguments

    g = p.add_argument_group("real data in one command (--auto) and direct-method starts (--init)")
    g.add_argument("--auto", action="store_true",
                   help="PARAMS is a data file: calibrate it, start from --init, reconstruct; writes OUT/params.yaml")
    g.add_argument("--init", choices=["none", "dpc", "parallax", "ssb"], default=None,
                   help="start the object phase from a direct method (--auto default: ssb)")
    add_reader_arguments(g)


def _reconstruct_cmd(args) -> int:
    if args.auto:
        from ..calibrate.commands import reader_options, scan_step
        from .auto import run_auto

        run_auto(args.params, args.out or Path("recon_out"), energy=args.energy, semiangle=args.semiangle,
                 scan_step=scan_step(args), angular_sampling=args.angular_sampling, init=args.init or "ssb",
                 reader_options=reader_options(args), format=args.format, epochs=args.epochs, device=args.device)
        return 0
    params = _load(args)
    if args.dump_config and not args.init:
        sys.stdout.write(dump_params(params))
        return 0
    from ..errors import ConfigError
    from .distributed import env_rank

    try:
        # the folder is held from the first file written (the --init start) to the last
        with hold_output(params.run.out_dir, RECON_COMMAND):
            if args.init:
                from .auto import apply_init

                params = apply_init(params, args.init, params.run.out_dir)
            if args.dump_config:
                sys.stdout.write(dump_params(params))
                return 0
            refuse_output_over_inputs(params.run.out_dir, [args.params], field="--out", written=RUN_FILES)
            run_reconstruction(params, resume=args.resume)
    except (ConfigError, FolderBusyError):
        if env_rank() != 0:  # every rank of a torchrun launch sees the same setting: rank 0 alone says so
            return 1
        raise
    return 0


#: files a reconstruction writes into its output folder (none may be an input)
RUN_FILES = ("config.yaml", "checkpoint.pt", "results.h5", "results.emd", "reconstruction.png", "compare.png",
             "reconstruct.log", "live.npz")
#: how a reconstruction names itself in its output folder's lock
RECON_COMMAND = "phasestem reconstruct"


def _keep_configured_schedules(model, wanted: dict) -> None:
    """After a resume, the learning rates and epochs of this run's parameter file win over the checkpoint's."""
    for name, sched in wanted.items():
        old = model.schedules[name]
        if (old.lr, old.start, old.end) != (sched.lr, sched.start, sched.end):
            log.info("learning rate of %s: checkpoint %s -> parameter file %s", name,
                     _describe(old), _describe(sched))
        model.schedules[name] = sched


def _describe(s) -> str:
    lr = "solver default" if s.lr is None else f"{s.lr:g}"
    return f"{lr} (epochs {s.start}-{'end' if s.end is None else s.end})"


def _check_optics(params: ReconstructParams, dataset, opts: dict) -> None:
    """Warn (log and stderr) when the flipped defocus sign fits the centre of the scan far better."""
    from .optics_check import check_defocus_sign

    quick = {k: v for k, v in opts.items() if k not in ("progress",)}
    quick["distributed"] = False  # rank 0 alone runs the check
    device = rank_device(params.run.device)
    result = check_defocus_sign(dataset, lambda ds: build_model(params, ds).to(device), **quick)
    if result is None:
        return
    log.info("optics check: data error %.4g with C10 = %g Å, %.4g with C10 = %g Å", result.loss_given, result.c10,
             result.loss_flipped, -result.c10)
    if result.flipped_fits_better:
        log.warning(result.message())
        print(f"phasestem reconstruct: warning: {result.message()}", file=sys.stderr)


def _setup_reports(params: ReconstructParams, dataset, model, out: Path):
    """Per-epoch loss_ptyrad and ground-truth metrics; returns the ground-truth phase (None without
    data.ground_truth_key)."""
    from .report import epoch_reporter, load_ground_truth

    truth = None
    if params.data.ground_truth_key is not None:
        truth = load_ground_truth(params.data.file, params.data.ground_truth_key, model, params.optics.energy,
                                  out / "reconstruct.log")
    if params.run.ptyrad_loss or truth is not None:
        model.epoch_callbacks.append(epoch_reporter(dataset, truth, params.run.ptyrad_loss, params.losses.power,
                                                    params.run.batch_size))
    return truth


def _tune_cmd(args) -> int:
    from .tune import run_tuning

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


def run_reconstruction(params: ReconstructParams, resume: bool = False, sources: dict[str, str] | None = None):
    """Run a reconstruction described by ``params``; returns the model (None in the parent of
    ``run.n_processes`` > 1 spawned processes). ``sources`` labels values of the parameter file by field in the
    run log and results.h5 (default ``YAML``; see :func:`phasestem.recon.params.build_dataset`).

    Under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK in the environment) this process joins the process group
    itself (nccl on CUDA, gloo on CPU) and ``run.n_processes`` is ignored; ``run.n_processes`` > 1 otherwise
    starts that many local processes (the single-node shortcut).

    ``run.out_dir`` is held for the whole run (:func:`phasestem.lock.hold_output`, FolderBusyError when another
    run holds it): by this process alone, by the parent of ``run.n_processes`` processes, by rank 0 of a process
    group (every rank learns a refusal)."""
    from .distributed import backend_for, init_from_environment, is_initialized, launch, torchrun_world
    from .engine import refuse_lbfgs

    world = torchrun_world() if torchrun_world() > 1 else params.run.n_processes
    refuse_lbfgs(params.run.optimizer, world)  # before any process starts
    if torchrun_world() > 1 or is_initialized():
        if params.run.n_processes > 1:
            log.warning("run.n_processes = %d ignored: the processes were started by torchrun (%d)",
                        params.run.n_processes, torchrun_world())
        own_group = init_from_environment(params.run.device)
        try:
            with hold_output(params.run.out_dir, RECON_COMMAND):
                return _reconstruct_rank(params, resume, sources)
        finally:
            if own_group:
                import torch.distributed as dist

                dist.destroy_process_group()
    with hold_output(params.run.out_dir, RECON_COMMAND):
        if params.run.n_processes > 1:  # the spawned ranks write into the folder this process holds
            launch(params.run.n_processes, _reconstruct_rank, params.model_dump(mode="json"), resume, sources,
                   backend=backend_for(params.run.device))
            return None
        return _reconstruct_rank(params, resume, sources)


def _reconstruct_rank(params, resume: bool, sources: dict[str, str] | None = None):
    import contextlib

    import matplotlib.pyplot as plt

    from .distributed import is_main_process, rank_and_world
    from .engine import load_checkpoint, optimize
    from .report import log_settings, log_system_info, logging_to, loss_settings, losses_line

    if isinstance(params, dict):
        params = ReconstructParams.model_validate(params)
    main = is_main_process()  # only rank 0 writes files
    out = Path(params.run.out_dir)
    refuse_output_over_inputs(out, [params.data.file, params.data.detector_shifts,
                                    params.scan.positions_file,
                                    None if params.model.initial_phase is None else params.model.initial_phase.file,
                                    None if params.model.initial_probe is None else params.model.initial_probe.file],
                              field="run.out_dir", written=RUN_FILES)
    config_text = dump_params(params)
    if main:  # the folder is held (run_reconstruction): what killed runs left mid-write is ours to remove
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out, RUN_FILES)
        with atomic_file(out / "config.yaml", field="run.out_dir") as tmp:
            tmp.write_text(config_text)
    log_path = out / "reconstruct.log"
    if main:
        log_system_info(log_path, rank_device(params.run.device))
    with logging_to(log_path) if main else contextlib.nullcontext():  # conflict warnings in the log too
        dataset = build_dataset(params, sources, warn=main)
    settings = dataset.metadata.get("settings", []) + loss_settings(params, sources)
    if main:
        log_settings(settings, losses_line(params, sources), dataset, log_path)
        print(losses_line(params, sources))
    model = build_model(params, dataset).to(rank_device(params.run.device))
    ckpt = out / "checkpoint.pt"
    if resume:
        wanted = {k: ParamSchedule(s.lr, s.start, s.end) for k, s in model.schedules.items()}
        load_checkpoint(ckpt, model)
        log.info("resumed from %s after epoch %d", ckpt, model.epoch)
        _keep_configured_schedules(model, wanted)
    remaining = params.run.n_epochs - model.epoch
    opts = optimizer_options(params)
    opts["progress"] = opts["progress"] and main
    if main and not resume and params.run.check_optics and params.model.initial_phase is None:
        _check_optics(params, dataset, opts)
    if rank_and_world()[1] > 1:
        log.info("rank %d of %d on %s", *rank_and_world(), model.device)
    truth = _setup_reports(params, dataset, model, out) if main else None
    if main:  # OUT/live.npz after every epoch: the live page of phasestem serve
        from .live import LIVE_FILE, live_snapshots
        model.epoch_callbacks.append(live_snapshots(out / LIVE_FILE, params.run.n_epochs))
    for _ in optimize(model, dataset, max(0, remaining), checkpoint_path=ckpt,
                      checkpoint_every=params.run.checkpoint_every, out_dir=out,
                      figures_every=params.run.figures_every, **opts):
        pass
    if main:
        metrics = None
        if truth is not None:
            from .report import final_metrics

            metrics = final_metrics(model, truth, params.data.ground_truth_key, out / "reconstruct.log")
        path = model.save_results(out / "results.h5", config_text=config_text, metrics=metrics, provenance=settings)
        model.save_results(out / "results.emd")  # the object and probe for py4DSTEM and HyperSpy users
        plt.close(model.inspect(dataset, path=out / "reconstruction.png", truth=truth, metrics=metrics))
        plt.close(model.compare(dataset, path=out / "compare.png", truth=truth, metrics=metrics))
        last = model.loss_history[-1]["loss"] if model.loss_history else float("nan")
        print(f"reconstruction: {model.epoch} epochs, final loss {last:.6g}; results in {path}")
        if metrics is not None:
            print("against the ground truth: PSNR {psnr:.3g} dB, SSIM {ssim:.3g}, E_phi {phase_error:.3g}, "
                  "FRC resolution {frc_resolution:.3g} Å".format(**metrics))
    return model
