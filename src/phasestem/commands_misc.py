"""``phasestem inspect`` and ``phasestem demo``."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub, train_sub) -> None:
    p = sub.add_parser(
        "inspect", help="look at a 4D-STEM file: mean pattern, virtual BF/ADF, centre of mass, one pattern",
        description="Writes a PNG overview of a 4D-STEM file (and shows it when a display is available).",
        epilog="Examples:\n  phasestem inspect data/simulation_data1.h5 --sample 0\n"
        "  phasestem inspect scan.npy --energy 300e3 --scan-step 0.5 --angular-sampling 0.8 --at 10 12",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="4D-STEM file (.h5/.hdf5/.npy/.npz/.cxi/.mat/.emd/.raw)")
    p.add_argument("--key", dest="patterns_key", help="dataset/array holding the patterns")
    p.add_argument("--sample", type=int, help="sample index in a seed-layout file")
    p.add_argument("--energy", type=float, help="beam energy in eV when the file lacks it")
    p.add_argument("--scan-step", type=float, help="scan step in Å when the file lacks it")
    p.add_argument("--angular-sampling", type=float, help="detector pixel in mrad when the file lacks it")
    p.add_argument("--scan-shape", type=int, nargs=2, help="rows cols, for flat (N, H, W) data")
    p.add_argument("--at", type=int, nargs=2, metavar=("ROW", "COL"), help="scan position of the single pattern")
    p.add_argument("--out", help="PNG path (default: <file>_inspect.png)")
    p.add_argument("--show", action="store_true", help="open an interactive window")
    p.set_defaults(func=_inspect)

    d = sub.add_parser(
        "demo", help="the whole story on a built-in example: simulate, reconstruct, predict, refine, report",
        description="Simulates a small built-in dataset, reconstructs it by AD ptychography, predicts it with the "
        "learned pipeline, refines with Phaseformer and writes a report with figures and figures of merit.",
        epilog="Example: phasestem demo --out demo_output",
    )
    d.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    d.add_argument("--quick", action="store_true", help="smallest sizes (for tests)")
    d.set_defaults(func=_demo)


def _inspect(args) -> int:
    from . import io

    opts = {k: v for k, v in dict(patterns_key=args.patterns_key, energy=args.energy, scan_step=args.scan_step,
                                  angular_sampling=args.angular_sampling, scan_shape=args.scan_shape).items()
            if v is not None}
    if args.sample is not None:
        opts["sample"] = args.sample
    ds = io.load(args.file, **opts)
    out = Path(args.out) if args.out else Path(args.file).with_name(Path(args.file).stem + "_inspect.png")
    ds.inspect(index=tuple(args.at) if args.at else None, path=out)
    print(ds.summary())
    print(f"wrote {out}")
    if args.show:
        import matplotlib.pyplot as plt

        plt.show()
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    report = run_demo(Path(args.out), quick=args.quick)
    print(f"report: {report}")
    return 0
