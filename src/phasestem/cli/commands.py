"""``phasestem inspect`` and ``phasestem demo``."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub, train_sub) -> None:
    from ..base.cliargs import add_config, add_device, add_dump_config, add_out
    from ..io import formats_line
    from .calibrate import add_reader_arguments

    formats = formats_line()
    p = sub.add_parser(
        "inspect", help="first look at a 4D-STEM file, no calibration needed: mean pattern with the bright-field "
                        "disk, virtual BF/ADF, centre of mass",
        description="Writes a PNG overview of a 4D-STEM file into the working directory (or --out): the mean "
                    "pattern (log) with the fitted bright-field disk (centre and radius), virtual bright and "
                    "annular dark field about it, the centre of mass (x, y) and one pattern. Nothing is needed "
                    "besides the file: without the scan step the scan is in pixels, without the detector pixel "
                    "(--angular-sampling, or --semiangle with the fitted disk) the angles are. With --show (a "
                    "desktop session) a click on a scan image shows that position's pattern.\n\nFiles: "
                    + formats + "; the reader options are calibrate's.",
        epilog="Examples:\n  phasestem inspect scan.mib\n"
        "  phasestem inspect scan.h5 --key /entry/data --scan-step 0.4 --semiangle 21.4 --out looks\n"
        "  phasestem inspect data/simulation_data1.h5 --sample 0 --at 10 12",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="4D-STEM file (" + formats + ")")
    add_reader_arguments(p)
    p.add_argument("--sample", type=int, help="sample index in a seed-layout file")
    p.add_argument("--at", type=int, nargs=2, metavar=("ROW", "COL"), help="scan position of the single pattern")
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                   help="output folder for FILE-STEM_inspect.png (default: the working directory; never beside "
                        "the input unless you say so)")
    p.add_argument("--show", action="store_true", help="open an interactive window (click a scan position)")
    p.set_defaults(func=_inspect)

    d = sub.add_parser(
        "demo", help="the whole story on a built-in example: simulate, reconstruct, predict, refine, report",
        description="Simulates a small built-in dataset, reconstructs a held-out scan by AD ptychography (the lsq "
        "solver), trains the tiny learned pipeline and a Phaseformer on the other scans, predicts and refines the "
        "held-out phase, runs the hybrid route (AD from the learned prediction) and writes OUT/report.md with "
        "figures and figures of merit. The learned training takes most of the time: --skip-learned leaves it "
        "out, --quick shrinks every stage.",
        epilog="Examples:\n  phasestem demo --out demo_output\n  phasestem demo --skip-learned --out demo_ad\n"
               "  phasestem demo --quick --out demo_check --device cpu\n"
               "  phasestem demo --dump-config > demo.yaml   # the built-in settings, documented\n"
               "  phasestem demo demo.yaml --device cuda",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config(d, "demo settings YAML (default: the built-in settings, shipped inside the package as "
                  "phasestem/configs/demo.yaml: --dump-config > demo.yaml writes them out to edit)", optional=True)
    add_out(d, "demo_output", "output folder (default: demo_output)")
    d.add_argument("--quick", action="store_true",
                   help="the smallest size of every stage (the settings' quick section: an 8 × 8 scan, 4 training "
                        "samples, one epoch per network): checks that everything runs; the figures of merit mean "
                        "nothing")
    d.add_argument("--skip-learned", action="store_true",
                   help="simulation of the held-out scan and AD ptychography only (no training, Phaseformer or "
                        "hybrid route)")
    d.add_argument("--overwrite", action="store_true",
                   help="replace another demo run in --out (its report, figures, data and runs are removed first); "
                        "without it such a folder is refused")
    add_device(d, "cpu", "simulation, the reconstructions and the training")
    add_dump_config(d)
    d.set_defaults(func=_demo)


def inspect_output(file: str | Path, out: str | Path) -> Path:
    """Where ``phasestem inspect FILE --out OUT`` writes its figure: OUT/FILE-STEM_inspect.png (``out`` a
    folder); an ``out`` ending in .png is that file (the old meaning of --out, deprecated)."""
    out = Path(out)
    return out if out.suffix.lower() == ".png" else out / f"{Path(file).stem}_inspect.png"


def _inspect(args) -> int:
    from .. import io
    from ..base.cliargs import deprecation
    from ..base.safety import refuse_output_over_inputs
    from ..calibrate.overview import inspect
    from .calibrate import reader_options, scan_step

    opts = reader_options(args)
    for key, value in (("energy", args.energy), ("scan_step", scan_step(args)), ("semiangle", args.semiangle),
                       ("angular_sampling", args.angular_sampling), ("sample", args.sample)):
        if value is not None:
            opts[key] = value
    out = inspect_output(args.file, args.out)
    refuse_output_over_inputs(out, [args.file], field="--out")
    ds = io.load(args.file, format=args.format, require_calibration=False, **opts)
    fig = inspect(ds, index=tuple(args.at) if args.at else None, path=out)
    print(ds.summary())
    print(fig.first_look.describe())
    print(f"wrote {out}")
    if Path(args.out).suffix.lower() == ".png":
        deprecation("phasestem inspect", f"--out {args.out} (a PNG name)", f"--out DIR (the output folder; the "
                    f"figure is then named {Path(args.file).stem}_inspect.png)")
    import matplotlib.pyplot as plt

    if args.show:
        plt.show()
    plt.close(fig)
    return 0


def _demo(args) -> int:
    from .demo import BUILTIN_DEMO, load_demo_config, run_demo

    if args.dump_config:
        from ..base.configdump import config_yaml

        print(config_yaml(load_demo_config(Path(args.config or BUILTIN_DEMO), quick=args.quick), "phasestem demo"),
              end="")
        return 0
    report = run_demo(Path(args.out), quick=args.quick, config=args.config, device=args.device,
                      learned=not args.skip_learned, overwrite=args.overwrite)
    print(f"report: {report}")
    return 0
