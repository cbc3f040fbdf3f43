"""phasestem on one benchmark case: ``python run_phasestem.py CASE.npz RESULT.npz [--threads 2] [--device cuda]``."""
from __future__ import annotations

import argparse
import logging
import time

from common import load_case, save_result, set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("case")
    ap.add_argument("result")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--optimizer", choices=["lsq", "adam"], default="lsq",
                    help="solver (default: lsq, the parameter file's default)")
    ap.add_argument("--lr", type=float, default=None, help="object and probe learning rate (default: the solver's)")
    ap.add_argument("--loss", choices=["case", "gaussian", "poisson", "counted", "none"], default="case",
                    help="data term: the case file's 'loss' entry (default; gaussian when absent; its 'poisson' "
                         "runs phasestem's setting for counted data, 'counted'), as given, or 'none': no term "
                         "named, as a user who names none (the engine chooses from the data)")
    ap.add_argument("--tilt-lr", type=float, default=None,
                    help="specimen tilt's learning rate in mrad per step (default: the engine's, refined on thick "
                         "specimens only; 0 freezes it)")
    ap.add_argument("--tilt-start", default="zero",
                    help="the tilt the run starts from: zero (default; no tool is told the tilt), 'true': the case's "
                         "tilt_mrad (its mean, or per position with --per-position-tilt; a ceiling, not a result), or "
                         "'THY,THX' in mrad")
    ap.add_argument("--per-position-tilt", action="store_true", help="one tilt per scan position (N, 2)")
    ap.add_argument("--positions-lr", type=float, default=0.0,
                    help="refine the scan positions: Å per step a position takes when its pattern is in the batch "
                         "(optimizers.RowAdam; default 0: the exact positions the peers are given stay fixed)")
    ap.add_argument("--positions-start", type=int, default=3, help="first epoch of --positions-lr (default 3)")
    ap.add_argument("--positions-affine", action="store_true",
                    help="with --positions-lr: remove the affine part of the corrections each epoch (--auto does)")
    ap.add_argument("--holdout", default=None,
                    help="run.holdout: fraction of positions held out to stop on their lowest loss, or auto "
                         "(default: the engine's, off); a stopped run's last history entry is the state it kept")
    ap.add_argument("--holdout-counts", type=float, default=0.0,
                    help="run.holdout_counts: share of every counted pattern's counts held out of the fit, whose "
                         "Poisson deviance chooses the epoch returned (default 0: off; not counted: ignored)")
    ap.add_argument("--rate", action="append", default=[], metavar="NAME=LR",
                    help="one parameter's learning rate (obj_amplitude, obj_phase, probe, tilt, …), or LR@START to "
                         "start it at epoch START; repeatable")
    ap.add_argument("--aperture-edge", default=None, choices=["soft", "hard", "measured"],
                    help="the nominal probe's aperture edge (default: the engine's, soft)")
    ap.add_argument("--obj-ramp", action="store_true",
                    help="constraints.obj_ramp every epoch: the object's phase ramp moves into the probe as a tilt")
    ap.add_argument("--obj-ramp-start", type=int, default=1, help="first epoch of --obj-ramp (default 1)")
    ap.add_argument("--obj-shear", nargs="?", const="on", choices=["on", "off", "auto"], default=None,
                    help="constraints.obj_shear every epoch: the slices' shear moves into the specimen tilt (bare: "
                         "on; default: the engine's, auto: on for a mistilted crystal)")
    ap.add_argument("--obj-shear-start", type=int, default=None,
                    help="first epoch of --obj-shear (default: the engine's, 2)")
    ap.add_argument("--probe-aperture", choices=["on", "off", "auto"], default=None,
                    help="constraints.probe_aperture: hold the probe's spectrum amplitude to the nominal aperture's "
                         "(default: the engine's, auto: decided from the data)")
    ap.add_argument("--probe-aperture-end", type=int, default=None,
                    help="with --probe-aperture on: the last epoch it runs (default: to the end)")
    ap.add_argument("--lr-decay", default=None, choices=["none", "cosine"],
                    help="run.lr_decay (default: the parameter file's)")
    ap.add_argument("--lr-final", type=float, default=None, help="run.lr_final (default: the parameter file's)")
    ap.add_argument("--c10-error", type=float, default=0.0,
                    help="give the run a nominal C10 this many Å off the case's (default 0): a probe that the "
                         "refinement has to correct, as on a real microscope")
    ap.add_argument("--semiangle-scale", type=float, default=1.0,
                    help="give the run a nominal semi-angle this many times the case's (default 1): a miscalibrated "
                         "aperture")
    ap.add_argument("--mode-power", type=float, default=None,
                    help="model.mode_power: start intensity fraction of the higher probe modes together (default: the "
                         "engine's)")
    ap.add_argument("--source-size", type=float, default=None,
                    help="start the probe modes from this source size (Å FWHM; a diagnostic: no tool is told the "
                         "case's source)")
    ap.add_argument("--iters", type=int, default=None, help="iterations (default: the case file's)")
    ap.add_argument("--init", default="none", choices=["none", "dpc", "parallax", "ssb", "truth"],
                    help="start the object from this direct method's phase (divided evenly over the slices), as "
                         "reconstruct --auto does (default none: a flat start, as every peer has); truth: the case's "
                         "true summed phase (a diagnostic: does the fit stay there?)")
    ap.add_argument("--init-range", type=float, default=None,
                    help="with --init: stretch the start phase to this peak-to-peak range (rad, summed over slices)")
    ap.add_argument("--bin", type=int, default=1, help="bin the patterns BIN × BIN first (a diagnostic)")
    ap.add_argument("--slices", type=int, default=None,
                    help="reconstruct with this many slices over the case's thickness (default: the case's count)")
    ap.add_argument("--constraint", action="append", default=[], metavar="NAME.FIELD=VALUE",
                    help="one field of a constraint's settings (VALUE read as YAML), e.g. kz_filter.enabled=true "
                         "kz_filter.beta=0.5; repeatable; applied after the options above")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    ap.add_argument("--coarse-start", default=None, help="run.coarse_start: auto, 0 or N (default: the parameter "
                    "file's, auto)")
    ap.add_argument("--precondition-batches", type=int, default=None,
                    help="lsq: run.precondition_batches (default: the parameter file's)")
    args = ap.parse_args()
    set_threads(args.threads)
    import numpy as np
    import torch

    # what the engine imports on first use (the aperture rule's disk measurement with scipy.ndimage, 0.3 s; the
    # coarse start), imported here with the rest: every tool's imports are outside its clock
    import phasestem.calibrate.disk  # noqa: F401
    import phasestem.recon.coarse  # noqa: F401
    import phasestem.recon.streaming  # noqa: F401
    from phasestem.dataset import FourDSTEM
    from phasestem.physics.optics import angular_sampling_for
    from phasestem.recon import Constraints, Ptychography
    from phasestem.recon.data_losses import losses_for_data
    from phasestem.recon.params import RunConfig
    from phasestem.recon.precondition import resolve_batches
    from phasestem.recon.schedule import phase_only
    from phasestem.recon.settings.losses import LossConfig

    c = load_case(args.case)
    setup0 = time.perf_counter()  # the tool's set-up from here to its first iteration's clock
    if args.iters is not None:
        c["iters"] = args.iters
    loss_name = args.loss
    if loss_name == "case":
        loss_name = "counted" if str(c.get("loss", "gaussian")) == "poisson" else "gaussian"
    # counted data: amplitude and Poisson terms, half each (docs/config_reference.md, `losses`): the Poisson
    # likelihood alone is right for the noise but follows every model mismatch in the dark field
    losses = {"gaussian": LossConfig(gaussian=1.0), "poisson": LossConfig(gaussian=0.0, poisson=1.0),
              "counted": LossConfig(gaussian=0.5, poisson=0.5), "none": LossConfig()}[loss_name]
    H, W = c["patterns"].shape[-2:]
    ds = FourDSTEM(patterns=c["patterns"], energy=c["energy"], scan_step=(c["scan_step"],) * 2,
                   angular_sampling=angular_sampling_for(c["energy"], c["sampling"], (H, W)),
                   semiangle=float(c["semiangle"]) * args.semiangle_scale,
                   aberrations={"C10": float(c["c10"]) + args.c10_error}).binned(args.bin)
    held = None
    if args.holdout_counts:  # run.holdout_counts: a share of every counted pattern's counts held out of the fit
        from phasestem.io.counts import counts_decision
        from phasestem.recon.count_split import split_counts

        decision = counts_decision(ds)
        if decision.counted:
            ds, held = split_counts(ds, args.holdout_counts, 0, decision, float("inf"))
            decision.remember(ds)
    ran, why = losses_for_data(losses, ds)  # what the engine runs (--loss none: the data's choice)
    # nominal probe from the optics (never the true one); positions exact → frozen
    n_slices = args.slices or int(c["n_slices"])
    thickness = float(c["dz"]) * int(c["n_slices"])
    start = {}
    if args.init == "truth":
        start = {"initial_phase": np.asarray(c["truth_phase"], dtype=np.float32)}
    elif args.init != "none":  # the data's own direct-method phase (recon.auto.direct_phase), in the dataset frame
        from phasestem.recon.auto import direct_phase

        image = direct_phase(ds, args.init)
        start = {"initial_phase": image.phase, "initial_phase_sampling": tuple(image.sampling)}
    if args.init_range and start:
        ph = np.asarray(start["initial_phase"], dtype=np.float64)
        start["initial_phase"] = ((ph - ph.min()) * (args.init_range / max(np.ptp(ph), 1e-12))).astype(np.float32)
    model = Ptychography.from_dataset(ds, n_slices=n_slices, slice_thickness=thickness / n_slices, **start,
                                      n_probe_modes=c["n_modes"], per_position_tilt=args.per_position_tilt,
                                      **({"mode_power": args.mode_power} if args.mode_power is not None else {}),
                                      **({"source_size": args.source_size} if args.source_size else {}),
                                      **({"aperture_edge": args.aperture_edge} if args.aperture_edge else {}))
    if args.tilt_start != "zero":  # a diagnostic: no tool is told the tilt
        if args.tilt_start == "true":
            start = np.asarray(c.get("tilt_mrad", np.zeros((1, 2))), dtype=np.float64)
            start = start if args.per_position_tilt else start.mean(0)
        else:
            start = np.array([float(v) for v in args.tilt_start.split(",")])
        with torch.no_grad():
            model.tilt.copy_(torch.as_tensor(start, dtype=model.tilt.dtype).expand_as(model.tilt))
    model = model.to(args.device)
    rates = {"positions": {"lr": args.positions_lr, "start": args.positions_start} if args.positions_lr else 0.0}
    if args.tilt_lr is not None:
        rates["tilt"] = args.tilt_lr
    if args.lr is not None:
        rates.update(obj_phase=args.lr, obj_amplitude=args.lr, probe=args.lr)
    for name, value in (r.split("=", 1) for r in args.rate):  # LR, or LR@START (first epoch)
        lr, _, start = value.partition("@")
        rates[name] = {"lr": float(lr), "start": int(start)} if start else float(lr)
    model.set_learning_rates(**rates)
    cons = Constraints(ortho_probe={"enabled": c["n_modes"] > 1}, position_affine={"enabled": args.positions_affine},
                       obj_ramp={"enabled": args.obj_ramp, "start_iter": args.obj_ramp_start},
                       obj_shear={k: v for k, v in (("enabled", _switch(args.obj_shear)),
                                                    ("start_iter", args.obj_shear_start)) if v is not None},
                       **({"probe_aperture": {"enabled": _switch(args.probe_aperture),
                                              "end_iter": args.probe_aperture_end}} if args.probe_aperture else {}))
    if args.constraint:  # NAME.FIELD=VALUE on top of the settings above
        import yaml

        given = cons.model_dump()
        for item in args.constraint:
            key, _, value = item.partition("=")
            name, _, field = key.partition(".")
            given.setdefault(name, {})[field] = yaml.safe_load(value)
        cons = Constraints(**given)
    engine_log = _EngineLog()  # what the engine logs it decided (the 'auto' rules), recorded in the settings
    times, cpu_times, history, losses_seen = [], [], [], []
    c0 = cpu0 = time.process_time()
    t0 = time.perf_counter()
    setup_s = t0 - setup0
    method = model.LSQ_optimize if args.optimizer == "lsq" else model.Adam_optimize
    run = RunConfig()  # the parameter file's defaults
    defaults = {"precondition_reg": run.precondition_reg, "lr_decay": args.lr_decay or run.lr_decay,
                "lr_final": run.lr_final if args.lr_final is None else args.lr_final,
                "precondition_batches": resolve_batches(args.precondition_batches or run.precondition_batches, ran)}
    if args.coarse_start is not None:
        defaults["coarse_start"] = args.coarse_start if args.coarse_start == "auto" else int(args.coarse_start)
    if args.holdout is not None:
        defaults["holdout"] = args.holdout if args.holdout == "auto" else float(args.holdout)
    split = {} if held is None else {"heldout_counts": held}
    for loss in method(c["iters"], ds, batch_size=c["batch"], constraints=cons, losses=losses, progress=False,
                        **defaults, **split):
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        t1 = time.perf_counter()
        c1 = time.process_time()
        times.append(t1 - t0)
        cpu_times.append(c1 - c0)
        losses_seen.append(float(loss))
        history.append(model.phase_in_dataset_frame())  # per-iteration phase, not timed
        t0, c0 = time.perf_counter(), time.process_time()
    cpu = time.process_time() - cpu0
    phase = model.phase_in_dataset_frame()
    if model.epoch < len(history):  # stopped by the held-out rule and rewound: the result is the state it kept
        history[-1] = phase
    import phasestem

    settings = {"tool": f"phasestem {phasestem.__version__}", "optimizer": args.optimizer,
                "learning_rates": {k: s.resolved_lr(k, args.optimizer) for k, s in model.schedules.items()},
                **defaults, **({} if held is None else {"holdout_counts": held.fraction}),
                "batch": c["batch"], "probe_modes": model.n_probe_modes, "slices": model.n_slices,
                "ortho_probe": c["n_modes"] > 1, "tilt_start": args.tilt_start,
                "aperture_edge": args.aperture_edge or "soft (the engine's default)", "c10_error": args.c10_error,
                "semiangle_scale": args.semiangle_scale,
                "mode_power": args.mode_power, "source_size": args.source_size,
                "obj_ramp": {"enabled": args.obj_ramp, "start_iter": args.obj_ramp_start},
                "obj_shear": cons.obj_shear.model_dump(include={"enabled", "start_iter"}),
                "obj_shear_auto": engine_log.after("constraints.obj_shear auto "),
                "obj_clamp_auto": engine_log.after("constraints.obj_clamp auto "),
                "obj_blur_auto": engine_log.after("constraints.obj_blur auto "),
                "probe_aperture": cons.probe_aperture.model_dump(), "per_position_tilt": args.per_position_tilt,
                "probe_aperture_auto": engine_log.after("constraints.probe_aperture auto: "),
                "lr_decay_auto": engine_log.after("run.lr_decay auto: "),
                "coarse_start": engine_log.after("coarse start: "),
                "coarse_start_auto": engine_log.after("coarse start (auto): "),
                "tilt_mrad_per_epoch": [g["tilt"].double().reshape(-1, 2).mean(0).tolist()
                                        for g in model.history.geometry], "device": str(model.device),
                "amplitude_held_low_dose": bool(phase_only(ran.weight("poisson") > 0, float(np.asarray(
                    c["patterns"]).sum((-2, -1)).mean()), model.schedules["obj_amplitude"])),
                "losses": {"gaussian": "gaussian on sqrt(I)", "poisson": "poisson NLL",
                           "counted": "0.5 gaussian on sqrt(I) + 0.5 poisson NLL",
                           "none": f"none named; ran {ran.describe()} ({why or 'the default'})"}[loss_name],
                "constraints_given": args.constraint, "init": args.init,
                "cpu_s_per_iter": cpu / c["iters"], "iter_cpu": cpu_times, "loss_per_epoch": losses_seen,
                "setup_s": setup_s}
    save_result(args.result, phase, np.zeros(2), times, settings, phase_history=history)


def _switch(choice: str | None) -> bool | str | None:
    """on / off / auto as a constraint's ``enabled`` (None: not given)."""
    return None if choice is None else {"on": True, "off": False}.get(choice, "auto")


class _EngineLog(logging.Handler):
    """The INFO lines of the engine's log (``phasestem.recon``) during this run."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        logger = logging.getLogger("phasestem.recon")
        logger.setLevel(logging.INFO)
        logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def after(self, prefix: str) -> str | None:
        """The rest of the last line that starts with ``prefix`` (None: the engine logged none)."""
        return next((line[len(prefix):] for line in reversed(self.lines) if line.startswith(prefix)), None)


if __name__ == "__main__":
    main()
