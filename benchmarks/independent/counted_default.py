"""The data term a user gets without naming one, on counted data (issue 52, item 1): phasestem with no loss named
(the engine now chooses from the data: counts → gaussian 0.5 + poisson 0.5) against the Gaussian term (what naming
nothing gave before) and the Poisson term alone (the one that sounds right), on independent NumPy-multislice
analogues of the issue's low-dose thick case.

    python benchmarks/independent/counted_default.py [--out runs/counted_default] [--half dev val] [--iters 20]
        [--peers ptyrad]

Cases (:data:`CASES`): the issue's geometry (32 × 32 raster at 1 Å, 128² patterns of 0.2 Å, 300 keV, 20 mrad, focus
100 Å before the entrance surface), random atoms of 0.15 / Å² per slice, 4 Å slices, Poisson counts; the development
half at 1e3 / 1e4 / 1e5 e⁻ per pattern on 4 / 6 / 8 slices, the validation half on other specimens, the issue's own
case (6 slices, 1e5) among them. Each run: ``recon_peers/run_phasestem.py`` (lsq, batch 32, nominal probe, exact
positions, 2 threads), scored as ``bench.py`` scores (Pearson r of the summed phase over the scanned field after
origin alignment) at 5 and ``--iters`` iterations. Writes ``OUT/result.json`` and ``OUT/result.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import case_fov, run_tool, score  # noqa: E402
from cases import GEOM, simulate_case  # noqa: E402

_SPEC = dict(dz=4.0, max_phase=0.5, density=0.15, source=0.0)
#: name → (half, slices, e⁻ per pattern, specimen seed)
CASES = {
    "dev_s4_1e3": ("dev", 4, 1e3, 501), "dev_s6_1e4": ("dev", 6, 1e4, 502), "dev_s8_1e5": ("dev", 8, 1e5, 503),
    "val_s5_1e3": ("val", 5, 1e3, 601), "val_s6_1e5": ("val", 6, 1e5, 602), "val_s8_1e4": ("val", 8, 1e4, 603),
}
LOSSES = ("none", "gaussian", "poisson", "counted")


def case_file(out: Path, name: str, iters: int) -> Path:
    """The case's .npz (simulated once; the truth and patterns as ``bench.py``'s cases hold them)."""
    path = out / f"case_{name}.npz"
    if not path.exists():
        _, slices, dose, seed = CASES[name]
        case = simulate_case(dict(_SPEC, n_slices=slices, dose=dose, iters=iters), GEOM, seed)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **case)
        os.replace(tmp, path)
    return path


def run(out: Path, name: str, loss: str, iters: int, threads: int) -> dict:
    """r at 5 and ``iters`` iterations of phasestem with ``--loss loss``, or of a peer (``loss`` = ``peer:TOOL``,
    its runner's defaults as ``bench.py`` runs it, in ``.bench_envs/TOOL`` or else this interpreter); reused when
    its result exists."""
    case = case_file(out, name, iters)
    result = out / f"{name}_{loss.replace(':', '_')}.npz"
    if not result.exists():
        if loss.startswith("peer:"):
            tool = loss.split(":", 1)[1]
            own = Path(".bench_envs") / tool / "bin" / "python"
            err = run_tool(tool, case, result, Path(".bench_envs"), threads, 3600,
                           one_python=None if own.exists() else sys.executable)
        else:
            err = run_tool("phasestem", case, result, Path(".bench_envs"), threads, 3600, ["--loss", loss])
        if err:
            raise SystemExit(f"{name} {loss}: {err}")
    res = dict(np.load(result, allow_pickle=False))
    with np.load(case, allow_pickle=False) as c:
        sc = score(res, c["truth_phase"], case_fov(c))
    settings = json.loads(str(res["settings"])) if "settings" in res else {}
    return {"r5": sc["r"][min(4, len(sc["r"]) - 1)], "r_end": sc["r"][-1], "seconds": float(sum(res["iter_times"])),
            "losses": settings.get("losses")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/counted_default")
    ap.add_argument("--half", nargs="+", default=["dev", "val"], choices=["dev", "val"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", nargs="*", default=[], help="peer tools to run beside (e.g. ptyrad)")
    args = ap.parse_args()
    columns = [*LOSSES, *(f"peer:{t}" for t in args.peers)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"load_average": os.getloadavg()[0], "iters": args.iters, "cases": {}}
    lines = ["| case | half | slices | e⁻/pattern | " + " | ".join(f"r {c} (5 / {args.iters})" for c in columns)
             + " |", "|---|---|---|---|" + "---|" * len(columns)]
    for name, (half, slices, dose, _) in CASES.items():
        if half not in args.half:
            continue
        rows = {c: run(out, name, c, args.iters, args.threads) for c in columns}
        result["cases"][name] = rows
        lines.append(f"| {name} | {half} | {slices} | {dose:.0e} | "
                     + " | ".join(f"{rows[c]['r5']:.3f} / {rows[c]['r_end']:.3f}" for c in columns) + " |")
        print(lines[-1], flush=True)
    result["seconds"] = time.perf_counter() - t0
    (out / "result.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "result.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
