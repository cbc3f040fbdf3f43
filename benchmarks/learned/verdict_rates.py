"""The verdict's rates on abTEM vacancy specimens (issue 81's acceptance): which share of the columns a restorer put
back at removed sites does ``restore --verdict`` mark unsupported, and which share of the intact columns?

    python benchmarks/learned/verdict_rates.py --out OUT --model restore-seed:1 restore-seed-fine:auto

1. ``OUT/structures``: the held-out specimens of ``train_restorer.py --steps heldout`` (the same seeds and kinds)
   at the seed geometry on a 60 Å cell, 4 phonons; only ``--half``'s abTEM file is simulated (``val`` reports,
   ``dev`` chooses; ``OUT/heldout_HALF``). ``OUT/HALF/vacancies``: ``vacancy_sites.py``'s build: 3 columns removed
   from 3 crystals of that half (a random crystal, wurtzite, 2H-MoS₂), simulated by abTEM (the held-out seed).
2. Each specimen, noise-free and at ``--electrons``, is reconstructed with ``reconstruct``'s defaults on the model's
   grid (``NAME:UPSAMPLING``), restored at the run's end and judged by :func:`phasestem.learn.verdict.verdict`
   against the calibration :func:`phasestem.trust.calibration.calibrate` makes at that geometry and dose (phasestem's
   simulator: the calibration and the test never share a simulator).
3. Rates: a removed site is **filled** when the restoration reads more than ``guard_rates.FILLED`` of a column there
   (``vacancy_sites.py``'s site fraction); it is **marked** when the verdict's candidate within :data:`NEAR` Å is
   unsupported, and **unclaimed** when the restoration has no candidate there. Intact columns: every column of the
   truth inside the field, > 1.5 Å from a removed site (``guard_rates.sites_to_judge``, as the data guard's rates count
   them): **marked** when its candidate is unsupported, **unclaimed** without one.
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
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from guard_rates import FILLED, sites_to_judge  # noqa: E402
from layouts import write_json  # noqa: E402
from restorer_prior import samples  # noqa: E402

#: Å: a removed site or an intact column is judged by the verdict's candidate this close to it
NEAR = 0.8


def build_half(out: Path, half: str) -> Path:
    """The folder ``vacancy_sites.build`` reads for ``half``: the 12 held-out structures of ``train_restorer.py
    --steps heldout`` (``out/structures``), ``half``'s abTEM file as ``val.h5`` and ``kinds.json``; for ``dev`` its
    ``structures`` hold the development half's at the places ``vacancy_sites`` takes (the odd ones)."""
    from abtem_samples import write_abtem_file, write_structures
    from heldout import KIND_CYCLE
    from train_restorer import ABTEM_SEED, HELDOUT_SEED, heldout_config

    from phasestem.simulate.config import SimulationConfig

    cfg = heldout_config(yaml.safe_load((ROOT / "configs/simulate_seed.yaml").read_text()), 60.0, 4)
    n = 12
    kinds = [KIND_CYCLE[(k // 2) % len(KIND_CYCLE)] for k in range(n)]
    structures = sorted((out / "structures").glob("*.xyz"))
    if len(structures) != n:
        structures = write_structures(out / "structures", n, SimulationConfig.model_validate(cfg), HELDOUT_SEED,
                                      kinds)
    use = structures[1::2] if half == "val" else structures[0::2]
    folder = out / f"heldout_{half}"
    (folder / "structures").mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(use):  # vacancy_sites takes sorted(structures)[1::2]
        (folder / "structures" / f"{i:03d}_0.xyz").write_text("")
        (folder / "structures" / f"{i:03d}_1.xyz").write_text(path.read_text())
    sim = folder / "val.h5"
    if not sim.exists():
        spec = {**cfg["specimen"], "kind": "structures", "files": [str(p) for p in use]}
        write_abtem_file(SimulationConfig.model_validate({**cfg, "specimen": spec}), sim, len(use), seed=ABTEM_SEED,
                         structures=use)
    (folder / "kinds.json").write_text(json.dumps({"val": kinds[1::2] if half == "val" else kinds[0::2]}))
    return folder


def one(net, model_name: str, upsampling, ds, truth, ts, spec: dict, electrons, samples_: int, alpha: float,
        figure: Path | None = None) -> dict:
    from phasestem.learn.apply.restorer import restore_channels
    from phasestem.learn.hybrid import ad_recipe_snapshots
    from phasestem.learn.verdict import verdict
    from phasestem.recon.results import optics_record
    from phasestem.trust.calibration import calibrate, power

    snapshots, model = ad_recipe_snapshots(ds, (), model={"upsampling": upsampling})
    ch = snapshots[int(model.epoch)]
    restored = restore_channels(net, ch)
    px = np.asarray(model.sampling, float)
    up = int(round(max(ds.sampling) / px.max()))
    geometry = optics_record(ds, tuple(px), up)
    t = time.process_time()
    cal = calibrate(geometry, model_name, electrons, samples=samples_, progress=False)
    v = verdict(ch["phase"], restored, ch["field"], tuple(px), cal["null"], alpha)
    gt, removed, columns, fractions = sites_to_judge(ch, restored, truth, ts, px, spec)

    def judged(points):  # per point: 1 unsupported, 0 supported, -1 no candidate within NEAR
        out = []
        for q in points:
            d = np.hypot(*(v.sites - q).T) if len(v.sites) else np.array([np.inf])
            k = int(np.argmin(d))
            out.append(-1 if d[k] > NEAR / px.min() else int(not v.supported[k]))
        return np.asarray(out)

    at_removed, at_columns = judged(removed), judged(columns)
    if figure is not None:  # restore's own figure, the verdict marked
        from phasestem.plot.core import pyplot
        from phasestem.plot.restoration import restoration_figure

        figure.parent.mkdir(parents=True, exist_ok=True)
        pyplot().close(restoration_figure(ch["phase"], restored, ch["field"], tuple(px), verdict=v,
                                          title=f"{model_name}: {v.line()}", path=figure))
    from phasestem.learn.verdict import column_heights, column_scale
    from phasestem.trust.calibration import TRUTH_EMPTY

    truth_at = column_heights(gt, v.sites, tuple(px)) / max(column_scale(gt, ch["field"], tuple(px)), 1e-12)
    empty = truth_at < TRUTH_EMPTY  # the realised false discoveries: supported sites where the truth is flat
    return {"upsampling": up, "site_fraction": [float(f) for f in fractions],
            "filled": [bool(f > FILLED) for f in fractions], "removed_verdict": at_removed.tolist(),
            "removed_p": [float(v.p_value[np.argmin(np.hypot(*(v.sites - q).T))]) for q in removed],
            "intact": int(len(columns)), "intact_marked": int((at_columns == 1).sum()),
            "intact_unclaimed": int((at_columns == -1).sum()), "candidates": int(len(v.sites)),
            "unsupported": v.unsupported, "line": v.line(), "supported_empty": int((v.supported & empty).sum()),
            "supported": int(v.supported.sum()), "empty_candidates": int(empty.sum()), "null_sites": cal["null_sites"],
            "calibration_cpu_seconds": cal["cpu_seconds"], "power": power(cal, alpha),
            "verdict_seconds": time.process_time() - t}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", nargs="+", required=True, help="NAME:UPSAMPLING (auto or 1) of each restorer")
    p.add_argument("--half", choices=("dev", "val"), default="val")
    p.add_argument("--electrons", nargs="+", default=["none", "1e4"])
    p.add_argument("--samples", type=int, default=4, help="calibration specimens")
    p.add_argument("--fdr", type=float, default=0.05)
    args = p.parse_args(argv)
    import vacancy_sites
    from train_restorer import heldout_config

    from phasestem.learn.apply.restorer import load_restorer

    electrons = [None if e == "none" else float(e) for e in args.electrons]
    heldout = build_half(args.out, args.half)
    out = args.out / args.half
    cfg = heldout_config(yaml.safe_load((ROOT / "configs/simulate_seed.yaml").read_text()), 60.0, 4)
    layout = vacancy_sites.build(heldout, cfg, [0, 2, 5], 3, [None], out / "vacancies")
    result_file = out / "verdict_rates.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    for entry in args.model:
        name, _, up = entry.rpartition(":")
        net, _ = load_restorer(name)
        rows = result.setdefault(name, {})
        for i, (row, ds, truth, ts) in enumerate(samples(out / "vacancies" / "vacancies.h5", electrons)):
            if row in rows:
                continue
            spec = layout["specimens"][i // len(electrons)]
            dose = electrons[i % len(electrons)]
            picture = out / "figures" / f"{name}_{row.replace(':', '_').replace('|', '_')}.png"
            rows[row] = one(net, name, "auto" if up == "auto" else int(up), ds, truth, ts, spec, dose, args.samples,
                            args.fdr, picture)
            print(name, row, {k: v for k, v in rows[row].items() if k != "line"}, flush=True)
            print("   ", rows[row]["line"], flush=True)
            write_json(result_file, result)
    for name, rows in result.items():
        for dose in ("none", "1e+04"):
            sel = [r for n, r in rows.items() if n.endswith(dose)]
            if not sel:
                continue
            filled = [(f, m) for r in sel for f, m in zip(r["filled"], r["removed_verdict"], strict=True) if f]
            marked = sum(m == 1 for _, m in filled)
            unclaimed = sum(m == -1 for _, m in filled)
            intact = sum(r["intact"] for r in sel)
            wrong = sum(r["intact_marked"] for r in sel)
            fd = [(r.get("supported_empty"), r.get("supported")) for r in sel if "supported_empty" in r]
            fdp = (f"; realised FDP {sum(a for a, _ in fd)}/{sum(b for _, b in fd)} supported sites on a flat truth"
                   if fd else "")
            print(f"{name} {args.half} {dose}: filled sites marked unsupported {marked}/{len(filled)} (unclaimed "
                  f"{unclaimed}); intact columns marked {wrong}/{intact} ({100 * wrong / max(intact, 1):.1f} %), "
                  f"unclaimed {sum(r['intact_unclaimed'] for r in sel)}; calibration CPU "
                  f"{max(r['calibration_cpu_seconds'] for r in sel):.0f} s{fdp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
