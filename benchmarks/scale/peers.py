"""The peers at acquisition size (issue 52): phasestem, PtyRAD and pty-chi on the 128 × 128 scans of ``scale.py``, one
tool at a time, 2 threads each, the patterns in memory (every runner loads the case file whole), scored after every
iteration as ``benchmarks/independent/bench.py`` scores them. A tool still running at ``--budget-min`` minutes is
stopped; where its runner saves after every iteration (pty-chi's does), the iterations it finished are scored and the
row says where it stopped.

    python benchmarks/scale/peers.py [--out runs/scale] [--cases thin_128 thick_128 coherent_128]
        [--tools phasestem ptyrad ptychi]
        [--iters 10] [--budget-min 240] [--python PY] [--args TOOL='...']

Each case is ``scale.py``'s simulation (run it first; ``simulate_windowed``) written once as a benchmark case file
(``OUT/case_NAME.npz``, the layout of ``benchmarks/recon_peers/common.py``: 1 GiB of patterns). Each tool runs in its
own process through ``bench.run_tool`` (the runners of ``benchmarks/recon_peers`` and ``benchmarks/independent``,
their standard settings unless ``--args`` adds some), inside a wrapper process that records its peak resident memory
(``RUSAGE_CHILDREN``). Reported per tool: seconds per iteration (median), its set-up, peak RSS, r at each
iteration, and the wall time to the best peer's final r (set-up + iterations). Writes ``OUT/peers.json`` and
``OUT/peers.md`` (merged across invocations); the load average at each tool's start is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "independent"))
sys.path.insert(1, str(HERE.parent / "recon_peers"))

from scale import GEOM, SPECIMENS  # noqa: E402

SCALE_CASES = {"thin_128": ("thin", 128), "thick_128": ("thick", 128), "coherent_128": ("coherent", 128)}


def write_case(out: Path, name: str, iters: int) -> Path:
    """``OUT/case_NAME.npz`` from ``scale.py``'s ``OUT/SPECIMEN_SIDE/`` (patterns.npy, truth.npy)."""
    specimen, side = SCALE_CASES[name]
    path = out / f"case_{name}.npz"
    folder = out / f"{specimen}_{side}"
    if not (folder / "patterns.npy").exists():
        raise SystemExit(f"{folder}/patterns.npy: not simulated yet; run benchmarks/scale/scale.py --cases "
                         f"{specimen}_{side}_streamed first")
    if not path.exists():
        spec, g = SPECIMENS[specimen], GEOM
        pats = np.load(folder / "patterns.npy", mmap_mode="r")
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, patterns=np.asarray(pats), truth_phase=np.load(folder / "truth.npy"), energy=g["energy"],
                 semiangle=g["semiangle"], c10=g["defocus"], sampling=g["sampling"], scan_step=g["step"],
                 n_slices=spec["n_slices"], dz=spec["dz"], n_modes=spec["n_modes"], iters=iters, batch=32, dose=0.0,
                 loss="gaussian", source_size=spec["source"])
        os.replace(tmp, path)
    with np.load(path) as z:
        if int(z["iters"]) != iters:
            data = {k: z[k] for k in z.files}
            data["iters"] = np.asarray(iters)
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, **data)
            os.replace(tmp, path)
    return path


def _child(tool: str, case: str, result: str, threads: int, python: str | None, extra: str, budget_s: int) -> None:
    """``peers.py _child …``: one tool through bench.run_tool; prints its error (or nothing) and peak RSS (GiB)."""
    from bench import run_tool

    err = run_tool(tool, Path(case), Path(result), Path(".bench_envs"), threads, budget_s,
                   shlex.split(extra) or None, one_python=python)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(json.dumps({"error": err, "peak_rss_gib": rss}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] or None, sys.argv[7],
               int(sys.argv[8]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/scale"))
    ap.add_argument("--cases", nargs="+", default=["thin_128"], choices=list(SCALE_CASES))
    ap.add_argument("--tools", nargs="+", default=["phasestem", "ptyrad", "ptychi"])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-min", type=float, default=240.0, help="wall-time budget per tool (minutes)")
    ap.add_argument("--python", default=None, help="one interpreter for every tool (else .bench_envs/TOOL)")
    ap.add_argument("--args", action="append", default=[], metavar="TOOL='...'",
                    help="options for one tool's runner, e.g. ptyrad='--obj-lr 2e-3'; repeatable")
    args = ap.parse_args()
    from bench import score, summarise, time_to

    extra = dict(a.split("=", 1) for a in args.args)
    path = args.out / "peers.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.cases:
        case_path = write_case(args.out, name, args.iters)
        with np.load(case_path) as z:
            truth, fov = z["truth_phase"], z["truth_phase"].shape
        entry = results.setdefault(name, {"tools": {}})
        for tool in args.tools:
            rp = args.out / f"peers_{name}_{tool}.npz"
            rp.unlink(missing_ok=True)  # a stale result must not stand for this run
            load = os.getloadavg()
            print(f"[{name}] {tool}: start, load average {load[0]:.2f}", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "_child", tool, str(case_path), str(rp),
                                   str(args.threads), args.python or "", extra.get(tool, ""),
                                   str(int(args.budget_min * 60))],
                                  capture_output=True, text=True)
            lines = proc.stdout.strip().splitlines()
            rec = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"error": proc.stderr[-500:]}
            rec.update(load_at_start=list(load), wall_s=time.perf_counter() - t0, args=extra.get(tool, ""),
                       when=time.strftime("%Y-%m-%d %H:%M:%S"))
            if rp.exists():  # finished, or stopped with the iterations it saved
                with np.load(rp) as z:
                    res = {k: z[k] for k in z.files}
                sc = score(res, truth, fov)
                st = json.loads(str(res["settings"]))
                times = np.asarray(res["iter_times"], dtype=float)
                if rec.get("error") is not None:
                    rec["stopped"] = f"stopped after {len(times)} of {args.iters} iterations: {rec.pop('error')}"
                rec.update(sc, **summarise(sc, (min(args.iters, len(times)),)), setup_s=st.get("setup_s"),
                           s_per_it=float(np.median(times[1:] if len(times) > 2 else times)), settings=st)
            entry["tools"][tool] = rec
            print(f"[{name}] {tool}: {rec.get('error') or rec.get('stopped') or 'ok'}, final r {rec.get('final_r')}, "
                  f"{rec.get('s_per_it')} s / iteration, peak RSS {rec.get('peak_rss_gib')}", flush=True)
            path.write_text(json.dumps(results, indent=1, default=str))
        peers = {t: v for t, v in entry["tools"].items() if t != "phasestem" and "final_r" in v}
        if peers:
            best = max(peers, key=lambda t: peers[t]["final_r"])
            entry.update(target_r=peers[best]["final_r"], target_tool=best)
            for v in entry["tools"].values():
                if "r" in v:
                    v["time_to_target"] = time_to(v, entry["target_r"])
        path.write_text(json.dumps(results, indent=1, default=str))
    lines = ["| case | tool | s / iteration | set-up (s) | peak RSS (GiB) | r after each iteration | time to the best "
             "peer's final r (s) | load |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in results.items():
        tgt = entry.get("target_r")
        for tool, v in entry["tools"].items():
            if "r" not in v:
                lines.append(f"| {name} | {tool} | {v.get('error')} | | | | | |")
                continue
            ttt = v.get("time_to_target")
            reached = "not reached" if ttt is None else f"{ttt:.0f}"
            target = f" (target {tgt:.4f}, {entry.get('target_tool')})" if tgt else ""
            r_all = ", ".join(f"{x:.4f}" for x in v["r"])
            stopped = f" (stopped after {len(v['r'])} iterations at the budget)" if v.get("stopped") else ""
            lines.append(f"| {name} | {tool} | {v['s_per_it']:.1f}{stopped} | {v.get('setup_s') or 0:.1f} | "
                         f"{v.get('peak_rss_gib', float('nan')):.2f} | {r_all} | {reached}{target} | "
                         f"{v['load_at_start'][0]:.1f} |")
    (args.out / "peers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
