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
        epilog="Example: phasestem convert ptyrad tBL_WSe2.yaml --out-file phasestem_params.yaml",
    )
    tools = p.add_subparsers(dest="tool", metavar="TOOL")
    t = tools.add_parser(
        "ptyrad", help="a PtyRAD 1.0 params file",
        description="Translates a PtyRAD 1.0 params file (init_params, model_params, loss_params, constraint_params, "
        "recon_params): energy, semi-angle, aberrations (C10 = −defocus, azimuths in rad), detector pixel, scan, "
        "data file and key, detector flips/crop/pad/resample, scan rotation/affine/flips, slices, modes, learning "
        "rates and their epochs, losses, constraints, batch and iterations. Lists, one line each, what it could not "
        "translate; stops on an untranslated setting that changes the geometry (--allow-untranslated: go on). The data "
        "file's path is taken from the working directory, as PtyRAD does. Mapping: docs/coming_from.md.",
        epilog="Examples:\n  phasestem convert ptyrad tBL_WSe2.yaml --out-file phasestem_params.yaml\n"
               "  phasestem convert ptyrad tBL_WSe2.yaml --lsq --out recon/   # recon/tBL_WSe2_phasestem.yaml\n"
               "  phasestem convert ptyrad tBL_WSe2.yaml          # print the translation",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("params", type=Path, help="PtyRAD params YAML")
    t.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder: writes PARAMS-STEM_phasestem.yaml in it (neither --out nor --out-file: print "
                        "the translation)")
    t.add_argument("--out-file", type=Path, default=None, metavar="FILE", help="the parameter file to write")
    t.add_argument("--lsq", action="store_true",
                   help="phasestem's default solver (lsq) instead of PtyRAD's optimizer: which parameters are "
                        "refined and from which epoch is kept, the learning rates left to lsq")
    t.add_argument("--allow-untranslated", action="store_true",
                   help="go on past a setting that changes the geometry and has no translation (positions from "
                        "another reconstruction, an off-centre detector crop): listed as not translated instead "
                        "of stopping")
    t.add_argument("--overwrite", action="store_true", help="replace the parameter file when it exists")
    t.set_defaults(func=_ptyrad)
    p.set_defaults(func=lambda args: _no_tool(p))


def _no_tool(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print("phasestem convert: error: name the tool whose file to translate: phasestem convert ptyrad PARAMS.yaml",
          file=sys.stderr)
    return 2


def _ptyrad(args) -> int:
    from ..base.configfile import read_yaml_mapping
    from ..base.errors import ConfigError
    from ..base.safety import atomic_file
    from ..convert.ptyrad import translate, translation_yaml
    from ..recon.params import parse_params

    data = read_yaml_mapping(args.params, "PtyRAD params file")
    tr = translate(data, str(args.params), lsq=args.lsq, allow_untranslated=args.allow_untranslated)
    parse_params(tr.params, f"{args.params} (translated)")  # the translation loads as a phasestem file
    if args.out is None and args.out_file is None:
        sys.stdout.write(translation_yaml(tr, str(args.params)))
        return 0
    out, flag = _result(args)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{flag} {out} exists: give --overwrite to replace it, or another name")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = translation_yaml(tr, str(args.params), base=out.parent)
    with atomic_file(out, field=flag) as tmp:
        tmp.write_text(text)
    for line in tr.report_lines():
        print(line, file=sys.stderr)
    print(f"wrote {out}: phasestem reconstruct {out}")
    return 0


def _result(args) -> tuple[Path, str]:
    """The file to write and the flag that named it: ``--out-file FILE``, else PARAMS-STEM_phasestem.yaml in
    ``--out DIR``; an ``--out`` ending in .yaml/.yml that is not a folder is taken as the file, with one line saying
    that --out-file names a file (--out is the output folder of every command)."""
    from ..base.errors import ConfigError

    if args.out is not None and args.out_file is not None:
        raise ConfigError(f"--out {args.out} and --out-file {args.out_file}: give the folder or the file, not both")
    if args.out_file is not None:
        return args.out_file, "--out-file"
    if args.out.suffix.lower() in (".yaml", ".yml") and not args.out.is_dir():
        print(f"phasestem convert ptyrad: --out {args.out} taken as the file; --out-file {args.out} says so (--out is "
              "the output folder)", file=sys.stderr)
        return args.out, "--out"
    return args.out / f"{args.params.stem}_phasestem.yaml", "--out"
