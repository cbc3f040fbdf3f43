"""CLI: ``phasestem live PARAMS.yaml --out DIR [--host H] [--data-port P]``: a reconstruction that follows the
detector's stream (:mod:`phasestem.live`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..base.cliargs import add_device, add_set

EPILOG = """examples:
  phasestem live params.yaml --out runs/live1                      # Merlin on this machine, data port 6342
  phasestem live params.yaml --out runs/live1 --host 10.0.0.5 --data-port 6342
  phasestem live params.yaml --out runs/rehearsal --replay night/scan.mib --fps 1000   # rehearse with last night's
                                                                   # .mib, replayed by LiberTEM-live's simulator

PARAMS is a reconstruct parameter file without data.file: the optics (energy, semiangle, angular_sampling or
sampling, aberrations) and the scan (step, rotation; shape when the detector does not announce it) the stream
carries no record of. Writes OUT/stream.h5 (the recording, phasestem's 4D-STEM HDF5), OUT/live.npz (the page of
phasestem serve), OUT/live.log, OUT/live.json (frames expected, sent by the detector, received, recorded; rate,
lag, epochs) and, when the stream ends, what phasestem reconstruct writes (results.h5 with σ, results.emd, figures,
reconstruct.log). A stop (Ctrl-C, SIGTERM) keeps every frame the detector sent: the connection is drained, the
frames recorded (a partial last row too), the scan received reconstructed, exit status 0; a broken connection or a
stall keeps them likewise and exits 1."""


def register(subparsers, train_subparsers) -> None:
    p = subparsers.add_parser(
        "live", help="reconstruct while the detector streams (Merlin): virtual images, iCoM "
                     "and the AD phase growing, then the offline result",
        description="Connect to a detector's stream (Quantum Detectors Merlin's TCP data port; processed frames, "
                    "U08/U16/U32), record it into OUT/stream.h5, fit the positions by AD as their frames "
                    "arrive (OUT/live.npz: what phasestem serve's page shows), and when the scan ends continue to "
                    "convergence as phasestem reconstruct of the recording. --replay rehearses with LiberTEM-live's "
                    "simulator (pip install 'phasestem[live]').",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("params", type=Path, help="reconstruct parameter file (optics, scan, model, run)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="run folder (overrides run.out_dir)")
    p.add_argument("--detector", choices=("merlin",), default="merlin", help="the detector's stream (default merlin)")
    p.add_argument("--host", default="127.0.0.1", help="the detector's data host (default 127.0.0.1)")
    p.add_argument("--data-port", type=int, default=6342, help="the detector's data port (default 6342, Merlin's)")
    p.add_argument("--replay", type=Path, default=None, metavar="SCAN.mib",
                   help="rehearse: replay a recorded Merlin .mib (or its .hdr; in a folder of its own) over the "
                        "detector's protocol with LiberTEM-live's simulator on this machine, armed and triggered as a "
                        "scan engine does, and follow it (needs scan.shape); Ctrl-C stops the replay first, then "
                        "keeps every frame it sent")
    p.add_argument("--fps", type=float, default=1000.0, help="frames per second of --replay (default 1000)")
    p.add_argument("--arm-timeout", type=float, default=60.0, metavar="S",
                   help="seconds to wait for the detector to be armed (default 60)")
    p.add_argument("--stall-timeout", type=float, default=30.0, metavar="S",
                   help="seconds without a frame after which the scan counts as ended (default 30); the page "
                        "says so after three frame intervals and the stack bound (0.25 s)")
    p.add_argument("--epochs", type=int, default=None,
                   help="the run's epochs, the live updates' whole scans included (overrides run.n_epochs)")
    p.add_argument("--preview", metavar="MODEL", default=None,
                   help="a restorer (file, run folder or shipped name) whose restoration of the growing phase goes "
                        "into OUT/live.npz (restored_phase), where its card fits the stream's optics (else "
                        "preview_note and the log say why; the scan goes on)")
    add_device(p, what="overrides run.device")
    add_set(p, "model.n_slices=2")
    p.set_defaults(func=_live_cmd)


def _live_cmd(args) -> int:
    from ..base.configfile import parse_set_options
    from ..base.errors import ConfigError
    from ..live.merlin import MerlinStream
    from ..live.session import live_params, run_live

    params = live_params(args.params, parse_set_options(args.set), args.out)
    if args.epochs:
        params.run.n_epochs = args.epochs
    if args.device:
        params.run.device = args.device
    if args.replay is None:
        run_live(params, MerlinStream(args.host, args.data_port), args.arm_timeout, args.stall_timeout,
                 preview=args.preview)
        return 0
    import math

    from ..base.lock import hold_output
    from ..live.replay import MibReplay
    from ..live.session import LIVE_COMMAND, check_new_folder

    if params.scan.shape is None:
        raise ConfigError("scan.shape: --replay needs the scan's shape (rows, cols) in the parameter file")
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise ConfigError(f"--fps: frames per second of the replay must be more than 0, got {args.fps:g}")
    out = Path(params.run.out_dir)
    with hold_output(out, LIVE_COMMAND):  # the simulator's log goes into the folder: held first (run_live nests)
        check_new_folder(out)  # before the simulator starts
        with MibReplay(args.replay, tuple(params.scan.shape), args.fps, out / "replay.log") as sim:
            run_live(params, MerlinStream("127.0.0.1", sim.data_port), args.arm_timeout, args.stall_timeout,
                     preview=args.preview, rehearsal=sim)
    return 0
