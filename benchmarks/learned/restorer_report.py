"""Issue 48's acceptance figures for one restorer from its held-out scores (``train_restorer.py --steps score``) of
the default AD recipe's pairs (``pairs_dev.h5``, ``pairs_val.h5``) and of a long AD run of the same data
(``long_dev.h5``, ``long_val.h5``: ``make-pairs --ad-epochs 100``), optionally ``ad_best.py``'s sweep of more AD
settings and the learned prior's study (``restorer_prior.py``):

    python benchmarks/learned/restorer_report.py OUT/score.json [--ad-best OUT/ad_best.json] \
        [--prior OUT/prior.json] --out OUT/report

Per sample and dose, **AD's best** is the lowest aligned E_φ over every stored epoch of both AD runs and every
setting of the sweep (truth-picked, as the issue asks) and the wall seconds AD took to it; the **restored** phase
is taken at a fixed epoch of the default run (2 and the run's end, both reported). Per half and dose, and per
specimen kind, the ratios are of the means (restored ÷ AD's best). **Speed**: the learned route's seconds to AD's
best are AD's to the first stored epoch whose restoration is at least as good, plus the restorer's; the ratio is
AD's seconds to its best ÷ those (per sample; the median and the fraction of samples where the restoration reaches
AD's best at all). Writes ``report.json`` and ``report.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from layouts import write_json  # noqa: E402


def _epochs(row: dict, prefix: str) -> list[int]:
    return sorted(int(k.rsplit("_", 1)[1]) for k in row if k.startswith(prefix))


def per_sample(score: dict, sweep: dict | None = None, speed: dict | None = None) -> list[dict]:
    """One record per held-out sample and dose: AD's best over both runs (and the settings of ``ad_best.py``'s
    ``sweep``) and its seconds, the restoration at every stored epoch of the default run with AD's seconds to it,
    the restorer's seconds; with ``speed`` (``restorer_speed.py``) the seconds are its quiet timings instead."""
    rows = {(r["file"], r["row"]): r for r in score["rows"]}
    doses = {f: len({str(r["electrons"]) for r in score["rows"] if r["file"] == f}) for f, _ in rows}
    out = []
    for (file, i), r in rows.items():
        if not file.startswith("pairs_"):
            continue
        half = file.removeprefix("pairs_")
        runs = [r] + ([rows[(f"long_{half}", i)]] if (f"long_{half}", i) in rows else [])
        ad = [(run[f"ad_aligned_{e}"], run[f"seconds_{e}"], e) for run in runs for e in _epochs(run, "ad_aligned_")]
        dose = "none" if r["electrons"] is None else format(r["electrons"], ".0e")
        sample = f"{half}:{i // doses[file]}|{dose}"
        ad += [(v["best"], v["best_seconds"], v["best_epoch"]) for k, v in (sweep or {}).items()
               if k.startswith(sample + "|")]
        best, best_s, best_e = min(ad)
        rec = {"half": half, "row": i, "sample": sample, "kind": r["kind"], "electrons": r["electrons"],
               "ad_best": best, "ad_best_seconds": best_s, "ad_best_epoch": best_e,
               "ad_default_end": r[f"ad_aligned_{_epochs(r, 'ad_aligned_')[-1]}"],
               "restore_seconds": r["restore_seconds"], "long_run": len(runs) > 1}
        rec["learned_epoch"] = next((e for e in _epochs(r, "restored_aligned_") if r[f"restored_aligned_{e}"] <= best),
                                    None)
        for e in _epochs(r, "restored_aligned_"):
            rec[f"restored_{e}"], rec[f"seconds_{e}"] = r[f"restored_aligned_{e}"], r[f"seconds_{e}"]
        timed = (speed or {}).get(sample)
        if timed:  # one quiet process (restorer_speed.py): AD's seconds per epoch × epochs, the restorer's
            rec["ad_best_seconds"] = best_s = timed["seconds_per_epoch"] * best_e
            rec["restore_seconds"] = timed["restore_seconds"]
        e = rec["learned_epoch"]
        reached = None if e is None else (timed["seconds_per_epoch"] * e if timed else r[f"seconds_{e}"]) \
            + rec["restore_seconds"]
        rec["learned_seconds_to_ad_best"] = reached
        rec["speedup"] = None if reached is None else best_s / reached
        rec["timed_quietly"] = bool(timed)
        out.append(rec)
    return out


def summarize(samples: list[dict]) -> dict:
    """Means and ratios per (half, dose) and per (half, kind, dose), and the speed figures."""
    def group(sel: list[dict]) -> dict:
        epochs = _epochs(sel[0], "restored_")
        g = {"n": len(sel), "ad_best": float(np.mean([s["ad_best"] for s in sel])),
             "ad_default_end": float(np.mean([s["ad_default_end"] for s in sel]))}
        for e in (epochs[0], epochs[-1]):
            g[f"restored_{e}"] = float(np.mean([s[f"restored_{e}"] for s in sel]))
            g[f"ratio_{e}"] = g[f"restored_{e}"] / g["ad_best"]
        speed = [s["speedup"] for s in sel if s["speedup"] is not None]
        g["reached"] = f"{len(speed)}/{len(sel)}"
        g["speedup_median"] = float(np.median(speed)) if speed else None
        g["ad_best_seconds"] = float(np.median([s["ad_best_seconds"] for s in sel]))
        g["restore_seconds"] = float(np.median([s["restore_seconds"] for s in sel]))
        return g

    def dose(e):
        return "noise-free" if e is None else f"{e:.0e}"

    out: dict = {"by_dose": {}, "by_kind": {}}
    for key in sorted({(s["half"], s["electrons"] or 0.0) for s in samples}):
        sel = [s for s in samples if (s["half"], s["electrons"] or 0.0) == key]
        out["by_dose"][f"{key[0]}, {dose(sel[0]['electrons'])}"] = group(sel)
    for key in sorted({(s["half"], s["kind"], s["electrons"] or 0.0) for s in samples}, key=str):
        sel = [s for s in samples if (s["half"], s["kind"], s["electrons"] or 0.0) == key]
        out["by_kind"][f"{key[0]}, {key[1]}, {dose(sel[0]['electrons'])}"] = group(sel)
    return out


def markdown(summary: dict, prior: dict | None = None) -> str:
    lines = []
    for title, table in (("half, dose", summary["by_dose"]), ("half, kind, dose", summary["by_kind"])):
        g0 = next(iter(table.values()))
        es = sorted(int(k.split("_")[1]) for k in g0 if k.startswith("restored_"))
        lines += ["", f"| {title} | AD's best | AD default end | " + " | ".join(
            f"restored at AD epoch {e} (÷ AD best)" for e in es) + " | reaches AD's best | × sooner (median) |",
            "|---|---|---|" + "---|" * len(es) + "---|---|"]
        for name, g in table.items():
            sp = "–" if g["speedup_median"] is None else f"{g['speedup_median']:.1f}"
            lines.append(f"| {name} | {g['ad_best']:.3f} | {g['ad_default_end']:.3f} | " + " | ".join(
                f"**{g[f'restored_{e}']:.3f}** ({g[f'ratio_{e}']:.2f})" for e in es) + f" | {g['reached']} | {sp} |")
    if prior:
        lines += ["", f"AD + learned prior (`{prior['chosen']}`, chosen on the development half; E_φ at the run's "
                  "last epoch):", "", "| half, dose | AD + prior | its restoration | seconds |", "|---|---|---|---|"]
        for half in ("dev", "val"):
            rows = prior[half].get(prior["chosen"], {})
            for d in ("none", "1e+04"):
                sel = [v for k, v in rows.items() if k.endswith("|" + d)]
                if sel:
                    lines.append(f"| {half}, {d} | {np.mean([v['prior'] for v in sel]):.3f} | "
                                 f"{np.mean([v['prior_restored'] for v in sel]):.3f} | "
                                 f"{np.median([v['seconds'] for v in sel]):.1f} |")
    return "\n".join(lines).strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("score", type=Path)
    p.add_argument("--prior", type=Path, default=None)
    p.add_argument("--ad-best", type=Path, default=None, help="ad_best.py's sweep (more AD settings)")
    p.add_argument("--speed", type=Path, default=None, help="restorer_speed.py's quiet timings")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    sweep = json.loads(args.ad_best.read_text()) if args.ad_best and args.ad_best.exists() else None
    speed = json.loads(args.speed.read_text()) if args.speed and args.speed.exists() else None
    samples = per_sample(json.loads(args.score.read_text()), sweep, speed)
    summary = summarize(samples)
    prior = json.loads(args.prior.read_text()) if args.prior and args.prior.exists() else None
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "report.json", {"samples": samples, "summary": summary, "prior_chosen": prior and
                                          prior.get("chosen")})
    text = markdown(summary, prior)
    (args.out / "report.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
