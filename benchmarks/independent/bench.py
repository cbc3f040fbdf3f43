"""Issue 11 benchmark: five engines on data none of them made (independent NumPy multislice, abTEM).

    python benchmarks/independent/bench.py [--cases thin thick noisy coherent] [--set base|dev|val|all] [--quick]
        [--tools phasestem ptyrad py4dstem quantem ptychi] [--workdir runs/independent]
        [--envs .bench_envs] [--reuse] [--resimulate] [--device cuda --python python3]

Cases (``cases.py``; ``abtem`` from ``cases_abtem.py``): 32 × 32 raster at 1 Å, 128² patterns of
0.2 Å pixels, 300 keV, 20 mrad, focus 100 Å before the entrance surface. Every tool: batch 32, 2
threads, one tool at a time, nominal probe, exact positions not refined (runners in
``benchmarks/recon_peers/run_{phasestem,ptyrad,py4dstem}.py`` and here ``run_{quantem,ptychi}.py``).
Each runner saves the phase after every iteration (``phase_history``) and its per-iteration wall
times, so this script scores every iteration: Pearson r and NRMSE of the summed phase against the
truth over the scanned field of view (origin alignment of ``recon_peers/bench.py``: ``metrics``),
at the report iterations of each case, the peak r and whether r fell by more than 0.001 after it,
and the time each tool needs to reach the best peer's final r: its set-up (the runner's ``setup_s``: from the
case in memory, imports done, to its first iteration's clock) plus the cumulative wall time of its iterations;
"not reached" otherwise. The iterations alone are kept too (``time_to_target_iters``): before 2026-11-26's third
session the set-up was not counted, for any tool. The load average at each tool's start is recorded: the
machine may be shared, so compare times within one run.

``--set`` picks a group of cases: ``base`` (the five above, the default), or the hard cases of issue
29 (``cases_hard.py``): ``dev`` (the development half, where defaults may be tuned), ``val`` (the
validation half, only reported) or ``all`` (both halves).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS = HERE.parent / "recon_peers"
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(PEERS))

from cases import CASES, GEOM, QUICK, make_case  # noqa: E402
from cases_hard import HARD, hard_names, make_hard_case  # noqa: E402

TOOLS = ("phasestem", "ptyrad", "py4dstem", "quantem", "ptychi")
RUNNERS = {"phasestem": PEERS / "run_phasestem.py", "ptyrad": PEERS / "run_ptyrad.py",
           "py4dstem": PEERS / "run_py4dstem.py", "quantem": HERE / "run_quantem.py",
           "ptychi": HERE / "run_ptychi.py"}
# a peer run with options of its own beyond its standard template: (the tool whose runner and venv it uses,
# the runner's options); run only when named in --tools, and a peer like the others for the target r
VARIANTS = {"ptyrad_positive": ("ptyrad", ["--positivity"])}  # PtyRAD with objp_postiv + obja_thresh [0, 1]
# iterations at which r and NRMSE are reported; each tool runs max(...) iterations
REPORT_ITERS = {"thin": (20,), "thick": (5, 20), "noisy": (20,), "coherent": (20,), "abtem": (10, 20)}
QUICK_ITERS = {"thin": (3, 5), "thick": (2, 4), "noisy": (4,), "coherent": (4,), "abtem": (3, 5)}
REPORT_ITERS.update({name: (5, 20) for name in HARD})  # issue 29: r at 5 and at 20 iterations
QUICK_ITERS.update({name: (2, 4) for name in HARD})
DROP_TOL = 1e-3  # a fall of r after its peak larger than this is flagged
# OpenMP threads that sleep instead of spinning while they wait: on a shared (over-subscribed) machine
# spinning threads of the torch tools burn the CPU the other thread needs (measured here at load 6:
# PtyRAD 0.05-0.17 s/iteration with PASSIVE vs 0.5-1.4 s with the default spinning, same result).
# The same for every tool; --omp-wait-policy changes it.
OMP_WAIT_POLICY = "PASSIVE"


def base_cases() -> list[str]:
    """The five cases of issue 11."""
    names = list(CASES)
    if (HERE / "cases_abtem.py").exists():
        names.append("abtem")
    return names


def all_cases() -> list[str]:
    return base_cases() + list(HARD)


def set_cases(name: str) -> list[str]:
    """Case names of a ``--set``: base (issue 11's five), dev, val or all (both hard halves)."""
    return base_cases() if name == "base" else hard_names(name)


def build_case(name: str, quick: bool, path: Path, iters: int) -> None:
    """Write case_NAME.npz (NumPy multislice of cases.py, or abTEM) with ``iters`` iterations."""
    if name == "abtem":
        from cases_abtem import make_abtem_case

        case = make_abtem_case(quick=quick)
    elif name in HARD:
        case = make_hard_case(name, quick)
    else:
        case = make_case(name, QUICK if quick else GEOM)
    case["iters"] = iters
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **case)
    os.replace(tmp, path)


# tools whose runner takes --device (the others run on the CPU only)
DEVICE_TOOLS = ("phasestem", "ptyrad", "ptychi")


def interpreter(tool: str, envs: Path, one_python: str | None = None) -> str:
    """The tool's venv python (``envs/TOOL/bin/python``), phasestem's own, or ``one_python`` for every tool."""
    if one_python:
        return one_python
    return sys.executable if tool == "phasestem" else str(envs / tool / "bin" / "python")


def run_tool(tool: str, case_path: Path, result_path: Path, envs: Path, threads: int, timeout: int,
             extra: list[str] | None = None, device: str = "cpu", one_python: str | None = None) -> str | None:
    if tool in VARIANTS:  # the base tool's venv and runner, with the variant's options
        tool, options = VARIANTS[tool]
        extra = [*options, *(extra or [])]
    py = interpreter(tool, envs, one_python)
    if not (Path(py).exists() or shutil.which(py)):
        return f"no interpreter {py} (run benchmarks/independent/setup_envs.sh)"
    if device != "cpu":
        if tool not in DEVICE_TOOLS:
            return f"its runner has no --device (only {', '.join(DEVICE_TOOLS)} run on {device})"
        extra = [*(extra or []), "--device", device]
    path = [str(PEERS), str(HERE)]
    if one_python and os.environ.get("PYTHONPATH"):  # one environment: keep its own path (e.g. unpacked wheels)
        path.append(os.environ["PYTHONPATH"])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(path), OMP_WAIT_POLICY=OMP_WAIT_POLICY)
    cmd = [py, str(RUNNERS[tool]), str(case_path), str(result_path), "--threads", str(threads), *(extra or [])]
    from common import run_logged

    return run_logged(cmd, env, result_path.with_suffix(".log"), timeout)


def peer_metrics():
    """``metrics`` of recon_peers/bench.py (origin alignment, E_φ = NRMSE after the best constant, r)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("recon_peers_bench", PEERS / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.metrics


def case_fov(case) -> tuple[int, int]:
    """The scanned field of view (phase pixels) of a case (its patterns, ``scan_step`` and ``sampling``)."""
    sy, sx = case["patterns"].shape[:2]
    step_px = float(case["scan_step"]) / float(case["sampling"])
    return int(round((sy - 1) * step_px)) + 1, int(round((sx - 1) * step_px)) + 1


def score(result: dict, truth: np.ndarray, fov: tuple[int, int]) -> dict:
    """r and NRMSE per iteration (from phase_history, else the final phase only) and the wall-time axis."""
    metrics = peer_metrics()
    times = np.asarray(result["iter_times"], dtype=float)
    hist = result.get("phase_history")
    if hist is not None and len(hist) == len(times):
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant phase gives r = nan
            per = [metrics(dict(phase=h, origin_px=result["origin_px"]), truth, fov) for h in hist]
        iters = list(range(1, len(hist) + 1))
    else:  # no history: only the final iteration
        per = [metrics(result, truth, fov)]
        iters = [len(times)]
    nrmse = [p[0] for p in per]
    r = [p[1] for p in per]
    return dict(iters=iters, r=r, nrmse=nrmse, cum_time=np.cumsum(times).tolist(), history=hist is not None)


def summarise(sc: dict, report: tuple[int, ...]) -> dict:
    r = np.nan_to_num(np.asarray(sc["r"], dtype=float), nan=-1.0)  # nan: a constant phase (no update yet)
    k = int(np.argmax(r))
    drop = float(r[k] - r[k:].min())
    out = dict(peak_r=float(r[k]), peak_iter=sc["iters"][k], final_r=float(r[-1]), drop_after_peak=drop,
               fell=bool(drop > DROP_TOL))
    last = sc["iters"][-1]
    if sc["history"] and last < max(report):  # the tool stopped itself (e.g. phasestem's run.holdout): its result
        out["stopped_at"] = last             # stands for the later iterations
    for n in report:
        if n in sc["iters"] or (n > last and "stopped_at" in out):
            i = sc["iters"].index(n) if n in sc["iters"] else len(sc["iters"]) - 1
            out[f"r@{n}"] = float(r[i])
            out[f"nrmse@{n}"] = float(sc["nrmse"][i])
    return out


def time_to(sc: dict, target: float, setup: bool = True) -> float | None:
    """Wall time (s) to the end of the first iteration whose r ≥ target (None: never): the tool's set-up
    (``setup_s``; 0 where its runner did not record it) and its iterations, or with ``setup=False`` the iterations
    alone."""
    if not sc["history"]:
        return None
    for it, rr in zip(sc["iters"], sc["r"], strict=True):
        if rr == rr and rr >= target:  # rr == rr: not nan
            return float(sc["cum_time"][it - 1]) + (float(sc.get("setup_s") or 0.0) if setup else 0.0)
    return None


def fmt(v, spec: str = ".4f") -> str:
    return "–" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=None, help="default: those of --set")
    ap.add_argument("--set", default="base", choices=["base", "dev", "val", "all"],
                    help="base: issue 11's five cases (default); dev / val: one half of the hard cases of "
                         "issue 29 (cases_hard.py); all: both halves")
    ap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=[*TOOLS, *VARIANTS],
                    help="default: the five tools with their standard settings; ptyrad_positive: PtyRAD with its "
                         "positivity constraints (run_ptyrad.py --positivity)")
    ap.add_argument("--workdir", default="runs/independent")
    ap.add_argument("--envs", default=".bench_envs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--quick", action="store_true", help="tiny 10×10 scan of 64² patterns, few iterations")
    ap.add_argument("--resimulate", action="store_true", help="rebuild the case files")
    ap.add_argument("--reuse", action="store_true", help="reuse existing result files instead of rerunning")
    ap.add_argument("--device", default="cpu", help=f"torch device of {', '.join(DEVICE_TOOLS)} (e.g. cuda)")
    ap.add_argument("--python", default=None,
                    help="one interpreter for every tool (all installed in one environment, e.g. on a GPU machine) "
                         "instead of the venvs under --envs")
    ap.add_argument("--phasestem-args", default="",
                    help="options for phasestem's runner (run_phasestem.py), one string, e.g. '--probe-aperture off'; "
                         "its result replaces phasestem's stored one, and the run's record keeps the string "
                         "(runner_args)")
    ap.add_argument("--omp-wait-policy", default=OMP_WAIT_POLICY, choices=["PASSIVE", "ACTIVE"],
                    help="OMP_WAIT_POLICY given to every tool (default PASSIVE: fair on a shared machine)")
    args = ap.parse_args()
    globals()["OMP_WAIT_POLICY"] = args.omp_wait_policy
    cases = args.cases or set_cases(args.set)
    for c in cases:
        if c not in REPORT_ITERS:
            ap.error(f"unknown case {c!r}; choose from {all_cases()}")
    from common import load_case

    work = Path(args.workdir) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    out_path = work / "results.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    envs = Path(args.envs)
    for name in cases:
        report = (QUICK_ITERS if args.quick else REPORT_ITERS)[name]
        n_iter = max(report)
        case_path = work / f"case_{name}.npz"
        if args.resimulate or not case_path.exists():
            t0 = time.perf_counter()
            build_case(name, args.quick, case_path, n_iter)
            print(f"[{name}] case built in {time.perf_counter() - t0:.1f} s -> {case_path}", flush=True)
        case = load_case(str(case_path))
        if case["iters"] != n_iter:  # e.g. a case file written by cases.py / cases_abtem.py directly
            with np.load(case_path) as z:
                data = {k: z[k] for k in z.files}
            data["iters"] = np.asarray(n_iter)
            tmp = case_path.with_name(case_path.name + ".tmp.npz")
            np.savez(tmp, **data)
            os.replace(tmp, case_path)
            case["iters"] = n_iter
        fov = case_fov(case)
        entry = results.setdefault(name, {"tools": {}})
        entry.update(report_iters=list(report), n_iter=n_iter, fov_px=list(fov),
                     loss=str(case.get("loss", "gaussian")), dose=float(case.get("dose", 0.0)),
                     half=str(case.get("half", "base")), kind=str(case.get("kind", name)))
        for tool in args.tools:
            rp = work / f"result_{name}_{tool}.npz"
            side = rp.with_suffix(".run.json")  # load average, wall time and date of the run that made rp
            rec = json.loads(side.read_text()) if side.exists() else entry["tools"].get(tool, {})
            if not (args.reuse and rp.exists()):
                load = os.getloadavg()
                print(f"[{name}] {tool}: start, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
                t0 = time.perf_counter()
                err = run_tool(tool, case_path, rp, envs, args.threads, args.timeout, device=args.device,
                               one_python=args.python,
                               extra=shlex.split(args.phasestem_args) if tool == "phasestem" else None)
                wall = time.perf_counter() - t0
                print(f"[{name}] {tool}: {'ok' if err is None else err} ({wall:.0f} s wall)", flush=True)
                rec = dict(load_at_start=list(load), wall_s=wall, when=time.strftime("%Y-%m-%d %H:%M:%S"),
                           threads=args.threads, omp_wait_policy=OMP_WAIT_POLICY, device=args.device,
                           **({"runner_args": args.phasestem_args} if tool == "phasestem" and args.phasestem_args
                              else {}))
                if err is not None:
                    rec["error"] = err
                    rp.unlink(missing_ok=True)
                side.write_text(json.dumps(rec))
            if rp.exists():
                with np.load(rp) as z:
                    res = {k: z[k] for k in z.files}
                sc = score(res, case["truth_phase"], fov)
                times = np.asarray(res["iter_times"], dtype=float)
                rec.pop("error", None)
                st = json.loads(str(res["settings"]))
                cpu = st.get("iter_cpu") or []
                cpu_it = float(np.mean(cpu[1:] if len(cpu) > 2 else cpu)) if cpu else st.get("cpu_s_per_iter")
                rec.update(sc, **summarise(sc, report), s_per_it=float(np.mean(times[1:] if len(times) > 2 else times)),
                           cpu_per_it=cpu_it, setup_s=st.get("setup_s"), settings=st)
            elif "error" not in rec:
                rec["error"] = "no result"
            entry["tools"][tool] = rec
        # time to reach the best peer's final r (peers = every tool but phasestem)
        peers = {t: v for t, v in entry["tools"].items() if t != "phasestem" and "final_r" in v}
        if peers:
            best_tool = max(peers, key=lambda t: peers[t]["final_r"])
            target = peers[best_tool]["final_r"]
            entry.update(target_r=target, target_tool=best_tool)
            for v in entry["tools"].values():
                if "r" in v:
                    v["time_to_target"] = time_to(v, target)
                    v["time_to_target_iters"] = time_to(v, target, setup=False)
        out_path.write_text(json.dumps(results, indent=1, default=str))
    print_table(results, cases)
    if len(cases) > 1:
        print_summary(results, cases)
    print(f"\nresults: {out_path}")


def print_table(results: dict, cases: list[str]) -> None:
    for name in cases:
        entry = results.get(name)
        if not entry:
            continue
        report = entry["report_iters"]
        tgt = entry.get("target_r")
        print(f"\n### {name} (loss {entry['loss']}, dose {entry['dose']:g}; target = best peer's final r "
              f"{fmt(tgt)} from {entry.get('target_tool', '–')})\n")
        head = " | ".join(f"r @ {n} | NRMSE @ {n}" for n in report)
        print(f"| tool | {head} | peak r (iter) | fell > {DROP_TOL:g} after peak | s / iteration | "
              f"CPU s / iteration | set-up (s) | time to target (s): set-up + iterations (iterations) | "
              f"load at start |")
        print("|---|" + "---|" * (2 * len(report) + 7))
        for tool, v in entry["tools"].items():
            load = v.get("load_at_start")
            load_s = f"{load[0]:.1f}" if load else "–"
            if "r" not in v:
                print(f"| {tool} | " + " | ".join(["–"] * (2 * len(report) + 5)) +
                      f" | – ({v.get('error', 'no result')[:70]}) | {load_s} |")
                continue
            cells = " | ".join(f"{fmt(v.get(f'r@{n}'))} | {fmt(v.get(f'nrmse@{n}'), '.3f')}" for n in report)
            fell = ("yes" if v["fell"] else "no") + f" ({v['drop_after_peak']:.4f})"
            if not v["history"]:
                fell += ", final only"
            ttt = v.get("time_to_target")
            ttt_s = ("not reached" if ttt is None and v["history"] else
                     f"{fmt(ttt, '.1f')} ({fmt(v.get('time_to_target_iters'), '.1f')})" if ttt is not None else "–")
            print(f"| {tool} | {cells} | {v['peak_r']:.4f} ({v['peak_iter']}) | {fell} | {v['s_per_it']:.2f} | "
                  f"{fmt(v.get('cpu_per_it'), '.2f')} | {fmt(v.get('setup_s'), '.2f')} | {ttt_s} | {load_s} |")


def print_summary(results: dict, cases: list[str]) -> None:
    """One table for many cases: a row per case and tool, r at the first and the last report iteration."""
    print("\n| case | half | tool | iters | r @ first | r @ last | peak r (iter) | fall after peak | s / iteration "
          "| load at start |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in cases:
        entry = results.get(name)
        if not entry:
            continue
        first, last = entry["report_iters"][0], entry["report_iters"][-1]
        for tool, v in entry["tools"].items():
            load = v.get("load_at_start")
            row = f"| {name} | {entry.get('half', '–')} | {tool} | {first}, {last} | "
            if "r" not in v:
                row += f"– | – | – | – | {v.get('error', 'no result')[:60]} | "
            else:
                row += (f"{fmt(v.get(f'r@{first}'))} | {fmt(v.get(f'r@{last}'))} | "
                        f"{v['peak_r']:.4f} ({v['peak_iter']}) | {v['drop_after_peak']:.4f} | {v['s_per_it']:.2f} | ")
            print(row + (f"{load[0]:.1f} |" if load else "– |"))


if __name__ == "__main__":
    main()
