"""The data guard where a restorer is forced onto a geometry it was not trained for (issue 68's acceptance: "at a wrong
geometry forced through, it flags most of the field").

    python benchmarks/learned/wrong_geometry_guard.py --heldout OUT/heldout --sim-config configs/simulate_seed.yaml \
        --heldout-extent 60 --model restore-seed-fine --out OUT/wrong_geometry

The first validation crystal (``OUT/heldout/structures``) simulated by abTEM at ``--semiangle`` mrad (the card says
30), everything else the held-out geometry's; AD by ``reconstruct``'s defaults on the card's pixel
(``model.upsampling`` 2, so only the semi-angle differs), noise-free and counted; the restorer applied without its
geometry check (what ``restore`` refuses), and the guard (:func:`phasestem.learn.data_guard.data_guard`, its own
sites) on the run in memory. Reported per dose: E_φ of AD and of the restoration, the share of the tested sites
flagged and the share of the scanned field whose data-support value exceeds the threshold; the same for the crystal
at the card's own geometry (``OUT/heldout/val.h5``) beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from layouts import log_seconds, write_json  # noqa: E402
from restorer_guards import guard_arguments  # noqa: E402
from restorer_prior import samples  # noqa: E402
from train_restorer import ABTEM_SEED, aligned_error, heldout_config  # noqa: E402


def one(net, name: str, ds, truth: np.ndarray, ts) -> dict:
    """AD (the card's pixel), the restoration without the geometry check, and the guard's shares."""
    from phasestem.learn.ad_pairs import truth_on_ad_grid
    from phasestem.learn.apply.restorer import restore_channels
    from phasestem.learn.data_guard import data_guard
    from phasestem.learn.hybrid import ad_recipe_snapshots, fitted_guard_run

    snapshots, model = ad_recipe_snapshots(ds, (), model={"upsampling": 2})
    ch = snapshots[int(model.epoch)]
    restored = restore_channels(net, ch)
    gt = truth_on_ad_grid(truth, ts, tuple(float(s) for s in model.sampling), ch["phase"].shape)
    g = data_guard(fitted_guard_run(model, ds, name), restored, ch["phase"], ch["field"])
    inside = ch["field"] > 0
    return {"ad": aligned_error(ch["phase"], gt, ch["field"]), "restored": aligned_error(restored, gt, ch["field"]),
            "sites": int(len(g.sites)), "flagged": int(g.flagged.sum()),
            "flagged_share": float(g.flagged.mean()) if len(g.sites) else 0.0,
            "field_beyond": float(np.mean(np.nan_to_num(g.support[inside], nan=0.0) > g.threshold)),
            "counted": g.counted}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    guard_arguments(p, steps=False)
    p.add_argument("--semiangle", type=float, default=20.0, help="mrad of the wrong geometry (the card's: 30)")
    args = p.parse_args(argv)
    from abtem_samples import write_abtem_file

    from phasestem.learn.apply.restorer import load_restorer
    from phasestem.simulate.config import SimulationConfig

    args.out.mkdir(parents=True, exist_ok=True)
    cfg = heldout_config(yaml.safe_load(args.sim_config.read_text()), args.heldout_extent, args.phonons)
    cfg["optics"] = {**cfg["optics"], "semiangle": float(args.semiangle)}
    structure = sorted((args.heldout / "structures").glob("*.xyz"))[1]  # the validation half's first
    sim = args.out / f"wrong_{args.semiangle:g}mrad.h5"
    if not sim.exists():
        spec = {**cfg["specimen"], "kind": "structures", "files": [str(structure)]}
        t = time.perf_counter()
        write_abtem_file(SimulationConfig.model_validate({**cfg, "specimen": spec}), sim, 1, seed=ABTEM_SEED,
                         structures=[structure])
        log_seconds(args.out, "abtem_wrong", time.perf_counter() - t)
    net, _ = load_restorer(args.model)
    result_file = args.out / "wrong_geometry.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    for label, path in ((f"{args.semiangle:g} mrad", sim), ("card's 30 mrad", args.heldout / "val.h5")):
        for name, ds, truth, ts in samples(path, args.electrons):
            if not name.startswith(f"{path.stem}:0|"):
                continue
            key = f"{label} {name.split('|')[1]}"
            if key not in result:
                result[key] = one(net, name, ds, truth, ts)
                print(key, result[key], flush=True)
                write_json(result_file, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
