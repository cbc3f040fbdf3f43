"""``phasestem plan SETTINGS.yaml``: the quantities of an acquisition, its warnings, and the expected result."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub, train_sub) -> None:
    from ..base.cliargs import add_config, add_device, add_dump_config, add_out, add_set

    p = sub.add_parser(
        "plan", help="before the session: overlap, sampling, dose, band limit, and the expected reconstruction",
        description="Reads acquisition settings (energy, semi-angle, defocus, scan step, detector pixel or camera "
        "length, dose per Å² or per pattern or current and dwell time, specimen and thickness) and prints the "
        "quantities ptychography depends on (the probe's size by its stated rule, as probe-extent), with one "
        "warning line for each outside the range where it is known to work. Then simulates a "
        "small field at those settings (Poisson noise at the planned dose), reconstructs it as 'phasestem "
        "reconstruct --auto' would, and prints the expected E_φ and FRC resolution with a figure (truth / "
        "reconstruction / error) in --out; expected.sweep varies one or two settings, plots the result against "
        "them and says which change helps most.",
        epilog="Examples:\n  phasestem plan configs/plan.yaml --out plan_out\n"
               "  phasestem plan configs/plan.yaml --quantities-only\n"
               "  phasestem plan configs/plan.yaml --set scan.step=0.6 --set 'expected.sweep={scan.step: [0.4, 0.8]}'\n"
               "  phasestem plan configs/plan.yaml --dump-config > my_plan.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config(p, "plan settings YAML (see configs/plan.yaml; --dump-config without it prints a documented "
                  "example to start from)", optional=True)
    add_out(p, None, "output folder of the expected result's figures and plan.json (default: 'out' of the "
                     "settings, else plan_out)")
    add_set(p, "scan.step=0.6")
    p.add_argument("--quantities-only", action="store_true",
                   help="the closed-form quantities and warnings only: no simulation, nothing written")
    add_device(p, what="overrides expected.device")
    add_dump_config(p)
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    from ..base.configfile import parse_set_options
    from ..plan import plan
    from ..plan.config import load_plan_config

    overrides = parse_set_options(args.set)
    if args.device is not None:
        overrides["expected.device"] = args.device
    if args.out is not None:
        overrides["out"] = str(Path(args.out).resolve())
    if args.config is None and not args.dump_config:
        from ..base.errors import ConfigError

        raise ConfigError("no settings file: phasestem plan SETTINGS.yaml (phasestem plan --dump-config > plan.yaml "
                          "writes a documented example to edit)")
    cfg = load_plan_config(args.config, overrides)
    if args.dump_config:
        from ..base.configdump import config_yaml

        print(config_yaml(cfg, "phasestem plan"), end="")
        return 0
    report = plan(cfg, expected=False if args.quantities_only else None)
    print(report.text)
    return 0
