"""Issue 3 benchmark: phasestem vs PtyRAD vs py4DSTEM on the same simulated datasets, same run.

    python benchmarks/recon_peers/bench.py [--cases a b c] [--tools phasestem ptyrad py4dstem]
                                           [--workdir runs/recon_peers] [--envs .bench_envs] [--quick]

Datasets (simulated with phasestem's physics core, ``phasestem.physics.operator.ForwardModel``): 32 × 32
raster, 1 Å step, 128² patterns, 0.2 Å pixels, 300 keV, 20 mrad, C10 = +100 Å (crossover 100 Å
before the entrance surface; abTEM/py4DSTEM ``defocus = −100``), noise-free:

  a: 1 slice, 1 probe mode, 20 iterations
  b: 8 slices × 10 Å, strong phase, 1 mode, 5 iterations
  c: as b, partially coherent probe (source 0.5 Å FWHM, 8 true modes), 4 probe modes, 5 iterations

Every tool: batch 32, 2 CPU threads, started from the nominal probe (made from the nominal optics,
never the true probe), positions exact and not refined. The peers run as subprocesses in their own
venvs (``setup_envs.sh``) on the same ``case_X.npz``; each writes its phase and per-iteration times.

Table: s / iteration (mean over iterations 2…n where per-iteration times exist), ratio to PtyRAD,
phase error E_φ = ‖φ − φ_true − c‖ / ‖φ_true − mean‖ (c: best constant) and Pearson r over the
scanned field of view, and time ÷ FFT bound, where the FFT bound is the time of the FFTs alone for
the same work (per pattern and probe mode: forward 2(S−1)+1 FFTs through S slices, as many again
backward), measured in the same run on batches of 32 with 2 threads.
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
CASES = {
    "a": dict(n_slices=1, dz=10.0, n_modes=1, iters=20, max_phase=0.5, source_size=None),
    "b": dict(n_slices=8, dz=10.0, n_modes=1, iters=5, max_phase=0.5, source_size=None),
    "c": dict(n_slices=8, dz=10.0, n_modes=4, iters=5, max_phase=0.5, source_size=0.5),
}
GEOM = dict(scan=(32, 32), step=1.0, window=128, sampling=0.2, energy=300e3, semiangle=20.0, c10=100.0, batch=32)
QUICK = dict(scan=(8, 8), step=1.0, window=64, sampling=0.2, energy=300e3, semiangle=20.0, c10=100.0, batch=16)


def simulate_case(name: str, geom: dict, path: Path, seed: int = 0) -> None:
    """Write case_X.npz: patterns, truth phase in the dataset frame and the settings."""
    import torch

    from phasestem.physics import optics
    from phasestem.physics.operator import ForwardModel, transmission_function
    from phasestem.physics.specimen import synthetic_phase

    spec = CASES[name]
    rng = np.random.default_rng(seed)
    n = geom["window"]
    samp = (geom["sampling"],) * 2
    margin = 8
    sy, sx = geom["scan"]
    span = (int(round((sy - 1) * geom["step"] / samp[0])), int(round((sx - 1) * geom["step"] / samp[1])))
    shape = (span[0] + n + 2 * margin, span[1] + n + 2 * margin)
    S = spec["n_slices"]
    phases = np.stack([synthetic_phase(shape, rng, "atoms", spec["max_phase"], width=2.0) for _ in range(S)])
    obj = transmission_function(torch.as_tensor(phases))[None]
    probe = optics.make_probe((n, n), samp, geom["energy"], geom["semiangle"], {"C10": geom["c10"]})
    if spec["source_size"]:
        probe, occ = optics.partial_coherence_modes(probe, samp, spec["source_size"], 8)
    iy, ix = np.meshgrid(np.arange(sy), np.arange(sx), indexing="ij")
    pos = np.stack([iy.ravel(), ix.ravel()], -1) * geom["step"]
    origin_px = np.array([n // 2 + margin, n // 2 + margin])
    pos_obj = torch.as_tensor(pos + origin_px * geom["sampling"], dtype=torch.float32)
    fm = ForwardModel((n, n), samp, geom["energy"])
    out = []
    with torch.no_grad():
        for b in range(0, len(pos_obj), 64):
            out.append(fm(obj, probe, pos_obj[b : b + 64], spec["dz"], torch.zeros(2)).numpy())
    pats = np.concatenate(out).reshape(sy, sx, n, n).astype(np.float32)
    truth = phases.sum(0)[origin_px[0] :, origin_px[1] :]
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, patterns=pats, truth_phase=truth.astype(np.float32), energy=geom["energy"],
             semiangle=geom["semiangle"], c10=geom["c10"], sampling=geom["sampling"], scan_step=geom["step"],
             n_slices=S, dz=spec["dz"], n_modes=spec["n_modes"], iters=spec["iters"], batch=geom["batch"])
    os.replace(tmp, path)


def fft_bound(case: dict, threads: int = 2, trials: int = 15) -> tuple[float, float, float]:
    """Seconds per iteration of the FFTs alone: N · M · 2 · (2(S−1)+1) FFTs of the pattern size.

    One FFT is timed on batches of ``batch × M`` complex64 patterns (2 threads); the best of
    ``trials`` timings is kept (a bound: the least time the FFTs can take on this machine).
    Returns (wall s / iteration, wall s per FFT, CPU s / iteration).
    """
    import torch

    torch.set_num_threads(threads)
    n = case["patterns"].shape[-1]
    M, S, B = case["n_modes"], case["n_slices"], case["batch"]
    x = torch.randn(B, M, n, n, dtype=torch.complex64)
    for _ in range(5):
        torch.fft.fft2(x)
    best = best_cpu = float("inf")
    for _ in range(trials):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(3):
            torch.fft.fft2(x)
        best = min(best, (time.perf_counter() - t0) / 3)
        best_cpu = min(best_cpu, (time.process_time() - c0) / 3)
    per_fft = best / (B * M)
    n_fft = case["patterns"].shape[0] * case["patterns"].shape[1] * M * 2 * (2 * (S - 1) + 1)
    return per_fft * n_fft, per_fft, best_cpu / (B * M) * n_fft


def metrics(result: dict, truth: np.ndarray, fov: tuple[int, int]) -> tuple[float, float]:
    """(E_φ, Pearson r) over the scanned field of view after mapping to the dataset frame."""
    from scipy.ndimage import shift as nd_shift

    phase = result["phase"]
    oy, ox = result["origin_px"]
    iy, ix = int(np.floor(oy)), int(np.floor(ox))
    fy, fx = oy - iy, ox - ix
    h, w = fov
    crop = phase[iy : iy + h + 2, ix : ix + w + 2]
    if fy or fx:
        crop = nd_shift(crop, (-fy, -fx), order=3, mode="nearest")
    rec = crop[:h, :w].astype(np.float64)
    gt = truth[:h, :w].astype(np.float64)
    d = rec - gt
    e = np.sqrt(((d - d.mean()) ** 2).sum() / ((gt - gt.mean()) ** 2).sum())
    a, b = rec - rec.mean(), gt - gt.mean()
    r = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    return float(e), r


def run_tool(tool: str, case_path: Path, result_path: Path, envs: Path, threads: int, timeout: int) -> str | None:
    py = {"phasestem": sys.executable, "ptyrad": str(envs / "ptyrad/bin/python"),
          "py4dstem": str(envs / "py4dstem/bin/python")}[tool]
    if not Path(py).exists():
        return f"no interpreter {py} (run setup_envs.sh)"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MPLBACKEND="Agg",
               PYTHONPATH=str(HERE))
    cmd = [py, str(HERE / f"run_{tool}.py"), str(case_path), str(result_path), "--threads", str(threads)]
    from common import run_logged

    return run_logged(cmd, env, result_path.with_suffix(".log"), timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--tools", nargs="+", default=["phasestem", "ptyrad", "py4dstem"])
    ap.add_argument("--workdir", default="runs/recon_peers")
    ap.add_argument("--envs", default=".bench_envs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--quick", action="store_true", help="tiny 8×8 scan of 64² patterns (smoke test)")
    ap.add_argument("--resimulate", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="reuse existing result files instead of rerunning")
    ap.add_argument("--iters", type=int, default=None,
                    help="override the iteration count of the selected cases (files get an _itN suffix)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from common import load_case

    geom = QUICK if args.quick else GEOM
    work = Path(args.workdir) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.cases:
        case_path = work / f"case_{name}.npz"
        if args.resimulate or not case_path.exists():
            t0 = time.perf_counter()
            simulate_case(name, geom, case_path)
            print(f"[case {name}] simulated in {time.perf_counter() - t0:.1f} s -> {case_path}", flush=True)
        if args.iters:
            with np.load(case_path) as z:
                data = {k: z[k] for k in z.files}
            data["iters"] = np.asarray(args.iters)
            case_path = work / f"case_{name}_it{args.iters}.npz"
            np.savez(case_path, **data)
        case = load_case(str(case_path))
        bound_file = work / f"fft_bound_{case_path.stem[5:]}.json"
        if args.reuse and bound_file.exists():  # the bound measured when the tools ran
            bound, per_fft, cpu_bound = json.loads(bound_file.read_text())
        else:
            bound, per_fft, cpu_bound = fft_bound(case, args.threads)
            bound_file.write_text(json.dumps([bound, per_fft, cpu_bound]))
        sy, sx = case["patterns"].shape[:2]
        fov = (int(round((sy - 1) * case["scan_step"] / case["sampling"])) + 1,
               int(round((sx - 1) * case["scan_step"] / case["sampling"])) + 1)
        print(f"[case {name}] FFT bound {bound:.3f} s/iteration ({per_fft * 1e6:.1f} µs per FFT), "
              f"{cpu_bound or float('nan'):.3f} CPU s; load average {os.getloadavg()[0]:.1f}", flush=True)
        res = {}
        for tool in args.tools:
            rp = work / f"result_{case_path.stem[5:]}_{tool}.npz"
            err = None
            if not (args.reuse and rp.exists()):
                t0 = time.perf_counter()
                err = run_tool(tool, case_path, rp, Path(args.envs), args.threads, args.timeout)
                print(f"[case {name}] {tool}: {'ok' if err is None else err} ({time.perf_counter() - t0:.0f} s wall)",
                      flush=True)
            if err is None and rp.exists():
                with np.load(rp) as z:
                    r = {k: z[k] for k in z.files}
                times = r["iter_times"]
                per_it = float(np.mean(times[1:] if len(times) > 2 else times))
                e, pr = metrics(r, case["truth_phase"], fov)
                st = json.loads(str(r["settings"]))
                cpu_list = st.get("iter_cpu") or []
                cpu_it = float(np.mean(cpu_list[1:])) if len(cpu_list) > 2 else st.get("cpu_s_per_iter")
                res[tool] = dict(s_per_it=per_it, cpu_per_it=cpu_it, e_phi=e, r=pr, settings=st)
            else:
                res[tool] = dict(error=err or "no result")
        ref = res.get("ptyrad", {}).get("s_per_it")
        cpu_ref = res.get("ptyrad", {}).get("cpu_per_it")
        for tool, v in res.items():
            rows.append(dict(case=name, tool=tool, bound=bound, cpu_bound=cpu_bound, ref=ref, cpu_ref=cpu_ref, **v))
    print()
    print("| case | tool | s / iteration | ÷ PtyRAD | ÷ FFT bound | CPU s / iteration | ÷ PtyRAD (CPU) | "
          "÷ FFT bound (CPU) | E_φ | Pearson r |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | {r['tool']} | – | – | – | – | – | – | – | – ({r['error'][:80]}) |")
            continue
        ratio = f"{r['s_per_it'] / r['ref']:.2f}" if r.get("ref") else "–"
        cpu = r.get("cpu_per_it")
        cratio = f"{cpu / r['cpu_ref']:.2f}" if cpu and r.get("cpu_ref") else "–"
        cpu_s = f"{cpu:.2f}" if cpu else "–"
        cb = f"{cpu / r['cpu_bound']:.1f}" if cpu and r.get("cpu_bound") else "–"
        print(f"| {r['case']} | {r['tool']} | {r['s_per_it']:.2f} | {ratio} | {r['s_per_it'] / r['bound']:.1f} | "
              f"{cpu_s} | {cratio} | {cb} | {r['e_phi']:.3f} | {r['r']:.4f} |")
    print()
    for name in args.cases:
        b = next(r["bound"] for r in rows if r["case"] == name)
        cb = next(r["cpu_bound"] for r in rows if r["case"] == name)
        cb_s = f"{cb:.3f}" if cb else "–"
        print(f"FFT bound, case {name}: {b:.3f} s/iteration wall, {cb_s} CPU s/iteration")
    out = work / "results.json"
    out.write_text(json.dumps(rows, indent=1, default=str))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
