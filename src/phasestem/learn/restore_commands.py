"""``phasestem restore RESULTS.h5 --model MODEL --out-file OUT.h5``: a trained restorer applied to a finished
reconstruction (issue 48). Writes ``phase`` (the restored phase, rad, dataset frame at the run's pixel),
``input`` (the run's phase on the same grid) and ``field`` (the scanned field), with ``sampling`` (Å), ``model``
and ``results`` attributes; and, when the run has σ maps, ``change_sigma``: (restored − input, offset removed) / σ
over the field (NaN elsewhere), printed as the share of the field changed by more than 3 σ (0.27 % would be
chance: more are features the network made or removed that the data do not support)."""
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
        change = info["change_sigma"]  # the change in units of the data's σ, or None without a σ map
        with atomic_file(Path(args.out_file)) as tmp, h5py.File(tmp, "w") as f:
            f["phase"], f["input"], f["field"] = phase, info["input"], info["field"]
            if change is not None:
                f["change_sigma"] = change.astype(np.float32)
            f.attrs.update({"sampling": np.asarray(info["sampling"]), "model": str(args.model),
                            "results": str(args.results), "units": "rad", "format": "phasestem-restored"})
    print(f"restored phase {phase.shape[0]}×{phase.shape[1]} px at {info['sampling'][0]:.4g} Å → {args.out_file}")
    if change is not None:
        share, level = info["unsupported"], info["significant"]
        print(f"the restorer changed {100 * share:.2f} % of the scanned field by more than {level:g} σ of the "
              f"data (change_sigma in {args.out_file}): " + ("features there are the network's, not the data's"
                                                             if share > 0.0027 else "within the noise"))
    else:
        print("no σ map in the results file (run.uncertainty): the change is not judged against the data's noise")
    return 0
