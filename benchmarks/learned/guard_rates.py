"""The data guard's rates on the abTEM vacancy specimens (issue 68's acceptance): which share of the columns a
restorer put back at removed sites does it flag, and which share of the intact columns?

    python benchmarks/learned/guard_rates.py --vacancies OUT/vacancies --out OUT/guard_rates.json \
        --model restore-seed-fine:auto restore-seed:1

Each specimen of ``vacancy_sites.py``'s ``OUT/vacancies/vacancies.h5`` (noise-free, and the counted copies of
``--electrons`` drawn as the pairs draw them) is reconstructed with ``reconstruct``'s defaults (the pairs' recipe,
:func:`phasestem.learn.hybrid.ad_recipe_model`) on the model's grid (``NAME:UPSAMPLING``: ``auto`` for a restorer of
the finer grid, ``1`` for one of the detector's), restored at the run's end, and the restoration tested by the data
guard (:func:`phasestem.learn.data_guard.data_guard` on the run in memory,
:func:`phasestem.learn.hybrid.fitted_guard_run`) at given sites: the removed columns and every intact column of the
truth inside the scanned field (≥ :data:`EDGE` Å from its edge). A removed site counts as **filled** when the
restoration reads more than :data:`FILLED` of a column there (:func:`phasestem.learn.guards.site_fraction`, as
``vacancy_sites.py``); the rates: flagged ÷ filled sites, flagged ÷ intact columns.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from layouts import write_json  # noqa: E402
from restorer_guards import SITE_DISK, column_peaks  # noqa: E402
from restorer_prior import samples  # noqa: E402
from train_restorer import parse_electrons  # noqa: E402

#: a removed site reading more than this fraction of a column in the restoration is a filled one
FILLED = 0.15
#: Å: intact columns this close to the scanned field's edge are not tested (AD's edge is poorly lit)
EDGE = 2.0


def sites_to_judge(ch: dict, restored: np.ndarray, truth: np.ndarray, ts, px: np.ndarray, spec: dict):
    """(the truth on AD's grid, the removed sites (n, 2) px, the intact columns (m, 2) px: the truth's columns inside
    the field ≥ :data:`EDGE` Å from its edge and > 1.5 Å from a removed site, the restored site fraction at each
    removed site) of one specimen's run (``ch``: AD's channels, ``px``: its pixel Å)."""
    from scipy import ndimage

    from phasestem.learn.ad_pairs import truth_on_ad_grid
    from phasestem.learn.guards import site_fraction

    field = ch["field"] > 0
    gt = truth_on_ad_grid(truth, ts, tuple(px), ch["phase"].shape)
    inner = ndimage.binary_erosion(field, iterations=int(round(EDGE / px.min())))
    removed = np.asarray(spec["sites"]) / px
    columns = column_peaks(gt, tuple(px)) / px
    far = np.min([np.hypot(*(columns - s).T) for s in removed], axis=0) > 1.5 / px.min()
    columns = columns[far & inner[tuple(np.clip(np.round(columns).astype(int), 0, np.asarray(field.shape) - 1).T)]]
    fractions = [site_fraction(restored, s[None], np.asarray(c) / px, SITE_DISK / px.min())
                 for s, c in zip(removed, spec["neighbours"], strict=True)]
    return gt, removed, columns, fractions


def one(net, name: str, upsampling, ds, truth: np.ndarray, ts, spec: dict) -> dict:
    """AD, the restoration and the guard at the removed sites and the intact columns of one specimen and dose."""
    from phasestem.learn.apply.restorer import restore_channels
    from phasestem.learn.data_guard import data_guard
    from phasestem.learn.hybrid import ad_recipe_snapshots, fitted_guard_run

    snapshots, model = ad_recipe_snapshots(ds, (), model={"upsampling": upsampling})
    ch = snapshots[int(model.epoch)]
    ad_seconds = float(ch["seconds"])
    restored = restore_channels(net, ch)
    px = np.asarray(model.sampling, float)
    gt, removed, columns, fractions = sites_to_judge(ch, restored, truth, ts, px, spec)
    sites = np.round(np.concatenate([removed, columns])).astype(int)
    t = time.perf_counter()
    result = data_guard(fitted_guard_run(model, ds, name), restored, ch["phase"], ch["field"], sites=sites)
    flagged = result.flagged
    n = len(removed)
    filled = np.asarray(fractions) > FILLED
    return {"upsampling": int(round(max(ds.sampling) / px.max())), "ad_seconds": ad_seconds,
            "guard_seconds": time.perf_counter() - t, "site_fraction": [float(f) for f in fractions],
            "removed_flagged": flagged[:n].tolist(), "removed_z": result.statistic[:n].tolist(),
            "filled": filled.tolist(), "intact_tested": int(len(columns)),
            "intact_flagged": int(flagged[n:].sum()), "intact_z_max": float(result.statistic[n:].max()),
            "noise": result.noise}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vacancies", type=Path, required=True, help="vacancy_sites.py's --out folder")
    p.add_argument("--model", nargs="+", required=True, help="NAME:UPSAMPLING (auto or 1) of each restorer")
    p.add_argument("--electrons", nargs="+", type=parse_electrons, default=[None, 1e4])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from phasestem.learn.apply.restorer import load_restorer

    layout = json.loads((args.vacancies / "layout.json").read_text())
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    for entry in args.model:
        model, _, up = entry.rpartition(":")
        net, _ = load_restorer(model)
        rows = result.setdefault(model, {})
        for i, (name, ds, truth, ts) in enumerate(samples(args.vacancies / "vacancies.h5", args.electrons)):
            if name in rows:
                continue
            spec = layout["specimens"][i // len(args.electrons)]
            rows[name] = one(net, name, "auto" if up == "auto" else int(up), ds, truth, ts, spec)
            print(model, name, {k: v for k, v in rows[name].items() if k != "noise"}, flush=True)
            write_json(args.out, result)
    for model, rows in result.items():
        for dose in ("none", "1e+04"):
            sel = [r for n, r in rows.items() if n.endswith(dose)]
            filled = sum(sum(r["filled"]) for r in sel)
            caught = sum(sum(f and g for f, g in zip(r["filled"], r["removed_flagged"], strict=True)) for r in sel)
            intact = sum(r["intact_tested"] for r in sel)
            wrong = sum(r["intact_flagged"] for r in sel)
            print(f"{model} {dose}: filled sites flagged {caught}/{filled}; intact columns flagged {wrong}/{intact} "
                  f"({100 * wrong / max(intact, 1):.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
