"""CLI: ``phasestem serve [--root DIR] [--port N] [--host 127.0.0.1]``."""
from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  phasestem serve                          # this folder, http://127.0.0.1:8888/?token=…
  phasestem serve --root /data --port 8888
  ssh -L 8888:localhost:8888 gpu-box       # then, on gpu-box: phasestem serve --root /data --port 8888,
                                           # and open the printed link on your own machine

Jobs run in ROOT/runs/NNNN-COMMAND/ as the phasestem command the job page shows; the queue is kept in
ROOT/.phasestem-serve/ and survives a restart (a job interrupted by it resumes with --resume)."""


def register(subparsers, train_subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="browser workspace: browse data, calibrate, queue reconstructions, watch them converge live",
        description="A web workspace over the files under --root: browse 4D-STEM data (virtual BF/ADF/CoM, single "
                    "patterns), calibrate, queue phasestem commands (reconstruct, train, simulate) as jobs on this "
                    "machine's CPU or GPUs, watch a reconstruction live and compare runs. Prints a link carrying a "
                    "random token (as Jupyter does); every request needs it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", type=Path, default=Path("."), help="the workspace folder (default: this folder)")
    p.add_argument("--port", type=int, default=8888, help="port (default 8888; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; another prints a warning)")
    p.add_argument("--token", default=None,
                   help="the access token (default: $PHASESTEM_SERVE_TOKEN, else a new random one)")
    p.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest upload in MiB (default 2048)")
    p.add_argument("--max-jobs", type=int, default=1, help="jobs running at once (default 1)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another name this server may be reached by (the Host header; repeatable): every other is "
                        "refused, so that a web page whose DNS name points at this machine cannot use the server")
    p.add_argument("--no-kernel-confinement", action="store_true",
                   help="run jobs without the kernel's confinement (Landlock), kept inside the root by the path "
                        "checks alone; the banner says so. Needed where the kernel has no Landlock: serve refuses "
                        "to start there without it")
    p.add_argument("--reader-seconds", type=float, default=60.0, metavar="S",
                   help="seconds one request may spend reading a data or results file (the dataset page, Compare) "
                        "before its reader process is stopped and the request refused (default 60)")
    p.add_argument("--reader-memory-mb", type=int, default=4096, metavar="MB",
                   help="memory (MiB of address space, beyond its libraries) a reader process may use for one "
                        "request (default 4096)")
    p.set_defaults(func=_serve_cmd)


def _serve_cmd(args) -> int:
    from ..base.errors import ConfigError
    from .app import serve
    from .reader import ReaderLimits

    if args.max_jobs < 1 or args.max_upload_mb <= 0:
        raise ConfigError("--max-jobs must be ≥ 1 and --max-upload-mb > 0")
    if not 0 < args.reader_seconds <= 86400 or args.reader_memory_mb < 256:
        raise ConfigError("--reader-seconds must be > 0 (at most 86400) and --reader-memory-mb ≥ 256")
    return serve(args.root, host=args.host, port=args.port, token=args.token,
                 max_upload=int(args.max_upload_mb * 2**20), max_running=args.max_jobs,
                 allow_hosts=tuple(args.allow_host), kernel_confinement=not args.no_kernel_confinement,
                 reader_limits=ReaderLimits(seconds=args.reader_seconds, memory_mb=args.reader_memory_mb))
