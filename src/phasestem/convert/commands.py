"""``phasestem convert ptyrad PARAMS.yaml --out phasestem_params.yaml``: another tool's parameter file as a
``phasestem reconstruct`` parameter file (:mod:`phasestem.convert.ptyrad`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub, train_sub) -> None:
    p = sub.add_parser(
        "convert", help="translate another tool's parameter file (PtyRAD) into a phasestem reconstruct YAML",
        description="Translate another tool's parameter file into a 'phasestem reconstruct' parameter file.",
        epilog="Example: phasestem convert ptyrad tBL_WSe2.yaml --out phasestem_params.yaml",
    )
    tools = p.add_subparsers(dest="tool", metavar="TOOL")
    t = tools.add_parser(
        "ptyrad", help="a PtyRAD 1.0 params file",
        description="Translates a PtyRAD 1.0 params file (init_params, model_params, loss_params, constraint_params, "
        "recon_params): energy, semi-angle, aberrations (C10 = −defocus, azimuths in rad), detector pixel, scan, "
        "data file and key, detector flips/crop/pad/resample, slices, modes, learning rates and their epochs, "
        "losses, constraints, batch and iterations. Lists, one line each, what it could not translate. The data "
        "file's path is taken from the working directory, as PtyRAD does. Mapping: docs/coming_from.md.",
        epilog="Examples:\n  phasestem convert ptyrad tBL_WSe2.yaml --out phasestem_params.yaml\n"
               "  phasestem convert ptyrad tBL_WSe2.yaml --lsq --out params_lsq.yaml\n"
               "  phasestem convert ptyrad tBL_WSe2.yaml          # print the translation",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("params", type=Path, help="PtyRAD params YAML")
    t.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="phasestem parameter file to write (default: print it)")
    t.add_argument("--lsq", action="store_true",
                   help="phasestem's default solver (lsq) instead of PtyRAD's optimizer: which parameters are "
                        "refined and from which epoch is kept, the learning rates left to lsq")
    t.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    t.set_defaults(func=_ptyrad)
    p.set_defaults(func=lambda args: _no_tool(p))


def _no_tool(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print("phasestem convert: error: name the tool whose file to translate: phasestem convert ptyrad PARAMS.yaml",
          file=sys.stderr)
    return 2


def _ptyrad(args) -> int:
    from ..configfile import read_yaml_mapping
    from ..errors import ConfigError
    from ..recon.params import parse_params
    from ..safety import atomic_file
    from .ptyrad import translate, translation_yaml

    data = read_yaml_mapping(args.params, "PtyRAD params file")
    tr = translate(data, str(args.params), lsq=args.lsq)
    parse_params(tr.params, f"{args.params} (translated)")  # the translation loads as a phasestem file
    if args.out is None:
        sys.stdout.write(translation_yaml(tr, str(args.params)))
        return 0
    if args.out.exists() and not args.overwrite:
        raise ConfigError(f"--out {args.out} exists: give --overwrite to replace it, or another --out")
    text = translation_yaml(tr, str(args.params), base=args.out.parent)
    with atomic_file(args.out, field="--out") as tmp:
        tmp.write_text(text)
    for line in tr.report_lines():
        print(line, file=sys.stderr)
    print(f"wrote {args.out}: phasestem reconstruct {args.out}")
    return 0
