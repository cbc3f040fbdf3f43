"""``phasestem restore RESULTS.h5 --model MODEL --out-file OUT.h5``: a trained restorer applied to a finished
reconstruction (issue 48). Writes ``phase`` (the restored phase, rad, dataset frame at the run's pixel),
``input`` (the run's phase on the same grid) and ``field`` (the scanned field), with ``sampling`` (Å), ``model``
and ``results`` attributes."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(subparsers, train_subparsers) -> None:
    p = subparsers.add_parser(
        "restore", help="restore a finished reconstruction's phase with a trained restorer",
        description="Apply a restorer (phasestem train restorer) to the phase of a phasestem reconstruct run "
                    "(RESULTS.h5): the run's phase, amplitude and illumination in, the restored phase out, on the "
                    "run's own grid. A model trained for another pixel or energy is refused.",
        epilog="Example:\n  phasestem restore recon_out/results.h5 --model runs/restorer --out-file restored.h5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="results.h5 of phasestem reconstruct")
    p.add_argument("--model", required=True, help="restorer: weights file, run folder or shipped name")
    p.add_argument("--out-file", type=Path, required=True, metavar="FILE", help="the restored phase (HDF5)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=_restore)


def _restore(args) -> int:
    import h5py
    import numpy as np

    from ..base.errors import ConfigError
    from ..base.lock import hold_output
    from ..base.safety import atomic_file
    from .hybrid import restore_results

    if Path(args.out_file).resolve() == Path(args.results).resolve():
        raise ConfigError("--out-file: would overwrite the results file it reads")
    with hold_output(args.out_file, "phasestem restore", file=True):
        phase, info = restore_results(args.results, args.model, args.device)
        with atomic_file(Path(args.out_file)) as tmp, h5py.File(tmp, "w") as f:
            f["phase"], f["input"], f["field"] = phase, info["input"], info["field"]
            f.attrs.update({"sampling": np.asarray(info["sampling"]), "model": str(args.model),
                            "results": str(args.results), "units": "rad", "format": "phasestem-restored"})
    print(f"restored phase {phase.shape[0]}×{phase.shape[1]} px at {info['sampling'][0]:.4g} Å → {args.out_file}")
    return 0
