"""The ``phasestem`` command: parse, call the library, report. Thin by design.

Each command module (here in ``cli/``, ``serve``'s in its folder) registers its sub-commands through a
``register(subparsers, train_subparsers)`` function; handlers are stored as ``func`` and return an exit code.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path

from ..base.cliargs import Parser, run_with_errors
from ..base.threads import current_load, prefer_passive_wait
from ..base.version import __version__

#: modules that add sub-commands, in the order they appear in ``--help``
COMMAND_MODULES = (
    "phasestem.cli.simulate",
    "phasestem.cli.reconstruct",
    "phasestem.cli.sigma",
    "phasestem.cli.calibrate",
    "phasestem.cli.learn",
    "phasestem.cli.restore",
    "phasestem.cli.commands",
    "phasestem.cli.plan",
    "phasestem.cli.convert",
    "phasestem.cli.live",
    "phasestem.serve.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="phasestem",
        description="Phase retrieval from 4D-STEM data: simulate, reconstruct (AD ptychography), learn.",
        epilog="Example: phasestem simulate configs/simulate_tiny.yaml --out data/",
    )
    parser.add_argument("--version", action="version", version=f"phasestem {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train", help="train a network from a YAML config",
        description="Train one of phasestem's networks.",
        epilog="Example: phasestem train patch configs/train_patch_tiny.yaml",
    )
    train_sub = train.add_subparsers(dest="network", metavar="NETWORK")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an optional area whose extra is not installed
            if exc.name and exc.name.startswith("phasestem"):
                raise
            logging.getLogger("phasestem").debug("sub-commands of %s unavailable: %s", name, exc)
            continue
        module.register(sub, train_sub)
    train.set_defaults(func=functools.partial(_no_network, train, train_sub))
    return parser


def _no_network(train: argparse.ArgumentParser, networks: argparse.Action, args=None) -> int:
    """``phasestem train`` without a network: the usage and the networks, one line each, on stderr; exit 2 (as
    argparse does for a missing argument)."""
    rows = [(a.dest, a.help or "") for a in getattr(networks, "_choices_actions", [])]
    train.print_usage(sys.stderr)
    if not rows:
        print("phasestem train: error: no network is available: the learned route needs pip install "
              "'phasestem[learn]'", file=sys.stderr)
        return 2
    width = max(len(name) for name, _ in rows)
    print("phasestem train: error: choose the network to train (phasestem train NETWORK CONFIG.yaml):",
          file=sys.stderr)
    for name, text in rows:
        print(f"  {name:<{width}}  {text}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    # on a busy machine idle OpenMP threads sleep instead of spinning (before torch is imported; the measurement is
    # the one run.cpu_threads then reads; phasestem.base.threads): two spinning threads that wait on each other took
    # 2-3x the time of one there (benchmarks/threads)
    passive = "OMP_WAIT_POLICY" not in os.environ and prefer_passive_wait(busy=current_load().busy)
    try:
        with warnings.catch_warnings():  # restored on return: library use of phasestem keeps Python's own display
            warnings.showwarning = log_warning
            return run_with_errors(lambda: func(args), f"phasestem {args.command}", args.debug)
    finally:
        if passive:  # an in-process caller's environment as it was (a torch loaded meanwhile keeps the policy)
            os.environ.pop("OMP_WAIT_POLICY", None)


def log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning raised while a command runs, as one log line (``WARNING phasestem: RuntimeWarning: overflow
    encountered in square (parallax.py:164)``) instead of Python's two lines with the source code."""
    text = " ".join(str(message).split())
    logging.getLogger("phasestem").warning("%s: %s (%s:%d)", category.__name__, text, Path(filename).name, lineno)

