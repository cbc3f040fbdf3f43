"""Issue 13 benchmark: ``phasestem calibrate`` and ``phasestem reconstruct --auto`` on a Merlin .mib file, against
py4DSTEM's preprocess → ptychography on the same file.

    python benchmarks/real_data/bench_calibrate_auto.py [--quick] [--tools phasestem py4dstem] [--iters 10]
                                                        [--workdir runs/real_data] [--envs .bench_envs] [--reuse]

The file (``make_mib.py``): the independent NumPy multislice (not phasestem's simulator), a 128 × 128 scan of
256² patterns (``--quick``: 32 × 32), 300 keV, 20 mrad, 0.45 Å step, C10 = +150 Å not told to anyone, then a
detector's corruption (transposed axes, scan rotated 17.4°, descan drift, 1e5 e⁻/pattern, hot and dead
pixels) written as .mib + .hdr. Each tool runs in a fresh process, one at a time, 2 threads
(``OMP_NUM_THREADS=2``, ``OMP_WAIT_POLICY=PASSIVE``): wall time, the process's own peak memory (VmHWM, read in
the process at its end: ``ru_maxrss`` would carry the parent's RSS across fork+exec) and the 1-min load
average at its start. Told to every tool: energy, semi-angle, scan step (and the file).

Scores: the calibrated numbers against the truth; the phase Pearson r against the true phase over the scanned
area. Each tool's phase is mapped onto the truth through its own probe positions: the affine map from scan
indices to the tool's object pixels (fitted to its positions) composed with the true one, so a wrong rotation
or a θ + 180° choice shows as a low or negative r. r is given at that mapping, at the extra shift within
± 1 Å that maximises |r| (a global object shift is a ptychographic ambiguity), and with a best-fit plane
removed from each image (a phase ramp is the probe-tilt ambiguity).

Results: ``WORKDIR/{quick,full}/results.json`` and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_mib import make  # noqa: E402

#: runs the phasestem CLI and records this process's peak memory (VmHWM) in a JSON file
WRAPPER = """
import json, sys, time
from phasestem.cli import main
t0 = time.perf_counter()
rc = 1
try:
    rc = main(sys.argv[2:])
finally:
    hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) / 2**20
    with open(sys.argv[1], 'w') as f:
        json.dump({'rc': rc, 'vm_hwm_gib': hwm, 'in_process_s': time.perf_counter() - t0}, f)
sys.exit(rc)
"""


def child_env(threads: int) -> dict:
    env = dict(os.environ, MPLBACKEND="Agg", OMP_WAIT_POLICY="PASSIVE")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _rss_anon_gib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def run_child(cmd: list[str], log: Path, threads: int, timeout: int) -> dict:
    """Run one tool: wall time, the 1-min load average at its start, exit status and its largest anonymous
    resident memory sampled every 0.5 s (VmHWM also counts the file pages it maps: a memory-mapped output)."""
    load = os.getloadavg()
    t0 = time.perf_counter()
    anon = 0.0
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env(threads))
        while proc.poll() is None:
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                proc.wait()
                break
            anon = max(anon, _rss_anon_gib(proc.pid) or 0.0)
            time.sleep(0.5)
    rc = "timeout" if time.perf_counter() - t0 > timeout else proc.returncode
    return {"wall_s": time.perf_counter() - t0, "load_at_start": [round(v, 2) for v in load], "rc": rc,
            "rss_anon_peak_gib": anon, "log": str(log)}


def run_phasestem(args, mib: Path, work: Path, step: float) -> dict:
    common = ["--energy", "300e3", "--semiangle", "20", "--scan-step", str(step)]
    out: dict = {}
    for name, argv in (("calibrate", ["calibrate", str(mib), *common, "--out", str(work / "calib")]),
                       ("auto", ["reconstruct", str(mib), "--auto", *common, "--out", str(work / "auto")]
                        + (["--epochs", str(args.iters)] if args.iters else []))):
        mem = work / f"phasestem_{name}_memory.json"
        mem.unlink(missing_ok=True)
        print(f"[phasestem {name}] load {os.getloadavg()[0]:.2f} ...", flush=True)
        res = run_child([sys.executable, "-c", WRAPPER, str(mem), *argv], work / f"phasestem_{name}.log",
                        args.threads, args.timeout)
        if mem.exists():
            res.update(json.loads(mem.read_text()))
        res["command"] = "phasestem " + " ".join(argv)
        hwm = res.get("vm_hwm_gib", float("nan"))
        print(f"[phasestem {name}] rc {res['rc']}, {res['wall_s']:.0f} s, peak {hwm:.2f} GiB", flush=True)
        out[name] = res
    return out


def run_py4dstem(args, mib: Path, work: Path, step: float) -> dict:
    py = Path(args.envs) / "py4dstem/bin/python"
    if not py.exists():
        return {"rc": f"no interpreter {py}"}
    result = work / "py4dstem_result.npz"
    result.unlink(missing_ok=True)
    cmd = [str(py), str(HERE / "run_py4dstem_mib.py"), str(mib), str(result), "--energy", "300e3", "--semiangle",
           "20", "--scan-step", str(step), "--iters", str(args.iters or 10), "--batch", "32",
           "--threads", str(args.threads)]
    print(f"[py4DSTEM] load {os.getloadavg()[0]:.2f} ...", flush=True)
    res = run_child(cmd, work / "py4dstem.log", args.threads, args.timeout)
    if result.exists():
        with np.load(result) as z:
            res.update(json.loads(str(z["info"])))
    print(f"[py4DSTEM] rc {res['rc']}, {res['wall_s']:.0f} s, peak {res.get('vm_hwm_gib', float('nan')):.2f} GiB",
          flush=True)
    return res


# ---- scoring ------------------------------------------------------------------------------------
def _affine(g: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares p ≈ g @ A.T + b for (N, 2) arrays."""
    X = np.concatenate([g, np.ones((len(g), 1))], 1)
    coef, *_ = np.linalg.lstsq(X, p, rcond=None)
    return coef[:2].T, coef[2]


def phase_r(phase: np.ndarray, positions_px: np.ndarray, truth: dict, max_shift_a: float = 1.0) -> dict:
    """Pearson r of a tool's phase against the truth over the scanned area (see the module docstring).

    ``positions_px`` (N, 2): the tool's probe centres in its object pixels, row-major over the scan.
    """
    from scipy import ndimage

    sy, sx = truth["scan"]
    iy, ix = np.meshgrid(np.arange(sy), np.arange(sx), indexing="ij")
    g = np.stack([iy.ravel(), ix.ravel()], -1).astype(np.float64)
    A, b = _affine(g, positions_px)
    C, d = _affine(g, truth["positions"] / truth["sampling"])
    pix = float(math.sqrt(abs(np.linalg.det(C)) / abs(np.linalg.det(A))) * truth["sampling"])
    py, px = np.meshgrid(np.arange(phase.shape[0]), np.arange(phase.shape[1]), indexing="ij")
    p = np.stack([py.ravel(), px.ravel()], -1).astype(np.float64)
    gg = (p - b) @ np.linalg.inv(A).T
    inside = (gg[:, 0] >= 0) & (gg[:, 0] <= sy - 1) & (gg[:, 1] >= 0) & (gg[:, 1] <= sx - 1)
    gg, vals = gg[inside], phase.reshape(-1)[inside].astype(np.float64)
    vals = vals - vals.mean()
    tp = gg @ C.T + d  # truth pixels
    t_phase = truth["phase"].astype(np.float64)
    step_px = 1.0 / truth["sampling"]  # truth pixels per Å

    def r_at(shift_a: np.ndarray) -> float:
        q = tp + shift_a * step_px
        t = ndimage.map_coordinates(t_phase, q.T, order=3, mode="nearest")
        t = t - t.mean()
        return float((t * vals).sum() / math.sqrt((t * t).sum() * (vals * vals).sum()))

    def detrend(v: np.ndarray) -> np.ndarray:
        X = np.concatenate([gg, np.ones((len(gg), 1))], 1)
        return v - X @ np.linalg.lstsq(X, v, rcond=None)[0]

    t0 = ndimage.map_coordinates(t_phase, tp.T, order=3, mode="nearest")
    a, b = detrend(vals), detrend(t0)
    r_plane = float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))
    r0 = r_at(np.zeros(2))
    sign = 1.0 if r0 >= 0 else -1.0  # a θ + 180° choice keeps its negative r
    best, best_shift = r0, np.zeros(2)
    for span, n in ((max_shift_a, 11), (max_shift_a / 5, 9)):
        centre = best_shift.copy()
        for dy in np.linspace(-span, span, n):
            for dx in np.linspace(-span, span, n):
                s = centre + (dy, dx)
                if np.abs(s).max() > max_shift_a + 1e-9:
                    continue
                r = r_at(s)
                if sign * r > sign * best:
                    best, best_shift = r, s
    return {"r": r0, "r_best_shift": best, "r_plane_removed": r_plane, "best_shift_A": best_shift.round(3).tolist(),
            "pixels": int(inside.sum()),
            "tool_pixel_A": pix}


def score_phasestem(work: Path, truth: dict) -> dict:
    from phasestem.recon.params import load_params, scan_positions
    from phasestem.recon.results import load_results

    out: dict = {}
    cal = work / "calib" / "calibration.json"
    if cal.exists():
        c = json.loads(cal.read_text())
        bp = c["bad_pixels"]
        hot, dead = {tuple(v) for v in bp["hot"]}, {tuple(v) for v in bp["dead"]}
        t_hot, t_dead = {tuple(v) for v in truth["hot"]}, {tuple(v) for v in truth["dead"]}
        plane = np.asarray(c["disk"]["plane_px"])
        out["calibration"] = {
            "rotation_deg": c["rotation_deg"], "rotation_source": c["rotation_source"],
            "com_rotation_deg": c["centre_of_mass"]["rotation_deg"], "branch": c["centre_of_mass"]["branch"],
            "branch_score": c["centre_of_mass"]["branch_score"], "transpose": c["transpose"],
            "angular_sampling": c["angular_sampling_mrad"], "C10": c["aberrations"].get("C10"),
            "hot_found": len(hot), "hot_true_found": len(hot & t_hot), "dead_found": len(dead),
            "dead_true_found": len(dead & t_dead), "descan_plane": plane.tolist(), "notes": c["notes"]}
    res = work / "auto" / "results.h5"
    if res.exists():
        r = load_results(res)
        params = load_params(work / "auto" / "params.yaml")
        pos = scan_positions(params.scan, params.scan.shape)
        s = np.asarray(r["attrs"]["sampling"], dtype=np.float64)
        pos_px = (pos + np.asarray(r["attrs"]["origin"])) / s
        out["auto"] = phase_r(np.asarray(r["phase_sum"]), pos_px, truth)
        out["auto"].update(rotation_deg=params.scan.rotation, C10=params.optics.aberrations.get("C10"),
                           transpose=params.data.transpose)
        init = params.model.initial_phase
        if init is not None and Path(init.file).exists():  # the SSB start: dataset frame, pixel (0, 0) at 0 Å
            out["auto_start"] = phase_r(np.load(init.file), pos / np.asarray(init.sampling), truth)
        log = (work / "phasestem_auto.log").read_text(errors="replace")
        out["auto"]["epoch_s"] = [float(v) for v in _epoch_times(log)]
    return out


def _epoch_times(log: str) -> list[str]:
    import re

    return re.findall(r"epoch \d+ loss [^\n]*?\(([\d.]+) s\)", log)


def score_py4dstem(work: Path, truth: dict) -> dict:
    f = work / "py4dstem_result.npz"
    if not f.exists():
        return {}
    with np.load(f) as z:
        return phase_r(z["phase"], z["positions_px"], truth)


def expected_py4dstem_rotation(theta: float) -> float:
    """py4DSTEM's CoM rotation for this file (its reader does not flip the rows: it sees the truth's frame
    rotated by 90°, no transpose): −(θ + 90°), folded into (−90°, 90°] as its search does."""
    v = (-(theta + 90.0)) % 180.0
    return v - 180.0 if v > 90.0 else v


# ---- table --------------------------------------------------------------------------------------
def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def _per_iter(times) -> float:
    return float(np.mean(times[1:])) if times and len(times) > 1 else float("nan")


def table(rec: dict) -> str:
    t = rec["truth"]
    ps, p4 = rec.get("phasestem", {}), rec.get("py4dstem", {})
    sc = rec.get("scores", {})
    cal, auto = sc.get("phasestem", {}).get("calibration", {}), sc.get("phasestem", {}).get("auto", {})
    s4, f4 = sc.get("py4dstem", {}), p4.get("found", {})
    lines = [f"{t['scan'][0]} × {t['scan'][1]} scan of {t['window']}² patterns ({t['scan'][0] * t['scan'][1]} "
             f"patterns, .mib {rec['mib_gib']:.2f} GiB), {rec['date']}; 2 threads per tool, one tool at a time", "",
             "| tool / step | wall s | peak RSS GiB (VmHWM) | peak anonymous GiB | 1-min load at start | found | "
             "phase r (best shift ≤ 1 Å) | r, plane removed |", "|---|---|---|---|---|---|---|---|"]

    def row(name, res, found, r):
        rr = "–" if not r else f"{r['r']:.4f} ({r['r_best_shift']:.4f})"
        rp = "–" if not r else f"{r['r_plane_removed']:.4f}"
        ok = "" if res.get("rc") == 0 else f" (rc {res.get('rc')})"
        lines.append(f"| {name}{ok} | {res['wall_s']:.0f} | {_nan(res.get('vm_hwm_gib')):.2f} | "
                     f"{_nan(res.get('rss_anon_peak_gib')):.2f} | {res['load_at_start'][0]:.2f} | {found} | {rr} | "
                     f"{rp} |")

    if "calibrate" in ps:
        found = "–"
        if cal:
            found = (f"θ {cal['rotation_deg']:.2f}°, transpose {cal['transpose']}, dk {cal['angular_sampling']:.4f} "
                     f"mrad, C10 {_nan(cal['C10']):+.1f} Å, {cal['hot_true_found']}/{len(t['hot'])} hot + "
                     f"{cal['dead_true_found']}/{len(t['dead'])} dead ({cal['hot_found'] + cal['dead_found']} flagged)")
        row("phasestem calibrate", ps["calibrate"], found, None)
    if "auto" in ps:
        ep = auto.get("epoch_s") or []
        found = f"{len(ep)} epochs, {_per_iter(ep):.1f} s/epoch" if ep else "–"
        row("phasestem reconstruct --auto (calibrate + SSB + AD)", ps["auto"], found, auto)
        start = sc.get("phasestem", {}).get("auto_start")
        if start:
            lines.append(f"| — its SSB start (init_ssb.npy) | | | | | | {start['r']:.4f} "
                         f"({start['r_best_shift']:.4f}) | "
                         f"{start['r_plane_removed']:.4f} |")
    if p4:
        found = "–"
        if f4:
            found = (f"θ {_nan(f4.get('ptycho_rotation_deg')):.1f}°, transpose {f4.get('ptycho_transpose')}, "
                     f"dk {_nan(f4.get('angular_sampling')):.4f} mrad, C10 {_nan(f4.get('parallax_C10')):+.1f} Å, "
                     f"{len(f4.get('hot_pixels', []))} hot filtered; {len(p4.get('iter_times', []))} iterations, "
                     f"{_per_iter(p4.get('iter_times')):.1f} s/it")
        row("py4DSTEM read → hot pixels → probe size → DPC → parallax → ptychography", p4, found, s4)
    lines += ["", f"Truth: θ {t['rotation']}° (py4DSTEM's frame: {expected_py4dstem_rotation(t['rotation']):.1f}°, "
              f"no transpose), transpose True, dk {t['angular_sampling']:.4f} mrad, C10 {t['c10']:+.0f} Å, "
              f"{len(t['hot'])} hot + {len(t['dead'])} dead pixels, descan {t['descan_offset']} px + drift "
              f"{t['descan_drift']} px, dose {t['dose']:.0e} e⁻/pattern."]
    if p4.get("stages"):
        lines.append("py4DSTEM stages, s (VmHWM GiB after): " + ", ".join(
            f"{k} {v['s']:.0f} ({v['vm_hwm_gib']:.2f})" for k, v in p4["stages"].items()))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 × 32 scan of 256² patterns")
    ap.add_argument("--tools", nargs="+", default=["phasestem", "py4dstem"], choices=["phasestem", "py4dstem"])
    ap.add_argument("--iters", type=int, default=None, help="epochs/iterations (default: --auto's 10)")
    ap.add_argument("--workdir", default="runs/real_data")
    ap.add_argument("--envs", default=".bench_envs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=4 * 3600)
    ap.add_argument("--reuse", action="store_true", help="rescore the stored results without running the tools")
    args = ap.parse_args()
    work = Path(args.workdir) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth = make(work / "data", quick=args.quick)
    print(f"[data] {work / 'data' / 'scan.mib'} ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    mib = (work / "data" / "scan.mib").resolve()
    rec_file = work / "results.json"
    rec = json.loads(rec_file.read_text()) if rec_file.exists() else {}
    rec.update(truth={k: v for k, v in truth.items() if k not in ("phase", "positions")},
               mib_gib=mib.stat().st_size / 2**30, date=date.today().isoformat(),
               command="python benchmarks/real_data/bench_calibrate_auto.py" + (" --quick" if args.quick else ""))
    if not args.reuse:
        if "phasestem" in args.tools:
            rec["phasestem"] = run_phasestem(args, mib, work, truth["step"])
        if "py4dstem" in args.tools:
            rec["py4dstem"] = run_py4dstem(args, mib, work, truth["step"])
    rec["scores"] = {"phasestem": score_phasestem(work, truth), "py4dstem": score_py4dstem(work, truth)}
    rec_file.write_text(json.dumps(rec, indent=1, default=str))
    print()
    print(table(rec))
    print(f"\nresults: {rec_file}")


if __name__ == "__main__":
    main()
