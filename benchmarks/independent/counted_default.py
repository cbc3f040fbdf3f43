"""The data term a user gets without naming one, on counted data (issue 52, item 1): phasestem with no loss named
(the engine now chooses from the data: counts → gaussian 0.5 + poisson 0.5) against the Gaussian term (what naming
nothing gave before) and the Poisson term alone (the one that sounds right), on independent NumPy-multislice
analogues of the issue's low-dose thick case.

    python benchmarks/independent/counted_default.py [--out runs/counted_default] [--half dev val] [--iters 20]
        [--peers ptyrad] [--columns none noreg blur0.4 …] [--cases …]

Cases (:data:`CASES`): the issue's geometry (32 × 32 raster at 1 Å, 128² patterns of 0.2 Å, 300 keV, 20 mrad, focus
100 Å before the entrance surface), random atoms of 0.15 / Å² per slice, 4 Å slices, Poisson counts; the development
half at 1e3 / 1e4 / 1e5 e⁻ per pattern on 4 / 6 / 8 slices, the validation half on other specimens, the issue's own
case (6 slices, 1e5) among them. Issue 69 added weak specimens (``w`` cases: 0.4 atoms / Å² per slice of 0.06–0.08
rad, an amorphous film's analogue, where the data term alone fits the noise at 1e5 e⁻) to both halves, and the columns
``noreg`` (no loss named, ``obj_blur`` off: the defaults before the dose's blur), ``blur0.4`` (a fixed σ of 0.4 px
every epoch) and ``decay_whole_run`` (the learning-rate cosine over the whole run, as before ``lr_decay: auto`` ended
it at epoch 20 for counted data); ``none`` is the defaults as they are. Each run: ``recon_peers/run_phasestem.py``
(lsq, batch 32, nominal probe, exact positions, 2 threads), scored as ``bench.py`` scores (Pearson r of the summed
phase over the scanned field after origin alignment) at 5 and ``--iters`` iterations (``result.json`` also holds r at
20 where ``--iters`` is more). Peers (``--peers``): ``ptyrad`` as ``bench.py`` runs it (its tuned learning rates, no
blur), and ``ptyrad_defaults``, the same with PtyRAD's own default regularisation, ``obj_rblur`` σ 0.4 px and
``obj_zblur`` σ 1 layer every iteration (:data:`PEER_VARIANTS`); a peer's learning rates do not decay, so its r at 20
of a 40-iteration run is its 20-iteration result. Writes ``OUT/result.json`` and ``OUT/result.md``.
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
#: the weak specimens of issue 69's counted thick regime: many weak atoms per 4 Å slice (an amorphous film's
#: analogue), where the data term alone fits the noise at 1e5 e⁻
_WEAK = dict(_SPEC, max_phase=0.07, density=0.4)
#: name → (half, slices, e⁻ per pattern, specimen seed, specimen)
CASES = {
    "dev_s4_1e3": ("dev", 4, 1e3, 501, _SPEC), "dev_s6_1e4": ("dev", 6, 1e4, 502, _SPEC),
    "dev_s8_1e5": ("dev", 8, 1e5, 503, _SPEC),
    "dev_w4_1e5": ("dev", 4, 1e5, 511, _WEAK), "dev_w6_1e5": ("dev", 6, 1e5, 512, _WEAK),
    "dev_w8_1e4": ("dev", 8, 1e4, 513, _WEAK),
    "val_s5_1e3": ("val", 5, 1e3, 601, _SPEC), "val_s6_1e5": ("val", 6, 1e5, 602, _SPEC),
    "val_s8_1e4": ("val", 8, 1e4, 603, _SPEC),
    "val_w6_1e5": ("val", 6, 1e5, 612, _WEAK), "val_w8_1e5": ("val", 8, 1e5, 613, dict(_WEAK, max_phase=0.06)),
    "val_w5_1e4": ("val", 5, 1e4, 614, dict(_WEAK, max_phase=0.08, width=0.35)),
}
LOSSES = ("none", "gaussian", "poisson", "counted")
#: peer columns beyond the runners' own: tool → (runner, its options); PtyRAD's template blurs (issue 69)
PEER_VARIANTS = {"ptyrad_defaults": ("ptyrad", ["--rblur", "0.4", "--zblur", "1"])}
#: columns that run with no loss named and options of run_phasestem.py: today's defaults without the dose's
#: regularisation (issue 69), and the issue's fixed lateral blur
VARIANTS = {"noreg": ["--loss", "none", "--constraint", "obj_blur.enabled=false"],
            "blur0.4": ["--loss", "none", "--constraint", "obj_blur.enabled=true",
                        "--constraint", "obj_blur.sigma=0.4"],
            # the cosine spanning the whole run (the default before lr_decay: auto spanned counted data's first 20)
            "decay_whole_run": ["--loss", "none", "--lr-decay", "cosine"],
            # a lower floor after the decay (issue 69: no lower at 40 epochs than at 20)
            "final0.03": ["--loss", "none", "--lr-final", "0.03"],
            "final0.01": ["--loss", "none", "--lr-final", "0.01"]}


def case_file(out: Path, name: str, iters: int) -> Path:
    """The case's .npz (simulated once; the truth and patterns as ``bench.py``'s cases hold them)."""
    path = out / f"case_{name}.npz"
    if not path.exists():
        _, slices, dose, seed, specimen = CASES[name]
        case = simulate_case(dict(specimen, n_slices=slices, dose=dose, iters=iters), GEOM, seed)
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
            tool, options = PEER_VARIANTS.get(loss.split(":", 1)[1], (loss.split(":", 1)[1], []))
            own = Path(".bench_envs") / tool / "bin" / "python"
            err = run_tool(tool, case, result, Path(".bench_envs"), threads, 3600, options,
                           one_python=None if own.exists() else sys.executable)
        else:
            options = VARIANTS.get(loss, ["--loss", loss])
            err = run_tool("phasestem", case, result, Path(".bench_envs"), threads, 3600,
                           [*options, "--iters", str(iters)])
        if err:
            raise SystemExit(f"{name} {loss}: {err}")
    res = dict(np.load(result, allow_pickle=False))
    with np.load(case, allow_pickle=False) as c:
        sc = score(res, c["truth_phase"], case_fov(c))
    settings = json.loads(str(res["settings"])) if "settings" in res else {}
    r = sc["r"]
    return {"r5": r[min(4, len(r) - 1)], "r20": r[min(19, len(r) - 1)], "r_end": r[-1],
            "seconds": float(sum(res["iter_times"])), "losses": settings.get("losses")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/counted_default")
    ap.add_argument("--half", nargs="+", default=["dev", "val"], choices=["dev", "val"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", nargs="*", default=[], help="peer tools to run beside (e.g. ptyrad)")
    ap.add_argument("--columns", nargs="+", default=list(LOSSES), choices=[*LOSSES, *VARIANTS],
                    help="phasestem's columns: a data term named (none: the defaults), or a variant of VARIANTS")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    columns = [*args.columns, *(f"peer:{t}" for t in args.peers)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"load_average": os.getloadavg()[0], "iters": args.iters, "cases": {}}
    lines = ["| case | half | slices | e⁻/pattern | " + " | ".join(f"r {c} (5 / {args.iters})" for c in columns)
             + " |", "|---|---|---|---|" + "---|" * len(columns)]
    for name, (half, slices, dose, _, _) in CASES.items():
        if half not in args.half or name not in args.cases:
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
